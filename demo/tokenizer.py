"""Word-level tokenizer for the demo family, trained with the ``tokenizers`` library.

Every token of the corpus is a whitespace-separated word (single letters, single digits,
keywords, names, colours, ``:``).  Encoding prepends ``<s>``; the models are trained on
``<s> prompt answer </s>`` so lm-eval's default ``add_special_tokens`` behaviour matches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3


def train_tokenizer(lines: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The demo's tokenizer; ``lines`` replaces its corpus (benchmarks/selection.py adds a skill)."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1, show_progress=False)
    tok.train_from_iterator(corpus.tokenizer_corpus() if lines is None else lines, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=64,
    )
    return fast


if __name__ == "__main__":
    t = train_tokenizer()
    print(len(t), t.convert_ids_to_tokens(list(range(12))))
    ids = t("shift k a t e : l b u f")["input_ids"]
    print(ids, repr(t.decode(ids)), repr(t.decode(ids, skip_special_tokens=True)))
