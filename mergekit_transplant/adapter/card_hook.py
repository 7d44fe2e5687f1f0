"""The card ``mergekit-yaml`` writes for ``merge_method: transplant``: the ``generate_card`` patch.

mergekit's ``generate_card`` asks the Hub whether a local path with exactly
one '/' (``models/x``) is a repo, and crashes offline after the weights are
written. For ``transplant`` merges we substitute the plugin's own card; other
merge methods still get mergekit's. The card itself is built above this layer
(``flows.card_for_mergekit``: check, then card); this module only knows where
mergekit keeps ``generate_card`` and how it is called.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Optional

from mergekit_transplant.adapter.policy import step_aside

HOOK_MARK = "_transplant_hook"
#: generate_card's parameters (mergekit 0.1.x), the ones the substitute receives
GENERATE_CARD_PARAMETERS = ("config", "config_yaml", "name")

CardBuilder = Callable[[object, str, Optional[str]], str]


def install_mergekit_card_hook(build: CardBuilder) -> bool:
    """Give ``transplant`` merges the card ``build(config, config_yaml, name)`` returns (idempotent).

    The post-import hook (``_hook.AFTER_IMPORT``) runs this right after
    ``mergekit.card`` executes, before ``mergekit.merge`` binds the name.
    Returns whether the hook is installed; when ``generate_card`` is missing or
    takes other parameters, mergekit keeps its own card (``adapter.policy``).
    """
    import inspect

    card = sys.modules.get("mergekit.card")
    if card is None:
        import mergekit.card as card
    original = getattr(card, "generate_card", None)
    if original is None:
        step_aside("transplant model card", "mergekit.card.generate_card is missing")
        return False
    if getattr(original, HOOK_MARK, False):
        return True
    try:
        names = tuple(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        names = ()
    if names != GENERATE_CARD_PARAMETERS:
        step_aside("transplant model card", f"generate_card{names} is not the signature the card hook knows")
        return False

    @functools.wraps(original)
    def generate_card(config, config_yaml, name=None):
        if getattr(config, "merge_method", None) == "transplant":
            return build(config, config_yaml, name)
        return original(config, config_yaml, name)

    setattr(generate_card, HOOK_MARK, True)
    card.generate_card = generate_card
    merge = sys.modules.get("mergekit.merge")
    if merge is not None and getattr(merge, "generate_card", None) is original:
        merge.generate_card = generate_card
    return True
