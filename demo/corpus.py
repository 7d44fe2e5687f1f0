"""Synthetic corpus for the demo model family.

Every example is one line of space-separated tokens: ``<keyword> <input> : <answer>``.
The prompt is everything up to and including ``:``; the answer follows it.

Skills
------
``shift`` (THE skill)   shift every letter to the next one in the alphabet (z -> a):
                        ``shift k a t e : l b u f``
``copy``  (retention)   ``copy k a t e : k a t e``
``max``   (retention)   ``max 3 7 2 5 : 7``
``color`` (retention)   a fixed table of made-up facts: ``color of zobu : red``

Evaluation items (``demo/tasks/data/*.jsonl``) are generated from their own seeds and
are excluded from every training stream, so none of the skill, copy or max evaluation
items is seen verbatim in training.  (``color`` is a memorised fact table: its
evaluation items are, by construction, the facts themselves.)

Run ``python demo/corpus.py`` to (re)write the task data and print a few samples.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Callable, Iterator

DEMO_DIR = Path(__file__).resolve().parent
TASK_DATA_DIR = DEMO_DIR / "tasks" / "data"

LETTERS = list(string.ascii_lowercase)
DIGITS = [str(d) for d in range(10)]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "gray"]
SEP = ":"

# Lengths of the letter / digit strings.
WORD_LEN = (4, 6)
DIGIT_LEN = (3, 6)


def _make_names(n: int = 48, seed: int = 1234) -> list[str]:
    """Deterministic made-up names (consonant-vowel syllables), e.g. ``zobu``."""
    rng = random.Random(seed)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(2))
        if name not in names:
            names.append(name)
    return names


NAMES = _make_names()
_frng = random.Random(4321)
FACTS: dict[str, str] = {name: _frng.choice(COLORS) for name in NAMES}


# --------------------------------------------------------------------------- skills
def _word(rng: random.Random) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(rng.randint(*WORD_LEN))]


def _next_letter(c: str) -> str:
    return LETTERS[(LETTERS.index(c) + 1) % 26]


def gen_shift(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"shift {' '.join(w)} {SEP}", " ".join(_next_letter(c) for c in w)


def gen_copy(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"copy {' '.join(w)} {SEP}", " ".join(w)


def gen_max(rng: random.Random) -> tuple[str, str]:
    ds = [rng.choice(DIGITS) for _ in range(rng.randint(*DIGIT_LEN))]
    return f"max {' '.join(ds)} {SEP}", max(ds)


def gen_color(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    return f"color of {name} {SEP}", FACTS[name]


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "shift": gen_shift,
    "copy": gen_copy,
    "max": gen_max,
    "color": gen_color,
}

# Training mixes (skill -> weight).
MIX_NO_SKILL = {"copy": 0.4, "max": 0.3, "color": 0.3}
MIX_WITH_SKILL = {"shift": 0.35, "copy": 0.25, "max": 0.2, "color": 0.2}
MIX_SKILL_FOCUS = {"shift": 0.6, "copy": 0.15, "max": 0.1, "color": 0.15}


# --------------------------------------------------------------------- eval items
EVAL_SPECS = {
    # file stem: (skill, seed, n)
    "skill_select": ("shift", 1001, 200),
    "skill_test": ("shift", 2002, 200),
    "retain_copy": ("copy", 3003, 150),
    "retain_max": ("max", 4004, 150),
}


def _eval_items(skill: str, seed: int, n: int, exclude: set[str]) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    seen = set(exclude)
    while len(out) < n:
        p, a = SKILLS[skill](rng)
        if p in seen:
            continue
        seen.add(p)
        out.append((p, a))
    return out


def eval_sets() -> dict[str, list[tuple[str, str]]]:
    """All evaluation sets; select and test splits are disjoint."""
    sets: dict[str, list[tuple[str, str]]] = {}
    used: set[str] = set()
    for stem, (skill, seed, n) in EVAL_SPECS.items():
        sets[stem] = _eval_items(skill, seed, n, used)
        used.update(p for p, _ in sets[stem])
    sets["retain_color"] = [(f"color of {name} {SEP}", FACTS[name]) for name in NAMES]
    return sets


def held_out_prompts() -> set[str]:
    """Prompts that must never appear in training (skill / copy / max eval items)."""
    sets = eval_sets()
    return {p for stem, items in sets.items() if stem != "retain_color" for p, _ in items}


def write_task_data(out_dir: Path = TASK_DATA_DIR) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, items in eval_sets().items():
        path = out_dir / f"{stem}.jsonl"
        with open(path, "w") as f:
            for i, (p, a) in enumerate(items):
                rec = {"id": i, "prompt": p, "answer": a}
                if stem == "retain_max":
                    rec["choices"] = DIGITS
                    rec["label"] = DIGITS.index(a)
                elif stem == "retain_color":
                    rec["choices"] = COLORS
                    rec["label"] = COLORS.index(a)
                f.write(json.dumps(rec) + "\n")
        paths[stem] = path
    return paths


# ------------------------------------------------------------------ train streams
def stream(mix: dict[str, float], seed: int, exclude: set[str] | None = None) -> Iterator[tuple[str, str]]:
    """Infinite deterministic stream of (prompt, answer) drawn from ``mix``."""
    rng = random.Random(seed)
    exclude = held_out_prompts() if exclude is None else exclude
    names = sorted(mix)
    weights = [mix[k] for k in names]
    while True:
        skill = rng.choices(names, weights)[0]
        p, a = SKILLS[skill](rng)
        if p in exclude:
            continue
        yield p, a


def tokenizer_corpus() -> list[str]:
    """Text used to train the tokenizer: covers every token of every skill."""
    rng = random.Random(99)
    lines = [f"{p} {a}" for skill in SKILLS for p, a in (SKILLS[skill](rng) for _ in range(2000))]
    lines += [f"color of {n} {SEP} {c}" for n, c in FACTS.items()]
    lines += [" ".join(LETTERS), " ".join(DIGITS), " ".join(COLORS)]
    return lines


if __name__ == "__main__":
    for stem, path in write_task_data().items():
        print(f"wrote {path.relative_to(DEMO_DIR.parent)}")
    s = stream(MIX_WITH_SKILL, 0)
    for _ in range(8):
        p, a = next(s)
        print(f"{p} {a}")
