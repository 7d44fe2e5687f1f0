"""``mergekit-transplant analyze``: score modules on a workload, write the recipe."""

from __future__ import annotations

import shlex

import click

from mergekit_transplant.analysis.greedy import SelectConfig
from mergekit_transplant.cli.options import config_from, options_from
from mergekit_transplant.cli.verbosity import info, quiet

SCORE_CHOICES = ("attribution", "local", "activation", "gain")


@click.command("analyze")
@click.option("--target", required=True, help="Target model: local folder or Hub id (id@revision).")
@click.option("--donor", required=True, help="Donor model: local folder or Hub id (id@revision).")
@click.option("--workload", type=click.Path(dir_okay=False),
              help=".jsonl (a \"text\" field per line, optional \"continuation\") or .txt (one prompt per line).")
@click.option("--lm-eval-task", help="Build the workload from this lm-eval task's evaluation documents instead.")
@click.option("--include-path", multiple=True, type=click.Path(file_okay=False),
              help="Folder of extra lm-eval task YAMLs (repeatable).")
@click.option("--limit", type=int, help="Use a seeded random subset of this many samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --limit's subset, greedy's held-out part and the random controls.")
@click.option("--score", type=click.Choice(SCORE_CHOICES), default="attribution", show_default=True,
              help="Score that ranks modules (and, with --select greedy, pre-filters them).")
@click.option("--also", multiple=True, type=click.Choice(SCORE_CHOICES),
              help="Compute this score too, for the report (repeatable).")
@click.option("--capture", type=click.Choice(("teacher-forced", "generate")), default="teacher-forced",
              show_default=True,
              help="teacher-forced: both models read the same tokens; generate: each decodes greedily and "
                   "statistics are taken at its generated positions.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Tokens to generate (--capture generate).")
@click.option("--top-k", type=int, help="Select the K best units.")
@click.option("--param-budget", type=float,
              help="Select the best units that fit in this fraction of the target's parameters.")
@options_from(SelectConfig)
@click.option("--strength", type=float, default=1.0, show_default=True, help="Strength of selected units, in (0, 1].")
@click.option("--strength-mode", type=click.Choice(("constant", "proportional")), default="constant",
              show_default=True, help="proportional: strength scales with the score, the best unit gets --strength.")
@click.option("--modules", multiple=True, metavar="GLOB",
              help="Only modules whose name matches this fnmatch pattern, e.g. '*mlp*' (repeatable).")
@click.option("--include-embeddings", is_flag=True, help="Make the input embeddings and output head candidates too.")
@click.option("--granularity", type=click.Choice(("module", "layer")), default="module", show_default=True,
              help="layer: score and select whole decoder layers (recipe filters like model.layers.5.).")
@click.option("--device", default="cpu", show_default=True, help="Device to run on, e.g. cuda or cuda:1.")
@click.option("--dtype", help="Load models in this dtype (float32, bfloat16, float16); default: as stored.")
@click.option("--device-map", help="accelerate device map, e.g. auto, for models larger than one device.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--max-length", type=int, default=512, show_default=True,
              help="Longest sequence in tokens (capped by the model's context); longer ones are truncated.")
