"""``mergekit-transplant unplug``: a task expert with the unused MLP neurons removed; ``unplug sweep``."""

from __future__ import annotations

import click

from mergekit_transplant.cli.verbosity import info, quiet
from mergekit_transplant.options import options_from, settings_from, to_cli
from mergekit_transplant.unplug.config import UnplugSettings, UnplugSweepSettings


@click.group("unplug", invoke_without_command=True)
@options_from(UnplugSettings)
@click.pass_context
def unplug(ctx: click.Context, **params) -> None:
    """Unplug the MLP neurons a task does not use: a smaller, faster, stock transformers model.

    \b
      mergekit-transplant unplug --model M --workload task.jsonl --keep 0.35 -o expert/
      mergekit-transplant unplug sweep --model M --workload task.jsonl --keep 0.2,0.35,0.5 \\
          --select-split T_select --report-split T_test --retain-tasks R1,R2
    \b
    Every MLP neuron (channel j of down_proj's input, act(gate)·up) is scored
    on the workload and ranked within its layer; each layer keeps its best
    round(keep × intermediate_size). The output folder is a Hub-ready model
    with a smaller intermediate_size (every other tensor byte-identical),
    unplug.json (the kept indices, for `unplugged()`) and a model card.
    Scores: attribution (default; DoE's Σ|a·∂log p(continuation)/∂a|, one
    forward + backward per batch), activation Σ|a|, wanda Σ|a|·‖W_down[:,j]‖,
    random. See docs/unplug.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    from mergekit_transplant.unplug.pipeline import unplug as run_unplug

    settings = settings_from(UnplugSettings, params)
    result = run_unplug(settings, command=to_cli(settings, ["mergekit-transplant", "unplug"]), progress=not quiet())
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    r = result.report
    info(f"kept {r.kept_size} of {r.intermediate_size} MLP neurons in each of {r.num_layers} layers "
         f"(score {r.score}); {r.parameters['expert']:,} of {r.parameters['base']:,} parameters")
    info(f"wrote {result.output}" + (f" and {settings.report}" if settings.report else ""))


@unplug.command("sweep")
@options_from(UnplugSweepSettings)
def sweep(**params) -> None:
    """Every score at every keep ratio, in memory, scored by lm-eval against random controls.

    \b
    The model is loaded once; each point swaps the sliced MLP weights in
    (`unplugged()`), runs lm-eval on the selection, report and retain tasks,
    and restores the model bit for bit. Random keeps run with --random-seeds
    seeds. The best keep ratio of --score is chosen on --select-split and
    reported on --report-split, by the same rule as `sweep` (best on the
    selection split; ties go to the smaller model).
    """
    from mergekit_transplant.unplug.sweep import markdown_table, run_unplug_sweep, write_sweep_json

    settings = settings_from(UnplugSweepSettings, params)
    if settings.plot:
        from mergekit_transplant.analysis.heatmap import check_plot_path

        check_plot_path(settings.plot)
    result = run_unplug_sweep(settings, progress=not quiet())
    click.echo(markdown_table(result), nl=False)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if settings.output:
        write_sweep_json(result, settings.output)
        info(f"wrote {settings.output}")
    if settings.plot:
        from mergekit_transplant.unplug.plot import plot_unplug_sweep

        plot_unplug_sweep(result, settings.plot)
        info(f"wrote {settings.plot}")
