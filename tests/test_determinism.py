"""Same inputs, same bytes: recipe, organ and merged shards hash identically across runs.

Each command runs twice through the real console script, in two processes
with different ``PYTHONHASHSEED`` values (so iteration over a set or a dict
built from one cannot hide), writing to the same path (outputs may
legitimately name their own folder); every file is compared by sha256. The
analysis report may differ only in its ``timing`` section.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Dict

import pytest

from mergekit_transplant.testing import linear_weight_names, perturbed_copy
from mergekit_transplant.testing_cli import leftovers, recipe, run_cli
from tests.conftest import PICKED

HASH_SEEDS = ("1", "2")

WORDS = "the a cat dog red blue one two three tree house car book".split()


def digests(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pair(model_factory, tmp_path_factory):
    t = model_factory("det-t", layers=4, hidden=32, intermediate=64, seed=0)
    root = tmp_path_factory.mktemp("det")
    # many differing modules, so a recipe's order has many ways to go wrong
    d = perturbed_copy(t, root / "d", [n for n in linear_weight_names(t) if ".layers.1." in n or ".layers.2." in n])
    rnd = random.Random(0)
    work = root / "work.jsonl"
    work.write_text("".join(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(8))}) + "\n"
                            for _ in range(6)))
    return t, d, work


@pytest.mark.slow
def test_merge_is_byte_identical(pair, tmp_path):
    t, d, _ = pair
    (tmp_path / "r.yml").write_text(recipe(t, d, [("model.layers.1.mlp.down_proj.weight", 0.37),
                                                  ("model.layers.2.self_attn.", 1.0)]))
    runs = []
    for seed in HASH_SEEDS:
        proc = run_cli(["merge", "--overwrite", tmp_path / "r.yml", tmp_path / "out"], env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        runs.append(digests(tmp_path / "out"))
    assert "model.safetensors" in runs[0] and "mergekit_config.yml" in runs[0]
    assert runs[0] == runs[1]
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_analyze_recipe_bytes_and_report_except_timing(pair, tmp_path):
    t, d, work = pair
    args = ["analyze", "--target", t, "--donor", d, "--workload", work, "--top-k", "8", "--quiet",
            "--also", "activation", "-o", tmp_path / "recipe.yml", "--report", tmp_path / "report.json"]
    recipes, reports = [], []
    for seed in HASH_SEEDS:
        proc = run_cli(args, env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        recipes.append((tmp_path / "recipe.yml").read_bytes())
        reports.append(json.loads((tmp_path / "report.json").read_text()))
    assert recipes[0] == recipes[1]
    assert "timing" in reports[0]
    for r in reports:
        r.pop("timing")
    assert reports[0] == reports[1]


@pytest.mark.slow
def test_organ_is_byte_identical(pair, tmp_path):
    t, d, _ = pair
    (tmp_path / "r.yml").write_text(recipe(t, d, [("model.layers.1.mlp.down_proj.weight", 1.0),
                                                  ("model.layers.2.self_attn.v_proj.weight", 0.5)]))
    runs = []
    for seed in HASH_SEEDS:
        proc = run_cli(["organ", "extract", "--overwrite", tmp_path / "r.yml", "-o", tmp_path / "organ"],
                       env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        runs.append(digests(tmp_path / "organ"))
    assert {"organ.json", "recipe.yml", "model.safetensors"} <= set(runs[0])
    assert runs[0] == runs[1]


def test_rendered_recipe_is_exactly_the_expected_text():
    """Compared with the text itself, not with a second call of the same function."""
    from mergekit_transplant.recipe import Selection, render_recipe

    sels = [Selection(n, "donor", s) for n, s in zip(PICKED, (1.0, 0.5, 0.123456789))]
    sels.append(Selection("model.norm.weight", "other", 0.25))
    text = render_recipe("target", sels, dtype="float32", header=["made by a test", "second line"])
    assert text == (
        "# made by a test\n# second line\n"
        "merge_method: transplant\nbase_model: target\nmodels:\n"
        "- model: donor\n  parameters:\n    strength:\n"
        f"    - filter: {PICKED[0]}\n      value: 1.0\n"
        f"    - filter: {PICKED[1]}\n      value: 0.5\n"
        f"    - filter: {PICKED[2]}\n      value: 0.123457\n"
        "    - value: 0.0\n"
        "- model: other\n  parameters:\n    strength:\n"
        "    - filter: model.norm.weight\n      value: 0.25\n    - value: 0.0\n"
        "dtype: float32\n"
    )
