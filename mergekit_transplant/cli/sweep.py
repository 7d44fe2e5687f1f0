"""``mergekit-transplant sweep``: K × strength in memory against random and whole-model controls."""

from __future__ import annotations

import click

from mergekit_transplant.cli.evaluate import batch_size_type, limit_type, prompt_options
from mergekit_transplant.errors import TransplantError


def _ints(ctx, param, value):
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _floats(ctx, param, value):
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@click.command("sweep")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="An analyze --report file: its ranking is swept (no analysis is re-run).")
@click.option("--target", default=None, help="Target model (with --workload, or to override the report's).")
@click.option("--donor", default=None, help="Donor model (with --workload, or to override the report's).")
@click.option("--workload", default=None, help="Run the analysis on this workload first (instead of --report).")
@click.option("--score", default=None,
              help="Which ranking to sweep (default: the report's own score; with --workload, analyze's default, "
                   "attribution).")
@click.option("--k", "ks", default="4,8,16,32", show_default=True, callback=_ints,
              help="Comma-separated numbers of modules to transplant.")
@click.option("--strength", "strengths", default="1.0", show_default=True, callback=_floats,
              help="Comma-separated strengths in (0, 1].")
@click.option("--tasks", default=None,
              help="Comma-separated lm-eval task(s) to choose and report on, where no split option replaces them.")
@click.option("--select-split", default=None, help="lm-eval task(s) the best point is chosen on (default: --tasks).")
@click.option("--report-split", default=None,
              help="Held-out lm-eval task(s) the sweep is reported on (default: --tasks).")
@click.option("--include-path", type=click.Path(file_okay=False), default=None, help="Folder of local lm-eval task YAMLs.")
@click.option("--metric", default=None, help="Metric to sweep (default: each task's first metric).")
@click.option("--random-controls", type=int, default=3, show_default=True,
              help="Random module sets of the same size per (K, strength), seeds SEED..SEED+N-1.")
@click.option("--no-whole-model", is_flag=True, help="Skip the whole-model interpolation control.")
@click.option("--seed", type=int, default=0, show_default=True, help="First random-control seed; lm-eval's seed.")
@click.option("--limit", type=limit_type, default=None, help="Documents per task (below 1: a fraction).")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples (default: each task's own).")
@click.option("--batch-size", type=batch_size_type, default="8", show_default=True, help="lm-eval batch size, or 'auto'.")
@click.option("--device", default="cpu", show_default=True, help="Device the target is loaded on (e.g. cuda).")
@click.option("--device-map", default=None, help="accelerate device map (e.g. auto) for a target larger than one device.")
@click.option("--dtype", default=None, help="Load the target in this dtype (default: the checkpoint's).")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the Hub.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept models whose only weights are pickle files (pytorch_model.bin), read with torch's "
              "weights-only unpickler. Only for sources you trust.")
@click.option("-o", "--output-recipe", type=click.Path(dir_okay=False), default=None,
              help="Write the best analysis point as a recipe (best-recipe.yml).")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write sweep.json here (and the points as CSV beside it).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the score-vs-K plot (PNG/SVG/PDF).")
@click.option("--model-args", default=None, metavar="K=V,...",
              help="Extra arguments of lm-eval's HFLM around the loaded target, e.g. 'max_length=2048' "
                   "(not pretrained/dtype/device: see --dtype, --device).")
@prompt_options
def sweep(report_path, target, donor, workload, score, ks, strengths, tasks, select_split, report_split,
          include_path, metric, random_controls, no_whole_model, seed, limit, num_fewshot, batch_size,
          device, device_map, dtype, trust_remote_code, allow_pickle, output_recipe, output, plot, model_args,
          prompt):
    """Sweep K and strength in memory, against random-module and whole-model controls.

    \b
    The ranking comes from --report report.json, or from running the analysis
    (--target T --donor D --workload FILE). The target is loaded once; each
    point is transplanted into it in place, scored by lm-eval, and undone bit
    for bit; no model is written per point. At every (K, strength) the
    analysis top-K is compared with --random-controls random K-module sets
    from the same candidate pool and with whole-model interpolation at the
    same strength.

    \b
    Honest selection: the best analysis point is chosen on --select-split and
    reported on --report-split (each defaults to --tasks). When both are the
    same tasks the figure is optimistic (a warning says so). Ties go to the
    smaller transplant (fewer parameters, then lower strength).
    """
    from mergekit_transplant.sweep import SweepSettings, run_sweep
    from mergekit_transplant.sweep.outputs import markdown_table, write_json, write_recipe
    from mergekit_transplant.sweep.ranking import ranking_from_analysis, ranking_from_report

    select_tasks, report_tasks = select_split or tasks, report_split or tasks
    if not (select_tasks and report_tasks):
        missing = "--report-split" if select_tasks else "--select-split"
        raise TransplantError(f"no tasks to {'report' if select_tasks else 'select'} on: pass --tasks or {missing}")
    if tasks and select_split and report_split:
        click.echo(f"warning: --tasks {tasks} is not used: --select-split and --report-split replace it", err=True)
    if report_path and workload:
        raise TransplantError("use either --report or --workload, not both")
    if report_path:
        ranking = ranking_from_report(report_path, score=score, target=target, donor=donor)
    elif workload and target and donor:
        ranking = ranking_from_analysis(target, donor, workload, score=score, device=device, dtype=dtype,
                                        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    else:
        raise TransplantError("pass --report report.json, or --target, --donor and --workload")

    settings = SweepSettings(
        ks=ks, strengths=strengths, select_tasks=select_tasks, report_tasks=report_tasks,
        include_path=include_path, random_controls=random_controls, seed=seed, whole_model=not no_whole_model,
        limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, device=device, device_map=device_map,
        dtype=dtype, metric=metric, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
        model_args=model_args, prompt=prompt,
    )
    from mergekit_transplant.cli.verbosity import info, quiet

    result = run_sweep(ranking, settings, progress=not quiet())
    click.echo(markdown_table(result), nl=False)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if output_recipe:
        write_recipe(result, output_recipe)
        info(f"wrote {output_recipe}")
    if output:
        csv_path = write_json(result, output)
        info(f"wrote {output} and {csv_path}")
    if plot:
        from mergekit_transplant.sweep.plot import plot_sweep

        plot_sweep(result, plot)
        info(f"wrote {plot}")
