"""The demo's model pairs and the exact analyze command for each.

Shared by ``demo/run.py`` (``make demo``) and ``tests/test_recipes_current.py``
(CI regenerates every recipe in ``recipes/`` and fails when one changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

MODELS = "demo/models"
TASKS = "demo/tasks"
SELECT = "demo_skill_select"  # the selection split: analysis workload, sweep selection
TEST = "demo_skill_test"  # held out: eval and the sweep's reported figure
RETAIN = ("demo_retain_copy", "demo_retain_max", "demo_retain_color")
#: the default score first: it writes the recipes and runs the sweeps with random controls
SCORES = ("local", "attribution", "activation")
DEFAULT_SCORE = SCORES[0]


@dataclass(frozen=True)
class Pair:
    name: str
    target: str
    donor: str
    top_k: int
    ks: Tuple[int, ...]
    strengths: Tuple[float, ...]
    story: str

    @property
    def target_path(self) -> str:
        return f"{MODELS}/{self.target}"

    @property
    def donor_path(self) -> str:
        return f"{MODELS}/{self.donor}"

    @property
    def recipe(self) -> str:
        return f"recipes/demo-{self.name}.yml"


PAIRS = (
    Pair("local", "base", "tuned-local", 4, (1, 2, 4, 8), (1.0,),
         "base vs a sibling fine-tuned in 4 known modules only (ground truth)"),
    Pair("tuned", "base", "tuned", 4, (2, 4, 8, 14, 20, 28), (0.5, 1.0),
         "base vs its fully fine-tuned sibling (every module trained)"),
    Pair("generations", "gen2", "gen1", 4, (2, 4, 8, 14, 20, 28), (0.5, 1.0),
         "a next generation that forgot the skill vs the previous generation"),
)


def analyze_args(pair: Pair, report: str, plot: str) -> list:
    """``mergekit-transplant analyze`` arguments; the recipe header records them."""
    args = [
        "analyze", "--target", pair.target_path, "--donor", pair.donor_path,
        "--lm-eval-task", SELECT, "--include-path", TASKS,
        "--score", DEFAULT_SCORE, "--top-k", str(pair.top_k),
        "-o", pair.recipe, "--report-out", report, "--plot", plot,
    ]
    for score in SCORES[1:]:
        args += ["--also", score]
    return args
