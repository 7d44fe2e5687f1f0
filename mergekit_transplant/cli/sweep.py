"""``mergekit-transplant sweep``: K × strength in memory against random and whole-model controls."""

from __future__ import annotations

import click

from mergekit_transplant.cli.verbosity import info, quiet
from mergekit_transplant.cli.evaluate import batch_size_type, limit_type, prompt_options
from mergekit_transplant.options import options_from, settings_from
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.sweep.settings import SweepSettings


@click.command("sweep")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="An analysis report (analyze --report-out): its ranking is swept (no analysis is re-run).")
@click.option("--target", default=None, help="Target model (with --workload, or to override the report's).")
@click.option("--donor", default=None, help="Donor model (with --workload, or to override the report's).")
@click.option("--workload", default=None, help="Run the analysis on this workload first (instead of --report).")
@click.option("--score", default=None,
              help="Which ranking to sweep (default: the report's own score; with --workload, analyze's default, "
                   "local).")
@click.option("--tasks", default=None,
              help="Comma-separated lm-eval task(s) to choose and report on, where no split option replaces them.")
@click.option("--select-split", default=None, help="lm-eval task(s) the best point is chosen on (default: --tasks).")
@click.option("--report-split", default=None,
              help="Held-out lm-eval task(s) the sweep is reported on (default: --tasks).")
@options_from(SweepSettings, types={"batch_size": batch_size_type, "limit": limit_type,
                                    "include_path": click.Path(file_okay=False)})
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write sweep.json here, the command's main artefact (and the points as CSV beside it).")
@click.option("--recipe-out", "output_recipe", type=click.Path(dir_okay=False), default=None,
              help="Also write the best analysis point as a recipe (best-recipe.yml).")
@click.option("--output-recipe", "old_output_recipe", type=click.Path(dir_okay=False), default=None, hidden=True,
              help="Old spelling of --recipe-out (kept for one release).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the score-vs-K plot (PNG/SVG/PDF).")
@prompt_options
def sweep(report_path, target, donor, workload, score, tasks, select_split, report_split, output, output_recipe,
          old_output_recipe, plot, prompt, **values):
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
    from mergekit_transplant.sweep import run_sweep
    from mergekit_transplant.sweep.outputs import markdown_table, write_json, write_recipe
    from mergekit_transplant.sweep.ranking import ranking_from_analysis, ranking_from_report

    output_recipe = output_recipe or old_output_recipe
    if output and output.lower().endswith((".yml", ".yaml")):  # -o named the recipe before 0.x: refuse, not overwrite
        raise TransplantError(f"-o/--output {output}: sweep writes sweep.json there; the best recipe is "
                              "--recipe-out FILE.yml")
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
        ranking = ranking_from_analysis(target, donor, workload, score=score, device=values["device"],
                                        dtype=values["dtype"], trust_remote_code=values["trust_remote_code"],
                                        allow_pickle=values["allow_pickle"])
    else:
        raise TransplantError("pass --report report.json, or --target, --donor and --workload")

    settings = settings_from(SweepSettings, values, select_tasks=select_tasks, report_tasks=report_tasks,
                             prompt=prompt)
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
