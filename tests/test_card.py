"""Hub-ready output: the model card after `mergekit-yaml` and `mergekit-transplant merge`/`card`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from mergekit_transplant.adapter.loader_cache import fresh_loaders
from mergekit_transplant.card import HEATMAP_FILE, SIDECAR, validate_card, write_card
from mergekit_transplant.cli import main
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.testing import make_model, perturbed_copy

BIN = Path(sys.executable).parent
TRANSPLANTED = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"]

RECIPE = """# hand-written recipe
merge_method: transplant
base_model: models/target
models:
  - model: models/donor
    parameters:
      strength:
        - filter: model.layers.1.mlp.down_proj.weight
          value: 1.0
        - filter: model.layers.0.self_attn.q_proj.weight
          value: 0.5
        - value: 0
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding models/target and models/donor: paths with exactly one '/'."""
    root = tmp_path_factory.mktemp("cardwork")
    make_model(root / "models" / "target", "llama", seed=0)
    perturbed_copy(root / "models" / "target", root / "models" / "donor", TRANSPLANTED)
    (root / "recipe.yml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def merged(work):
    """`mergekit-transplant merge` output (in-process), card included."""
    from mergekit_transplant.flows import run_transplant

    fresh_loaders()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        run_transplant("recipe.yml", "merged")
    finally:
        os.chdir(cwd)
    return work / "merged"


def _offline_env(tmp_path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "TQDM_DISABLE": "1"}
    env.pop("MERGEKIT_TRANSPLANT_DISABLE", None)
    return env


def _outside_code(markdown: str) -> str:
    """The card's text with fenced code blocks and code spans removed."""
    text = re.sub(r"^(`{3,})[^\n]*\n.*?^\1\s*$", "", markdown, flags=re.S | re.M)
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", text)


def _html(markdown_body: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown_body)


@pytest.mark.slow
def test_mergekit_yaml_writes_the_transplant_card_offline(work, tmp_path):
    """Plain mergekit-yaml, local paths with one '/', HF_HUB_OFFLINE=1: mergekit's own
    card writer would ask the Hub about `models/target` and crash after writing weights."""
    proc = subprocess.run(
        [str(BIN / "mergekit-yaml"), "recipe.yml", str(tmp_path / "out")],
        cwd=work, env=_offline_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    for needed in ("README.md", "config.json", "generation_config.json", "model.safetensors",
                   "tokenizer.json", "tokenizer_config.json", "mergekit_config.yml"):
        assert needed in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]

    card = ModelCard.load(out / "README.md")
    assert card.data.tags == ["mergekit", "merge", "transplant"]
    assert card.data.library_name == "transformers"
    assert card.data.get("base_model") is None  # local paths, no mapping: left out
    assert validate_card(out / "README.md") == []
    assert "| `model.layers.1.mlp.down_proj.weight` | `models/donor` | 1 | 8,192 |" in card.text
    assert "| `model.layers.0.self_attn.q_proj.weight` | `models/donor` | 0.5 | 4,096 |" in card.text
    assert RECIPE in card.text  # verbatim
    assert "This is a merge of pre-trained language models" not in card.text  # not mergekit's card


@pytest.mark.slow
def test_other_merge_methods_keep_mergekits_card(work):
    """The wrapper only answers for `transplant`; other methods get mergekit's card unchanged."""
    code = (
        "import mergekit.merge as mm, mergekit.card as mc, yaml\n"
        "from mergekit.config import MergeConfiguration\n"
        "assert mm.generate_card is mc.generate_card and mc.generate_card._transplant_hook\n"
        f"t, d = {str(work / 'models/target')!r}, {str(work / 'models/donor')!r}\n"
        "cfg = MergeConfiguration.model_validate({'merge_method': 'linear', 'models': ["
        "{'model': t, 'parameters': {'weight': 0.5}}, {'model': d, 'parameters': {'weight': 0.5}}]})\n"
        "print(mm.generate_card(cfg, 'x: 1', name='lin'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "This is a merge of pre-trained language models created using [mergekit]" in proc.stdout
    assert "transplant" not in proc.stdout


def test_merge_no_write_model_card_writes_no_card(work, tmp_path):
    """`merge --no-write-model-card` (mergekit's flag) is honoured: the merge, without README.md or its sidecar."""
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(RECIPE.replace("models/", f"{work}/models/"))
    fresh_loaders()
    result = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "out"), "--no-write-model-card"])
    assert result.exit_code == 0, result.output
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "mergekit_config.yml", "config.json"} <= written
    assert "README.md" not in written and SIDECAR not in written
    fresh_loaders()
    result = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "carded")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "carded" / "README.md").is_file()  # the default still writes it


