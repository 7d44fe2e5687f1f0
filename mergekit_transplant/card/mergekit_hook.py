"""The card ``mergekit-yaml`` writes for ``merge_method: transplant`` (offline-safe)."""

from __future__ import annotations

from typing import Optional

from mergekit_transplant.card.content import TAGS, CardInputs, build_card
from mergekit_transplant.card.markdown import md_fence, md_text


def card_for_mergekit(config, config_yaml: str, name: Optional[str] = None) -> str:
    """The card mergekit's ``generate_card`` returns for ``merge_method: transplant``.

    Called after mergekit has written the weights, so it must not fail and must
    not touch the network: the plan comes from headers only, and anything
    unexpected degrades to a card without the plan table.
    """
    from mergekit_transplant.recipe import Recipe, parse_recipe

    try:
        recipe = parse_recipe(config_yaml)
    except Exception:
        recipe = Recipe(source=config_yaml, data=config.model_dump(mode="json", exclude_none=True))
    report = None
    try:
        report = _check_preserving_loader_cache(recipe)
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


def _check_preserving_loader_cache(recipe):
    """run_check resets mergekit's LoaderCache options; put them back afterwards."""
    from mergekit.io.tasks import LoaderCache

    from mergekit_transplant.preflight import run_check

    cache = LoaderCache()
    saved = {k: getattr(cache, k) for k in
             ("lora_cache_dir", "hf_cache_dir", "lazy_unpickle", "trust_remote_code", "lora_merge_dtype")}
    try:
        return run_check(recipe)
    finally:
        for k, v in saved.items():
            setattr(cache, k, v)


def install_mergekit_card_hook() -> None:
    """Give ``transplant`` merges this card in plain ``mergekit-yaml`` (idempotent).

    mergekit's ``generate_card`` asks the Hub whether a local path with exactly
    one '/' (``models/x``) is a repo, and crashes offline after the weights are
    written. The post-import hook (``_hook.AFTER_IMPORT``) runs this right
    after ``mergekit.card`` executes, before ``mergekit.merge`` binds the name;
    other merge methods still get mergekit's own card.
    """
    import functools
    import sys

    card = sys.modules.get("mergekit.card")
    if card is None:
        import mergekit.card as card
    original = card.generate_card
    if getattr(original, "_transplant_hook", False):
        return

    @functools.wraps(original)
    def generate_card(config, config_yaml, name=None):
        if getattr(config, "merge_method", None) == "transplant":
            return card_for_mergekit(config, config_yaml, name)
        return original(config, config_yaml, name)

    generate_card._transplant_hook = True
    card.generate_card = generate_card
    merge = sys.modules.get("mergekit.merge")
    if merge is not None and getattr(merge, "generate_card", None) is original:
        merge.generate_card = generate_card
