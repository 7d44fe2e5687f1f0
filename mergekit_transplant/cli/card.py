"""``mergekit-transplant card OUT [--recipe R] [--report report.json] [--eval results.json] [--sweep sweep.json]
[--hub-id PATH=org/name]``."""

from __future__ import annotations

import click

from mergekit_transplant.card import parse_hub_ids, write_card


@click.command("card")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.option("--recipe", type=click.Path(dir_okay=False, exists=True),
              help="Recipe the model was merged with (default: OUT/mergekit_config.yml).")
@click.option("--report", type=click.Path(dir_okay=False, exists=True),
              help="report.json of `mergekit-transplant analyze`: adds how the modules were chosen.")
@click.option("--eval", "eval_results", type=click.Path(dir_okay=False, exists=True),
              help="results.json of `mergekit-transplant eval`: adds the scores, TIR and Recovery.")
@click.option("--sweep", "sweep", type=click.Path(dir_okay=False, exists=True),
              help="sweep.json of `mergekit-transplant sweep`: adds the best point against random modules of the "
                   "same size.")
@click.option("--heatmap", type=click.Path(dir_okay=False, exists=True),
              help="Heatmap PNG of the analysis (copied into OUT); default: the one report.json names.")
@click.option("--hub-id", "hub_ids", multiple=True, metavar="PATH=ORG/NAME",
              help="Hub id of a model the recipe names by local path (repeatable); it goes into base_model.")
@click.option("--name", help="Title of the card (default: the folder name).")
def card(out, recipe, report, eval_results, sweep, heatmap, hub_ids, name):
    """Write or update OUT/README.md, the Hub model card of a transplant merge.

    The card has front matter for the Hub (base_model = Hub ids of the target
    and donors, base_model_relation: merge, tags, library_name), the table of
    transplanted tensors, how they were chosen, eval results with TIR and
    Recovery, the sweep against random modules, the recipe verbatim and the commands to reproduce it. Sections
    not given now are kept from the previous run (OUT/transplant_card.json);
    text you added around the generated block is kept. The license is the
    target's when its card or config states one (never invented); --eval
    results also go into the Hub's model-index. Hub models are read from
    their headers only (no weights downloaded).
    """
    from mergekit_transplant.recipe import load_recipe

    result = write_card(
        out,
        recipe=load_recipe(recipe) if recipe else None,
        report=report, eval_results=eval_results, sweep=sweep, heatmap=heatmap,
        hub_ids=parse_hub_ids(hub_ids), name=name,
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {result.path}")
