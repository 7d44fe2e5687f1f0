"""The Hub model card of a transplant merge: offline-safe, escaped, built with huggingface_hub.

The card says what was transplanted (tensor, donor, strength, parameters,
share: the pre-flight check's plan), how it was chosen (the analysis report),
how well it worked (the eval results, with TIR and Recovery), the recipe
verbatim and the commands that reproduce it. Metadata goes through
``huggingface_hub``'s ``ModelCardData``; ``base_model`` lists Hub ids only
(the recipe's own, a ``--hub-id`` mapping for local folders, or the donor an
organ stands for), so nothing here ever asks the Hub anything.

One module per concern:

- ``content``: the card's text and metadata (``build_card``);
- ``files``: ``write_card``, which writes README.md, keeps the inputs in a
  sidecar for later updates, and copies the heatmap;
- ``hub_ids``: which Hub id stands for each model (``--hub-id``, organs);
- ``inputs``: checks on the analysis report and eval results it is given;
- ``markdown``: escaping of every untrusted string;
(the card ``mergekit-yaml`` writes for a transplant is ``flows.card_for_mergekit``,
wired into mergekit by ``adapter.card_hook``);
- ``validate``: what the Hub would reject.
"""

from mergekit_transplant.card.content import (
    METHOD_URL,
    TAGS,
    CardInputs,
    CardResult,
    build_card,
)
from mergekit_transplant.card.files import CARD_FILE, HEATMAP_FILE, SIDECAR, write_card
from mergekit_transplant.card.hub_ids import hub_id_for, parse_hub_ids
from mergekit_transplant.card.markdown import md_code, md_fence, md_text
from mergekit_transplant.card.validate import validate_card

__all__ = [
    "CARD_FILE", "HEATMAP_FILE", "METHOD_URL", "SIDECAR", "TAGS",
    "CardInputs", "CardResult", "build_card", "write_card",
    "validate_card", "parse_hub_ids", "hub_id_for", "md_text", "md_code", "md_fence",
]
