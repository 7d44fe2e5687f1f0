"""The orchestration layer: each command's steps, composed in one place.

- ``run_transplant``: check -> merge -> card (``mergekit-transplant merge``);
- ``apply_organ``: verify -> merge -> card for an organ (``organ apply``);
- ``card_for_mergekit``: check -> card, the card plain ``mergekit-yaml``
  writes for a transplant (wired to mergekit by ``_hook`` through
  ``adapter.card_hook``).

Everything here composes functions of the layers below (checkpoint, recipe,
preflight, organ, card, adapter); no package ``__init__`` re-exports these, and
nothing below imports this module. docs/architecture.md draws the layers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from mergekit_transplant import atomic
from mergekit_transplant.adapter import register as register_with_mergekit
from mergekit_transplant.adapter.loader_cache import fresh_loaders, loader_options_kept
from mergekit_transplant.card.content import TAGS, CardInputs, build_card
from mergekit_transplant.card.files import write_card
from mergekit_transplant.card.markdown import md_fence, md_text
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.merge import check_device, check_finite, ensure_output_free
from mergekit_transplant.organ.apply import organ_recipe_for
from mergekit_transplant.organ.at import organ_view
from mergekit_transplant.organ.extract import refuse_clobbering
from mergekit_transplant.organ.manifest import read_manifest
from mergekit_transplant.organ.verify import VerifyReport, verify_organ, verify_recipe_organs
from mergekit_transplant.preflight import CheckReport, run_check
from mergekit_transplant.recipe import Recipe, load_recipe, parse_recipe

# --------------------------------------------------------------------------- check -> merge -> card


def run_transplant(
    recipe_path: os.PathLike | str,
    out_path: os.PathLike | str,
    options=None,
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    write_card: bool = True,
) -> CheckReport:
    """Check ``recipe_path``, then merge it into ``out_path``; returns the check report.

    The plugin's card is written unless ``write_card`` is False or ``options``
    say ``write_model_card=False`` (``--no-write-model-card``); mergekit's own
    card never is (it asks the Hub about local paths).
    """
    register_with_mergekit()
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = options or MergeOptions()
    recipe = load_recipe(recipe_path)
    verify_recipe_organs(recipe)  # a tampered or mismatched organ is refused before anything else
    report = run_check(recipe, allow_pickle=allow_pickle, trust_remote_code=options.trust_remote_code)
    if not report.ok:
        raise TransplantError(
            f"{recipe_path} failed the pre-flight check; nothing was written:\n  "
            + "\n  ".join(report.errors)
        )
    ensure_output_free(out_path, overwrite)
    check_device(options)
    if not allow_nonfinite:
        check_finite(report, allow_pickle=allow_pickle)
    write_card = write_card and options.write_model_card
    options = options.model_copy(update={"write_model_card": False})
    config = MergeConfiguration.model_validate(recipe.data)
    fresh_loaders()
    with atomic.replacing_dir(out_path, overwrite=overwrite) as tmp:
        run_merge(config, str(tmp), options=options, config_source=recipe.source)
        (tmp / "mergekit_config.yml").write_text(recipe.source, encoding="utf-8")
        if write_card:
            _write_card(tmp, recipe, report)
    return report


def _write_card(out_dir: Path, recipe, report: CheckReport) -> None:
    """The plugin's model card; offline-safe (never asks the Hub about local paths)."""
    write_card(out_dir, recipe=recipe, check_report=report)


# --------------------------------------------------------------------------- verify -> merge -> card (organs)


def apply_organ(
    organ_dir: os.PathLike | str,
    out_path: os.PathLike | str,
    *,
    target: Optional[str] = None,
    at: Optional[int] = None,
    options=None,
    overwrite: bool = False,
    write_card: bool = True,
) -> Tuple[VerifyReport, CheckReport]:
    """Verify the organ against ``target``, then merge it into ``out_path``.

    ``at`` re-inserts the organ's layer block starting at decoder layer ``at``
    (``organ.at.organ_view``): the merge reads a temporary view of the organ
    whose tensor names are rewritten; the organ's own files are not changed.
    """
    manifest = read_manifest(organ_dir)
    target = target or manifest.target_ref
    refuse_clobbering(Path(out_path), [target, str(organ_dir)])
    with contextlib.ExitStack() as stack:
        if at is None:
            verify = verify_organ(organ_dir, target=target)
            verify.raise_for_errors()
            text, _ = organ_recipe_for(organ_dir, target)
        else:
            verify = verify_organ(organ_dir)  # integrity here; the fit at the new position when the view is merged
            verify.raise_for_errors()
            view = stack.enter_context(tempfile.TemporaryDirectory(prefix="organ-view-"))
            text = organ_view(organ_dir, Path(view) / "organ", target, at)
        fd, name = tempfile.mkstemp(prefix="organ-recipe-", suffix=".yml")
        os.close(fd)
        stack.callback(os.unlink, name)
        Path(name).write_text(text, encoding="utf-8")
        report = run_transplant(name, out_path, options, overwrite=overwrite, write_card=write_card)
    return verify, report


# --------------------------------------------------------------------------- check -> card (mergekit-yaml)


def card_for_mergekit(config, config_yaml: str, name: Optional[str] = None) -> str:
    """The card mergekit's ``generate_card`` returns for ``merge_method: transplant``.

    Called after mergekit has written the weights, so it must not fail and must
    not touch the network: the plan comes from headers only, and anything
    unexpected degrades to a card without the plan table.
    """
    try:
        recipe = parse_recipe(config_yaml)
    except Exception:
        recipe = Recipe(source=config_yaml, data=config.model_dump(mode="json", exclude_none=True))
    report = None
    try:
        with loader_options_kept():  # run_check resets mergekit's LoaderCache options mid-merge
            report = run_check(recipe)
    except Exception:
        report = None
    try:
        return build_card(CardInputs(recipe=recipe, check_report=report, name=name or "transplant-merge")).text
    except Exception as error:  # last resort: still a valid, offline card
        from huggingface_hub import ModelCard, ModelCardData

        data = ModelCardData(library_name="transformers", tags=list(TAGS))
        body = (f"# {md_text(name or 'transplant-merge')}\n\nA transplant merge made with mergekit-transplant "
                f"(card generation failed: {md_text(error)}).\n\n## Recipe\n\n{md_fence(config_yaml, 'yaml')}\n")
        return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


__all__ = ["apply_organ", "card_for_mergekit", "run_transplant"]
