"""``mergekit-transplant check RECIPE``."""

from __future__ import annotations

import click

from mergekit_transplant.preflight import CheckReport, run_check
from mergekit_transplant.recipe import load_recipe


def print_report(report: CheckReport) -> None:
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.ok:
        click.echo(report.format_table())
    for error in report.errors:
        click.echo(f"error: {error}", err=True)


@click.command("check")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin/.pt) checkpoints.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the Hub.")
def check(recipe: str, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Pre-flight check of RECIPE, reading only configs and safetensors headers.

    Prints what will be transplanted (tensor, donor, strength, parameters,
    share of the model) and one line per problem. Exit code 0 when clean,
    2 on any error.
    """
    report = run_check(load_recipe(recipe), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    print_report(report)
    if not report.ok:
        raise click.exceptions.Exit(2)
