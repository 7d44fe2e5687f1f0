"""``organ train``: the NOT paper's trained organs (arXiv 2601.13580).

Train one contiguous block of decoder layers on a domain corpus with every
other parameter frozen, and write it in the organ format ``organ extract``
writes, so ``organ verify``, ``organ apply``, ``check``, ``card`` and plain
``mergekit-yaml`` use it unchanged.

One concern per module: ``config`` (the settings dataclass the CLI is built
from), ``blocks`` (which layers), ``data`` (corpus -> packed sequences and their
order), ``state`` (the resumable ``OUTPUT.partial/``), ``record`` (what
``organ.json`` says about the training), ``writer`` (the organ folder) and
``trainer`` (the accelerate loop).
"""

from mergekit_transplant.organ.training.blocks import Block, auto_block, parse_layers
from mergekit_transplant.organ.training.config import OrganTrainSettings
from mergekit_transplant.organ.training.record import TrainRecord
from mergekit_transplant.organ.training.trainer import TrainResult, train_organ

__all__ = ["Block", "OrganTrainSettings", "TrainRecord", "TrainResult", "auto_block", "parse_layers", "train_organ"]
