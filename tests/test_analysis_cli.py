"""``mergekit-transplant analyze`` end to end: recipe, report, heatmap, table, errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import torch  # noqa: E402 - a hard dependency: a missing torch must fail, not skip

from mergekit_transplant.cli import main  # noqa: E402
from mergekit_transplant.recipe import load_recipe  # noqa: E402
from mergekit_transplant.testing import make_model, perturbed_copy  # noqa: E402

KNOWN = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    target = make_model(root / "target", "llama", layers=2)
    donor = perturbed_copy(target, root / "donor", KNOWN)
    work = root / "work.jsonl"
    work.write_text("\n".join(json.dumps({"text": t, "continuation": c}) for t, c in [
        ("one plus two equals", " three"), ("the cat is", " red"), ("a dog and a bird", " in the tree"),
    ]) + "\n")
    return root, target, donor, work


def _invoke(*args):
    return CliRunner().invoke(main, ["analyze", *map(str, args)], catch_exceptions=False)


def test_cli_writes_recipe_report_heatmap_and_prints_the_table(setup, tmp_path):
    root, target, donor, work = setup
    out, report, plot = tmp_path / "recipe.yml", tmp_path / "report.json", tmp_path / "heat.png"
    result = _invoke("--target", target, "--donor", donor, "--workload", work, "--top-k", 2, "--also",
                     "activation", "--select", "top", "-o", out, "--report", report, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "module" in result.output and "model.layers.0.mlp.up_proj" in result.output
    assert "2 of 14 modules selected" in result.output
    recipe = load_recipe(out)
    assert sorted(f for _, f in recipe.filters()) == sorted(KNOWN)
    text = out.read_text()
    assert f"--workload {work}" in text and "--top-k 2" in text  # the command line that produced it
    data = json.loads(report.read_text())
    from mergekit_transplant.analysis import DEFAULT_SCORE

    assert data["settings"]["score"] == DEFAULT_SCORE and data["settings"]["workload"]["n"] == 3  # the default
    assert sorted(data["ranking"][DEFAULT_SCORE][:2]) == sorted(KNOWN)
    import matplotlib.image

    image = matplotlib.image.imread(str(plot))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    check = CliRunner().invoke(main, ["check", str(out)])
    assert check.exit_code == 0, check.output


def test_cli_layer_granularity_and_budget(setup, tmp_path):
    root, target, donor, work = setup
    out = tmp_path / "layers.yml"
    result = _invoke("--target", target, "--donor", donor, "--workload", work, "--granularity", "layer",
                     "--top-k", 1, "--quiet", "-o", out)
    assert result.exit_code == 0, result.output
    filters = [f for _, f in load_recipe(out).filters()]
    assert len(filters) == 1 and filters[0] in ("model.layers.0.", "model.layers.1.")


@pytest.mark.parametrize("args,message", [
    (["--workload", "{bad}"], "line 2: not valid JSON"),
    ([], "give exactly one of --workload FILE or --lm-eval-task NAME"),
    (["--workload", "{work}", "--strength", "1.5"], "--strength must be in (0, 1]"),
    (["--workload", "{work}", "--param-budget", "2"], "--param-budget is a fraction"),
    (["--workload", "{work}", "--modules", "*nothing*"], "no candidate modules matching *nothing*"),
])
def test_cli_errors_are_one_line_and_exit_2(setup, tmp_path, args, message):
    root, target, donor, work = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    args = [a.format(bad=bad, work=work) for a in args]
    result = CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), *args,
                                       "-o", str(tmp_path / "r.yml")])
    assert result.exit_code == 2, result.output
    assert "error: " in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r.yml").exists()


def test_cli_help_lists_every_option():
    result = CliRunner().invoke(main, ["analyze", "--help"])
    assert result.exit_code == 0
    for option in ("--target", "--donor", "--workload", "--lm-eval-task", "--include-path", "--limit", "--seed",
                   "--top-k", "--param-budget", "--strength", "--strength-mode", "--modules", "--score",
                   "--capture", "--max-new-tokens", "--granularity", "--device", "--dtype", "--device-map",
                   "--batch-size", "--max-length", "--trust-remote-code", "--report", "--plot", "--debug"):
        assert option in result.output, option


def test_cli_offers_every_score_and_the_api_default():
    from mergekit_transplant.analysis import DEFAULT_SCORE, SCORES

    command = main.get_command(None, "analyze")
    score = next(p for p in command.params if p.name == "score")
    assert list(score.type.choices) == list(SCORES) and score.default == DEFAULT_SCORE
    result = CliRunner().invoke(main, ["analyze", "--help"])
    text = " ".join(result.output.split())
    assert f"default: {DEFAULT_SCORE}" in text
    described = text[text.index("Scores:"):text.index("Options:")]
    defaults = [name for name in SCORES if f"{name} (default" in described]
    assert defaults == [DEFAULT_SCORE], described  # the prose names the same default as the option
    sweep = " ".join(CliRunner().invoke(main, ["sweep", "--help"]).output.split())
    assert f"with --workload, analyze's default, {DEFAULT_SCORE})" in sweep  # sweep's help names it too
