"""``mergekit-transplant export RECIPE --stock -o stock.yml``: the same merge for plain mergekit."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from mergekit_transplant.options import options_from, settings_from


@dataclass
class ExportSettings:
    """What ``export`` writes, and where."""

    recipe: str = field(metadata={"argument": True, "type": click.Path(dir_okay=False),
                                  "help": "The transplant recipe to export."})
    output: str = field(metadata={"flags": ("-o", "--output"), "type": click.Path(dir_okay=False),
                                  "metavar": "FILE", "show_default": False, "help": "Where to write the exported recipe."})
    stock: bool = field(default=False, metadata={
        "help": "Export for plain mergekit: the built-in `linear` method with per-tensor weights [1-s, s] and "
                "normalize: false. Required (the only export format so far)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace FILE if it exists."})


@click.command("export")
@options_from(ExportSettings)
def export(**values):
    """Rewrite RECIPE so that mergekit without this plugin runs the same merge.

    \b
    Bit-identical output at strengths 0 and 1, within ~1 float32 ulp between.
    Refused, naming the tensor: strengths outside [0, 1] or summing above 1
    (allow_extrapolation), and slices/modules recipes. The file's header says
    what plain mergekit loses: read planning (it downloads every donor
    tensor), the pre-flight check and NaN guard, and the plugin's model card.
    """
    from pathlib import Path

    from mergekit_transplant import atomic
    from mergekit_transplant.errors import TransplantError
    from mergekit_transplant.export import export_stock

    settings = settings_from(ExportSettings, values)
    if not settings.stock:
        raise TransplantError("choose an export format: --stock (plain mergekit's linear method)")
    out = Path(settings.output)
    if out.exists() and not settings.overwrite:
        raise TransplantError(f"{out} exists (pass --overwrite to replace it)")
    if out.exists() and out.is_dir():
        raise TransplantError(f"{out} is a folder, not a file")
    result = export_stock(settings.recipe)
    atomic.write_text(out, result.text)
    click.echo(f"wrote {out}: merge_method linear over {len(result.models)} models, "
               f"{result.weighted_tensors} tensor(s) with donor weight"
               + (f", {result.guard_filters} guard filter(s)" if result.guard_filters else ""))
    click.echo(f"run it without the plugin: MERGEKIT_TRANSPLANT_DISABLE=1 mergekit-yaml {out} OUT")