@click.option("--padding-side", type=click.Choice(("right", "left")), default="right", show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the Hub.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pickle (.bin/.pt) checkpoints (read weights-only, memory-mapped).")
@click.option("--recompute/--no-recompute", default=True, show_default=True,
              help="attribution: recompute each decoder layer in the backward pass (memory bounded by one "
                   "layer) instead of keeping every layer's activations (one forward pass faster, more memory).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the memory plan (estimated peak memory, itemised) and stop; nothing is loaded.")
@click.option("--force", is_flag=True, help="Run even when the memory plan exceeds the device's free memory.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Recipe file to write (required unless --plan).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report (JSON) here.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a layers x module heatmap (PNG) here.")
@click.option("--rows", type=int, default=15, show_default=True, help="Rows of the console table.")
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
    Scores: attribution (default; |the donor's change to the module's output
    x the gradient of the continuation's log-prob| on the donor, 1 forward +
    backward with the target's tensors streamed), local (the module's own
    weight change applied to the target's inputs, 1 forward pass, no
    gradients), activation (|mean |output| difference|, 2 passes), gain
    (signed first-order change of the target's log-likelihood of the
    continuations if the module were transplanted: 1 forward + backward on
    the target, donor tensors streamed; modules predicted <= 0 are never
    selected).
    \b
    Selection: greedy (default) measures: each round transplants every
    remaining candidate (the best 64 by --score at most) into the live
    target, keeps the one that raises the workload's log-likelihood most,
    and stops at K or when nothing helps (--min-gain); a --holdout-fraction
    of the workload shows how well that generalises. --select top takes the
    K best by --score instead. Both defaults were chosen on held-out pairs
    (benchmarks/selection.py). See docs/analysis.md.
    \b
    Every run first prints its memory plan (from the config, the
    safetensors headers and the tokenised workload; nothing loaded) and
    stops with exit 2 if it exceeds the device's free memory, naming the
    largest --batch-size that fits (--force runs anyway); --plan prints the
    plan only.
    """
    from mergekit_transplant.analysis import analyze as run_analysis
    from mergekit_transplant.analysis import load_workload, write_outputs
    from mergekit_transplant.analysis.report import format_greedy, format_table
    from mergekit_transplant.errors import TransplantError

    if not opts["output"] and not opts["plan_only"]:
        raise click.UsageError("Missing option '-o' / '--output' (required unless --plan).")
    if bool(opts["workload"]) == bool(opts["lm_eval_task"]):
        raise TransplantError("give exactly one of --workload FILE or --lm-eval-task NAME")
    if opts["include_path"] and not opts["lm_eval_task"]:
        raise TransplantError("--include-path only applies with --lm-eval-task")
    if opts["plot"]:
        from mergekit_transplant.analysis.heatmap import check_plot_path

        check_plot_path(opts["plot"])  # before the analysis, not after the recipe is written
    choosing = config_from(SelectConfig, opts)
    choosing.validate()  # before anything is read
    workload = load_workload(
        opts["workload"], lm_eval_task=opts["lm_eval_task"], include_path=list(opts["include_path"]) or None,
        limit=opts["limit"], seed=opts["seed"],
    )
    result = run_analysis(
        opts["target"], opts["donor"], workload,
        score=opts["score"], also=list(opts["also"]), top_k=opts["top_k"], param_budget=opts["param_budget"],
        strength=opts["strength"], strength_mode=opts["strength_mode"], modules=list(opts["modules"]) or None,
        include_embeddings=opts["include_embeddings"], granularity=opts["granularity"], capture=opts["capture"],
        max_new_tokens=opts["max_new_tokens"], device=opts["device"], dtype=opts["dtype"],
        device_map=opts["device_map"], batch_size=opts["batch_size"], max_length=opts["max_length"],
        padding_side=opts["padding_side"], limit=opts["limit"], seed=opts["seed"],
        trust_remote_code=opts["trust_remote_code"], allow_pickle=opts["allow_pickle"],
        command=_command_line(click.get_current_context()), progress=not quiet(),
        **vars(choosing), recompute=opts["recompute"], force=opts["force"], plan_only=opts["plan_only"],
        on_plan=lambda plan: click.echo(plan.format(), err=True) if opts["plan_only"] else info(plan.format()),
    )
    if opts["plan_only"]:
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(format_table(result.report, rows=opts["rows"]))
    if "greedy" in result.report:
        click.echo(format_greedy(result.report))
    write_outputs(result, recipe=opts["output"], report=opts["report"], plot=opts["plot"])
    for label, path in (("recipe", opts["output"]), ("report", opts["report"]), ("heatmap", opts["plot"])):
        if path:
            info(f"wrote {label}: {path}")


def _command_line(ctx: click.Context) -> str:
    """The options that differ from their defaults, as a reproducible command line."""
    parts = ["mergekit-transplant", "analyze"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("debug",):
            continue
        value = ctx.params.get(param.name)
        if value in (None, False, ()) or value == param.default or param.name == "plan_only":
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            parts.append(flag)
        elif param.multiple:
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)
