"""``mergekit-transplant organ extract|verify|apply``: portable donor tensors."""

from __future__ import annotations

import re
import click
from mergekit.options import MergeOptions

from mergekit_transplant.cli import debug_option
from mergekit_transplant.cli.mergekit_options import ShardSize, mergekit_options
from mergekit_transplant.options import options_from
from mergekit_transplant.organ.training.config import OrganTrainSettings
from mergekit_transplant.cli.verbosity import merged_with
from mergekit_transplant.cli.verbosity import quiet as output_quiet

from mergekit_transplant.flows import apply_organ
from mergekit_transplant.organ import extract_organ, verify_organ


@click.group("organ")
def organ():
    """Organ files: only the donor tensors a recipe transplants.

    \b
      organ extract RECIPE -o ORGAN_DIR     cut the organ out of the donor
      organ verify ORGAN_DIR [--target T]   check hashes, shapes, fit to a target
      organ apply ORGAN_DIR OUT [--target T] [--at S]  verify, then merge into T
      organ train --model M --corpus FILE -o ORGAN_DIR  train a layer block (NOT)
    """


@organ.command("extract")
@debug_option
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "organ_dir", required=True, type=click.Path(file_okay=False),
              help="Organ folder to write (appears whole or not at all).")
@click.option("--overwrite", is_flag=True, help="Replace ORGAN_DIR if it exists and is not empty.")
@click.option("--out-shard-size", type=ShardSize(), default="5B", show_default=True,
              help="Largest shard, written and counted as mergekit-yaml's --out-shard-size: 5B, 500M, 100K "
                   "(10^9, 10^6, 10^3) of tensor data (mergekit's help says parameters; its writer counts bytes).")
@click.option("--max-shard-size", hidden=True, default=None,
              help="Old spelling (bytes, or 500M, 5G, 4GiB); use --out-shard-size.")
def extract(recipe, organ_dir, overwrite, out_shard_size, max_shard_size):
    """Write the donor tensors RECIPE transplants (nonzero strength) to ORGAN_DIR.

    ORGAN_DIR gets the tensors as safetensors (copied byte for byte), the
    donor's config.json, organ.json (donor and revision, the target and its
    fingerprint, every tensor's shape, dtype and sha256, the recipe) and
    recipe.yml: the same recipe reading from the organ. Run
    `mergekit-yaml ORGAN_DIR/recipe.yml OUT` from the folder you ran this in
    (its paths are written as you gave them), or `organ apply` from anywhere.
    """
    if max_shard_size is not None:
        click.echo("warning: --max-shard-size is deprecated; use --out-shard-size (same unit, mergekit's spelling: "
                   "5B, not 5G)", err=True)
        out_shard_size = _size(max_shard_size)
    result = extract_organ(recipe, organ_dir, overwrite=overwrite, max_shard_bytes=out_shard_size,
                           progress=not output_quiet())
    m = result.manifest
    share = 100 * m.parameters / max(m.target_parameters, 1)
    for d in m.donors:
        click.echo(f"{d.ref}{'@' + d.revision if d.revision and '@' not in d.ref else ''}: "
                   f"{len(d.tensors)} tensor(s), {d.parameters:,} of {d.donor_parameters:,} parameters")
    click.echo(f"wrote {result.organ_dir}: {m.parameters:,} parameters ({share:.3f}% of the target), "
               f"{m.nbytes:,} bytes of tensors")


