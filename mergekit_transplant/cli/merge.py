"""``mergekit-transplant merge RECIPE OUT [mergekit-yaml's options]``."""

from __future__ import annotations

import click
from mergekit.options import MergeOptions

from mergekit_transplant.cli.check import print_report
from mergekit_transplant.cli.mergekit_options import mergekit_options
from mergekit_transplant.cli.verbosity import merged_with
from mergekit_transplant.flows import run_transplant


@click.command("merge")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT_PATH if it exists and is not empty.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin/.pt) checkpoints.")
@click.option("--allow-nonfinite", is_flag=True, help="Transplant donor tensors containing NaN/Inf.")
@mergekit_options
def merge(merge_options: MergeOptions, recipe: str, out_path: str, overwrite: bool,
          allow_pickle: bool, allow_nonfinite: bool) -> None:
    """Run the pre-flight check on RECIPE, then merge into OUT_PATH with mergekit.

    Takes every option of mergekit-yaml (--cuda, --lazy-unpickle, ...). Nothing
    is written when the check fails; the output appears atomically when the
    merge succeeds, with the plugin's model card unless --no-write-model-card.
    """
    report = run_transplant(
        recipe, out_path, merged_with(merge_options), overwrite=overwrite, allow_pickle=allow_pickle,
        allow_nonfinite=allow_nonfinite,
    )
    print_report(report)
    click.echo(f"wrote {out_path}")