def test_merge_command_writes_a_card(merged):
    card = ModelCard.load(merged / "README.md")
    assert card.text.lstrip().splitlines()[2] == "# merged"  # the folder's name, not the temp folder's
    assert validate_card(merged / "README.md") == []
    assert "## What was transplanted" in card.text and "## Reproduce" in card.text
    assert "mergekit-yaml mergekit_config.yml ./merged" in card.text


def _report(tmp_path: Path, heatmap: str | None = None) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 6), (200, 30, 30)).save(tmp_path / "heat.png")
    report = {
        "settings": {"target": "models/target", "donor": "models/donor", "score": "local",
                     "capture": "teacher-forced",
                     "workload": {"path": "prompts.jsonl", "sha256": "ab" * 32, "n": 40}},
        "candidates": [
            {"tensor": "model.layers.1.mlp.down_proj.weight", "scores": {"local": 0.9, "activation": 0.4}},
            {"tensor": "model.layers.0.self_attn.q_proj.weight", "scores": {"local": 0.5, "activation": 0.7}},
            {"tensor": "model.layers.0.mlp.up_proj.weight", "scores": {"local": 0.1, "activation": 0.2}},
        ],
        "ranking": {"local": ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight",
                              "model.layers.0.mlp.up_proj.weight"]},
        "selection": [{"tensor": "model.layers.1.mlp.down_proj.weight", "donor": "models/donor",
                       "strength": 1.0, "score": 0.9},
                      {"tensor": "model.layers.0.self_attn.q_proj.weight", "donor": "models/donor",
                       "strength": 0.5, "score": 0.5}],
    }
    if heatmap:
        report["settings"]["plot"] = heatmap
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def _results(tmp_path: Path, task: str = "arith") -> Path:
    """results.json as `mergekit-transplant eval` writes it (the fields the card reads)."""
    results = {
        "tasks": {task: {"metric": "acc", "higher_is_better": True, "target": 0.20, "donor": 0.60, "merged": 0.50,
                         "stderr": {"target": 0.02, "donor": 0.02, "merged": 0.02}, "tir": 2.5, "tir_reason": None,
                         "recovery": 0.75, "recovery_reason": None},
                  "flat": {"metric": "acc", "target": 0.5, "donor": 0.5, "merged": 0.5, "stderr": None,
                           "tir": 1.0, "recovery": None, "recovery_reason": "donor is not better"}},
        "retain": {"general": {"metric": "acc", "target": 0.7, "merged": 0.68, "change": -0.02,
                               "change_stderr": 0.01, "regressed": True, "significant_regression": False}},
        "settings": {"tasks": [task, "flat"], "retain_tasks": ["general"], "include_path": "tasks/", "limit": None},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return path


def test_card_command_adds_analysis_eval_and_hub_ids(merged, tmp_path, work):
    out = tmp_path / "merged"
    import shutil

    shutil.copytree(merged, out)
    report = _report(tmp_path, heatmap="heat.png")  # referenced by report.json, relative to it
    cwd = os.getcwd()
    os.chdir(work)  # the recipe's paths resolve from here, as for mergekit
    try:
        result = CliRunner().invoke(main, [
            "card", str(out), "--report", str(report), "--eval", str(_results(tmp_path)),
            "--hub-id", "models/target=acme/tiny-target", "--hub-id", "models/donor=acme/tiny-donor@0123abc",
        ])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.base_model == ["acme/tiny-target", "acme/tiny-donor"]
    assert data.get("base_model_relation") == "merge"
    assert data.tags == ["mergekit", "merge", "transplant"] and data.library_name == "transformers"
    assert validate_card(out / "README.md", require_base_model=True) == []

    text = card.text
    assert "Score: `local` (capture: `teacher-forced`)" in text
    assert "`prompts.jsonl`, 40 prompts, sha256 `" + "ab" * 32 + "`" in text
    assert "| 1 | `model.layers.1.mlp.down_proj.weight` | 0.9 | 0.4 | ✓ |" in text
    assert "| 3 | `model.layers.0.mlp.up_proj.weight` | 0.1 | 0.2 |  |" in text
    assert f"]({HEATMAP_FILE})" in text
    assert (out / HEATMAP_FILE).read_bytes() == (tmp_path / "heat.png").read_bytes()
    assert "| `arith` | `acc` | 0.2 | 0.6 | 0.5 ± 0.02 | 2.500 | 0.750 |" in text
    assert "| `flat` | `acc` | 0.5 | 0.5 | 0.5 | 1.000 | — (donor is not better) |" in text
    assert "| `general` | `acc` | 0.7 | 0.68 | -0.02 ± 0.01 | slightly |" in text
    assert ("mergekit-transplant eval --target acme/tiny-target --donor acme/tiny-donor@0123abc --merged ./merged "
            "--tasks arith,flat --retain-tasks general --include-path tasks/ -o results.json") in text
    # rebuilt by AnalyzeSettings.to_cli(): the settings that differ from their defaults
    assert ("mergekit-transplant analyze --target acme/tiny-target --donor acme/tiny-donor@0123abc "
            "--workload prompts.jsonl --score local --output recipe.yml") in text
    assert "[`acme/tiny-target`](https://huggingface.co/acme/tiny-target)" in text


def test_card_update_keeps_other_sections_and_user_text(merged, tmp_path, work):
    import shutil

    from mergekit_transplant.recipe import load_recipe

    out = tmp_path / "m"
    shutil.copytree(merged, out)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        write_card(out, report=_report(tmp_path), hub_ids={"models/target": "acme/t"})
        card = ModelCard.load(out / "README.md")
        card.data["license"] = "apache-2.0"
        card.text = card.text + "\n## Notes by the author\n\nHand-written.\n"
        card.save(out / "README.md")
        analyzed = tmp_path / "analyzed.yml"
        analyzed.write_text("# Written by mergekit-transplant analyze:\n#   mergekit-transplant analyze --target "
                            "models/target --donor models/donor --workload w.jsonl --top-k 2 -o r.yml\n" + RECIPE)
        write_card(out, recipe=load_recipe(analyzed), eval_results=_results(tmp_path, "second_task"))
    finally:
        os.chdir(cwd)
    assert ("```sh\npip install mergekit-transplant\n# 1. find the modules (writes the recipe shown above)\n"
            "mergekit-transplant analyze --target models/target --donor models/donor --workload w.jsonl "
            "--top-k 2 -o r.yml\n") in (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"  # metadata the card does not own is kept
    assert card.data.base_model == ["acme/t"]  # mapping remembered in transplant_card.json
    assert "## Notes by the author" in card.text and "Hand-written." in card.text
    assert "Score: `local`" in card.text  # analysis kept from the first run
    assert "`second_task`" in card.text
    assert card.text.count("## What was transplanted") == 1
    assert json.loads((out / SIDECAR).read_text())["hub_ids"] == {"models/target": "acme/t"}


def test_card_from_a_sweep_json(merged, tmp_path, work):
    """``card --sweep``: the section is built from the ``SweepResult`` (here a schema-1 file, read by
    ``SweepResult.load``), kept in the sidecar in today's schema, and kept when another section is updated."""
    import shutil

    from mergekit_transplant.sweep.result import SweepResult

    old = Path(__file__).parent / "data" / "old_reports" / "sweep.v1.json"
    best = SweepResult.load(old).summary()
    out = tmp_path / "m"
    shutil.copytree(merged, out)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = CliRunner().invoke(main, ["card", str(out), "--sweep", str(old)])
        assert result.exit_code == 0, result.output
        assert "warning: the sweep ran on /tmp/s5json/run/target <- /tmp/s5json/run/donor, not on this" in result.output
        text = (out / "README.md").read_text()
        assert "## Against random modules (sweep)" in text
        assert (f"| **best: K = {best['k']}, strength {best['strength']:g}** ({best['parameters']:,} parameters) | "
                f"{best['report_score']:.4g} | {best['tir']:.3f} | {best['recovery']:.3f} |") in text
        rc = best["random_controls"]
        assert f"| random modules, same K and strength (2): mean [min, max] | {rc['mean']:.4g} [{rc['min']:.4g}, " in text
        assert "chosen on `sel_ppl` and is reported on `test_ppl` (lower is better)" in text
        assert "Beats every random control of the same size: " + ("yes" if best["beats_every_random_control"]
                                                                  else "**no**") in text
        assert json.loads((out / SIDECAR).read_text())["sweep"]["schema"] == 2
        write_card(out, eval_results=_results(tmp_path))  # another section: the sweep's is kept
        assert "## Against random modules (sweep)" in (out / "README.md").read_text()
        kept = json.loads((out / SIDECAR).read_text())
        kept["sweep"]["schema"] = 3  # a later version's card data: the section is left out, and the card says so
        (out / SIDECAR).write_text(json.dumps(kept))
        assert (f"the sweep section kept from the previous card is left out: {SIDECAR} sweep: sweep schema 3 is "
                "not one this version reads (1, 2); upgrade mergekit-transplant") in write_card(out).warnings
        assert "## Against random modules (sweep)" not in (out / "README.md").read_text()
        newer = tmp_path / "newer.json"
        newer.write_text(json.dumps({**json.loads(old.read_text()), "schema": 3}))
        result = CliRunner().invoke(main, ["card", str(out), "--sweep", str(newer)])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {newer}: sweep schema 3 is not one this version reads (1, 2); "
                                     "upgrade mergekit-transplant")


HOSTILE = "evil</details><script>alert(1)</script>"


def test_untrusted_strings_are_escaped(tmp_path, work):
    """A model path, recipe comments, task and tensor names that try HTML or front-matter injection."""
    hostile_dir = tmp_path / HOSTILE  # a nested path: evil< / details><script>alert(1)< / script>
    hostile_dir.parent.mkdir(parents=True)
    os.symlink(work / "models" / "donor", hostile_dir)
    recipe_text = (
        "# ---\n# base_model: attacker/model\n# ---\n# ```\n# </details><script>alert(2)</script>\n"
        + RECIPE.replace("models/donor", HOSTILE).replace("models/target", str(work / "models" / "target"))
    )
    (tmp_path / "recipe.yml").write_text(recipe_text)
    from mergekit_transplant.recipe import load_recipe

    out = tmp_path / "out"
    out.mkdir()
    report = json.loads(_report(tmp_path).read_text())
    report["settings"]["workload"]["path"] = "w</td><img src=x onerror=alert(3)>.jsonl"
    report["candidates"][0]["tensor"] = "x|y</code><script>alert(4)</script>"
    report["ranking"]["local"][0] = report["candidates"][0]["tensor"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        write_card(out, recipe=load_recipe(tmp_path / "recipe.yml"), report=report,
                   eval_results={"tasks": {"t|x</td><script>alert(5)</script>\n---\nfoo: 1": {
                       "metric": "<b>acc</b>", "target": 0.1, "donor": 0.1, "merged": 0.2, "tir": None,
                       "tir_reason": "<i>"}}},
                   name="# <script>alert(6)</script> [link](javascript:alert(7))")
    finally:
        os.chdir(cwd)
    raw = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert set(meta) == {"library_name", "tags", "model-index"}  # no injected front matter
    # the hostile task name is one string value of the model-index, nothing more
    assert meta["model-index"][0]["results"][0]["dataset"]["name"].startswith("t|x</td><script>")
    assert validate_card(out / "README.md") == []
    html_out = _html(card.text)
    assert "<script" not in html_out and "<img" not in html_out and "javascript:" not in html_out.replace(
        "javascript:alert(7)", "")  # the link text survives as text, never as an href
    assert 'href="javascript' not in html_out
    assert "</details>" not in _outside_code(raw)
    assert "<b>" not in html_out and "<i>" not in html_out
    # the recipe is one code block, verbatim, whatever fences and tags its comments hold
    blocks = re.findall(r'<pre><code class="language-yaml">(.*?)</code></pre>', html_out, flags=re.S)
    import html as html_lib

    assert [html_lib.unescape(b) for b in blocks] == [recipe_text]
    # table rows keep their columns although names contain '|'
    row = next(r for r in re.findall(r"<tr>.*?</tr>", html_out, flags=re.S) if "alert(5)" in r)
    assert row.count("<td") == 7


def test_bad_inputs_are_clear_errors(merged, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TransplantError, match="malformed JSON"):
        write_card(merged, report=bad)
    not_png = tmp_path / "x.png"
    not_png.write_text("hello")
    with pytest.raises(TransplantError, match="not a PNG"):
        write_card(merged, heatmap=not_png)
    result = CliRunner().invoke(main, ["card", str(merged), "--hub-id", "models/target=not a repo!"])
    assert result.exit_code == 2 and "not a valid Hub id" in result.output
