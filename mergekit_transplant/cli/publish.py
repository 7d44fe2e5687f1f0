"""``mergekit-transplant publish OUT --repo-id ORG/NAME [--private] [--dry-run]``."""

from __future__ import annotations

import click

from mergekit_transplant.publish import publish as run_publish


@click.command("publish")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="Hub repository to create or update.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--dry-run", is_flag=True, help="Run every check and print what would be uploaded; upload nothing.")
@click.option("--skip-load", is_flag=True,
              help="Skip loading the model with transformers (for models larger than this machine's memory); "
                   "the header, size and card checks still run.")
@click.option("--token", envvar="HF_TOKEN", help="Hub token (default: $HF_TOKEN or your `hf auth login`).")
@click.option("--revision", metavar="BRANCH", help="Branch to commit to (created from main if new; default: main).")
@click.option("--create-pr", is_flag=True, help="Open a pull request with the upload instead of committing to the branch.")
@click.option("--parent-commit", metavar="SHA",
              help="Refuse unless the branch is still at SHA (default: its head when the checks start).")
def publish(out, repo_id, private, dry_run, skip_load, token, revision, create_pr, parent_commit):
    """Verify OUT and upload it to the Hub as ORG/NAME.

    \b
    Checks, all before any network access:
      - no pickle files (.bin/.pt/.pth/.pkl/.ckpt/...): safetensors only;
      - the model card (README.md) parses and its metadata is valid;
      - stored parameters = those of the model config.json describes, and
        stored bytes within 2% of parameters x the config's dtype size;
      - a tokenizer is present;
      - transformers loads it with no missing, unexpected or mis-shaped weights.
    Then creates the repo (if needed) and uploads every non-hidden file in one
    commit, which also deletes weight files (*.safetensors and their index)
    of a previous upload that OUT no longer has. The branch's head is read
    before the checks; if it moved by the time of the upload, nothing is
    uploaded (and the Hub refuses the commit if it moves during the upload).
    """
    check, plan, url = run_publish(out, repo_id, private=private, dry_run=dry_run, load=not skip_load, token=token,
                                   revision=revision, create_pr=create_pr, parent_commit=parent_commit)
    for warning in check.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"checks passed: {check.parameters:,} parameters, {check.weight_bytes:,} bytes of weights"
        + (", loads with transformers" if check.loaded else "")
    )
    click.echo(plan.format())
    if dry_run:
        click.echo("dry run: nothing was uploaded")
    else:
        click.echo(f"uploaded: {url}")