def _size(text) -> int:
    """The old ``--max-shard-size`` syntax: ``5G``, ``500M``, ``2GiB``, ``1000000`` (K/M/G powers of 1000)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?)(I?B?)\s*", str(text).upper())
    if not m or (m.group(3) == "IB" and not m.group(2)):
        raise click.BadParameter(f"{text!r} is not a size", param_hint="--max-shard-size")
    base = 1024 if m.group(3) == "IB" else 1000
    value = int(float(m.group(1)) * base ** " KMG".index(m.group(2) or " "))
    if value <= 0:
        raise click.BadParameter("must be positive", param_hint="--max-shard-size")
    return value


def _print_verify(report) -> None:
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    for e in report.errors:
        click.echo(f"error: {e}", err=True)


@organ.command("verify")
@debug_option
@click.argument("organ_dir", type=click.Path(file_okay=False))
@click.option("--target", help="Target to check the organ fits (default: the manifest's, if it is a local folder).")
def verify(organ_dir, target):
    """Check ORGAN_DIR against its manifest and, given one, a target.

    Refuses (exit 2) a tampered organ (a tensor's sha256, shape or dtype, or
    config.json differ from organ.json; tensors added or missing) and one that
    does not fit the target (architecture, missing tensors, shapes). Warns when
    the target differs from the model the organ was analysed against.
    """
    report = verify_organ(organ_dir, target=target)
    _print_verify(report)
    if not report.ok:
        raise click.exceptions.Exit(2)
    fit = f"; fits {report.target}" if report.target else "; no target checked (pass --target)"
    click.echo(f"ok: {report.checked_tensors} tensor(s) match organ.json{fit}")


@organ.command("apply")
@debug_option
@click.argument("organ_dir", type=click.Path(file_okay=False))
@click.argument("out_path", type=click.Path(file_okay=False))
@click.option("--target", help="Target model (local folder or Hub id); default: the one in organ.json.")
@click.option("--at", type=click.IntRange(min=0), default=None,
              help="Insert the organ's layer block starting at this decoder layer instead of where it was "
                   "trained (tensor names are rewritten in a temporary view; the organ is not changed).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_PATH if it exists and is not empty.")
@mergekit_options
def apply(merge_options: MergeOptions, organ_dir, out_path, target, at, overwrite):
    """Verify ORGAN_DIR, then merge it into TARGET, writing OUT_PATH.

    Uses ORGAN_DIR/recipe.yml (edited strengths are honoured) with the organ's
    own folder as the donor and TARGET as the base model, so it works from any
    folder. Takes mergekit-yaml's options. The output has a model card (unless --no-write-model-card).
    """
    from mergekit_transplant.cli.check import print_report

    verify_report, report = apply_organ(organ_dir, out_path, target=target, at=at, options=merged_with(merge_options),
                                        overwrite=overwrite)
    _print_verify(verify_report)
    print_report(report)
    click.echo(f"wrote {out_path}")


def _quiet_log(message: str) -> None:
    """``organ train -q``: the trainer's notes (the block, perplexities) are informational lines and go; its
    warnings and how to resume an interrupted run stay."""
    if message.startswith(("warning:", "interrupted")):
        click.echo(message, err=True)


@organ.command("train")
@debug_option
@options_from(OrganTrainSettings)
def train(**options):
    """Train one block of decoder layers on a domain corpus; write it as an organ.

    Only the block learns (the NOT paper's trained organ, arXiv 2601.13580):
    every other parameter gets no gradient and no optimizer state. The block
    is printed before training. OUTPUT gets the block's tensors, config.json,
    organ.json (kind: trained: base model fingerprint, layers, corpus sha256 and
    tokens, every hyperparameter, the loss curve, eval perplexity before and
    after, wall time) and recipe.yml for mergekit-yaml. Runs under
    `accelerate launch` for data-parallel training on several GPUs.
    """
    from mergekit_transplant.organ.training import train_organ

    quiet = {"log": _quiet_log} if output_quiet() else {}
    result = train_organ(OrganTrainSettings(**options), progress=not output_quiet(), **quiet)
    if result.manifest is None:  # not the main process of a data-parallel run
        return
    r = result.record
    ppl = ""
    if r.perplexity_after is not None:
        ppl = f"; eval perplexity {r.perplexity_before:.4g} -> {r.perplexity_after:.4g}"
    click.echo(f"wrote {result.organ_dir}: {result.block.describe()}, {r.trainable_parameters:,} parameters "
               f"trained for {r.steps} step(s) on {r.tokens_trained:,} tokens in {r.wall_time_s:.1f}s{ppl}")
