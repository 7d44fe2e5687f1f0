"""The recipes in recipes/ are what the demo's analysis writes today.

CI regenerates each one with the exact command ``make demo`` uses and fails
when a byte differs: a change to the analysis that moves a recipe must come
with the regenerated recipe (``make demo``) in the same commit.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from demo.pairs import PAIRS, analyze_args
from mergekit_transplant.cli import main
from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p.name)
def test_recipe_is_current(pair, tmp_path, monkeypatch):
    committed = REPO / pair.recipe
    assert committed.exists(), f"{pair.recipe} is missing: run `make demo` and commit recipes/"
    (tmp_path / "demo").symlink_to(REPO / "demo")
    monkeypatch.chdir(tmp_path)
    args = analyze_args(pair, f"build/demo/{pair.name}/report.json", f"docs/results/{pair.name}-heatmap.png")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    fresh = (tmp_path / pair.recipe).read_text()
    assert fresh == committed.read_text(), (
        f"{pair.recipe} is stale: the analysis now writes a different recipe. "
        "Run `make demo` and commit the regenerated recipes/."
    )
