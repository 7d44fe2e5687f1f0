"""``mergekit-transplant analyze``: score modules on a workload, write the recipe."""

from __future__ import annotations

import click

from mergekit_transplant.analysis.settings import AnalyzeSettings
from mergekit_transplant.cli.verbosity import info, quiet
from mergekit_transplant.options import options_from, settings_from


@click.command("analyze")
@options_from(AnalyzeSettings)
def analyze(**opts) -> None:
    """Find the modules that carry the donor's advantage on a workload; write a recipe.

    \b
    Runs the target (and the donor, when the score needs it) over the
    workload, one model in memory at a time, scores every linear module both
    share, ranks them, selects up to --top-k units and/or --param-budget
    (default: 4) and writes a mergekit recipe for `merge_method: transplant`:
      mergekit-transplant analyze --target T --donor D --workload w.jsonl --top-k 4 -o recipe.yml
      mergekit-yaml recipe.yml out/
    \b
    Scores: local (default; the module's own weight change applied to the
    target's inputs, 1 forward pass, no gradients), attribution (|the
    donor's change to the module's output x the gradient of the
    continuation's log-prob| on the donor, 1 forward + backward with the
    target's tensors streamed), activation (|mean |output| difference|, 2
    passes), gain (signed first-order change of the target's log-likelihood
    of the continuations if the module were transplanted: 1 forward +
    backward on the target, donor tensors streamed; modules predicted <= 0
    are never selected).
    \b
    Selection: top (default) takes the K best by --score. --select greedy
    measures instead: each round transplants every remaining candidate (the
    best 64 by --score at most) into the live target, keeps the one that
    raises the workload's log-likelihood most, and stops at K or when
    nothing helps (--min-gain); a --holdout-fraction of the workload shows
    how well that generalises. Both defaults were chosen on held-out pairs
    (benchmarks/selection.py). See docs/analysis.md.
    \b
    Every run first prints its memory plan (from the config, the
    safetensors headers and the tokenised workload; nothing loaded) and
    stops with exit 2 if it exceeds the device's free memory, naming the
    largest --batch-size that fits (--force runs anyway); --plan prints the
    plan only.
    """
    from mergekit_transplant.analysis import analyze as run_analysis
    from mergekit_transplant.analysis import write_outputs
    from mergekit_transplant.analysis.report import format_greedy, format_table
    from mergekit_transplant.errors import TransplantError

    settings = settings_from(AnalyzeSettings, opts)
    if not settings.output and not settings.plan_only:
        raise click.UsageError("Missing option '-o' / '--output' (required unless --plan).")
    if bool(settings.workload) == bool(settings.lm_eval_task):
        raise TransplantError("give exactly one of --workload FILE or --lm-eval-task NAME")
    if settings.include_path and not settings.lm_eval_task:
        raise TransplantError("--include-path only applies with --lm-eval-task")
    if settings.plot:
        from mergekit_transplant.analysis.heatmap import check_plot_path

        check_plot_path(settings.plot)  # before the analysis, not after the recipe is written
    settings.choosing.validate()  # before anything is read
    result = run_analysis(settings, progress=not quiet(), plan_only=settings.plan_only,
                          on_plan=lambda plan: click.echo(plan.format(), err=True) if settings.plan_only
                          else info(plan.format()))
    if settings.plan_only:
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(format_table(result.report, rows=settings.rows))
    if result.report.greedy is not None:
        click.echo(format_greedy(result.report))
    write_outputs(result, recipe=settings.output, report=settings.report_out, plot=settings.plot)
    for label, path in (("recipe", settings.output), ("report", settings.report_out), ("heatmap", settings.plot)):
        if path:
            info(f"wrote {label}: {path}")
