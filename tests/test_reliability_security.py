"""Hostile recipes, models, organs and names: nothing runs, nothing is written outside the output.

Every "nothing runs" test plants a payload that would create a marker file
and asserts the marker never appears; where a flag legitimately allows the
code to run (``--trust-remote-code``), a positive control shows that the
payload does work, so the refusal is what kept it out.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mergekit_transplant.testing_cli import DOWN0, assert_clean_error, invoke, leftovers, recipe, tree

# --------------------------------------------------------------------------- YAML


def yaml_payloads(marker: Path):
    return {
        "top-level-apply": f'!!python/object/apply:os.system ["touch {marker}"]\n',
        "nested-apply": f"merge_method: transplant\nbase_model: !!python/object/apply:os.system [\"touch {marker}\"]\n",
        "python-name": "merge_method: !!python/name:os.system\n",
        "object-new": f'merge_method: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
    }


@pytest.mark.parametrize("payload", ["top-level-apply", "nested-apply", "python-name", "object-new"])
def test_yaml_tags_are_refused_and_run_nothing(zoo, tmp_path, payload):
    marker = tmp_path / "pwned"
    (tmp_path / "r.yml").write_text(yaml_payloads(marker)[payload])
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(zoo["d"], out / "m")  # a folder for `card` to work on
    (out / "m" / "mergekit_config.yml").write_text(yaml_payloads(marker)[payload])
    for args in (["check", tmp_path / "r.yml"], ["merge", tmp_path / "r.yml", tmp_path / "o"],
                 ["organ", "extract", tmp_path / "r.yml", "-o", tmp_path / "organ"],
                 ["card", out / "m"]):
        code, output = invoke(args)
        assert_clean_error(code, output, "python/")
    assert not marker.exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "organ").exists()


# --------------------------------------------------------------------------- remote code


@pytest.fixture(scope="module")
def remote_model(zoo, tmp_path_factory):
    """A model whose config asks for custom code that creates a marker file when imported."""
    root = tmp_path_factory.mktemp("remote")
    model = root / "custom-model"
    shutil.copytree(zoo["t"], model)
    marker = root / "remote-code-ran"
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="evil_custom", architectures=["EvilForCausalLM"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                         "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (model / "config.json").write_text(json.dumps(cfg))
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil_custom'\n")
    (model / "configuration_evil.py").write_text(code)
    (model / "modeling_evil.py").write_text(code.replace("EvilConfig(LlamaConfig)", "EvilForCausalLM(object)"))
    return model, marker


def test_no_remote_code_unless_asked(zoo, remote_model, tmp_path):
    model, marker = remote_model
    (tmp_path / "w.jsonl").write_text('{"text": "the cat one two"}\n')
    self_recipe = tmp_path / "self.yml"
    self_recipe.write_text(recipe(model, model))
    for args in (
        ["check", self_recipe],
        ["merge", self_recipe, tmp_path / "out"],
        ["analyze", "--quiet", "--target", model, "--donor", model, "--workload", tmp_path / "w.jsonl",
         "-o", tmp_path / "r.yml"],
    ):
        code, output = invoke(args)
        assert_clean_error(code, output, "trust_remote_code")
        assert not marker.exists(), args[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.yml").exists()
    # positive control: the payload is real, and the flag is what lets it run
    code, output = invoke(["check", "--trust-remote-code", self_recipe])
    assert marker.exists(), output
    marker.unlink()


def test_eval_and_sweep_run_no_remote_code(zoo, remote_model, tmp_path):
    from mergekit_transplant.testing import write_tiny_tasks

    model, marker = remote_model
    tasks = write_tiny_tasks(tmp_path / "tasks")
    code, output = invoke(["eval", "--target", model, "--donor", zoo["d"], "--merged", zoo["d"], "--tasks", "tiny_mc",
                           "--include-path", tasks, "--limit", "2", "--no-cache"])
    assert_clean_error(code, output, "trust_remote_code")
    (tmp_path / "w.jsonl").write_text('{"text": "the cat one two"}\n')
    code, output = invoke(["analyze", "--quiet", "--target", zoo["t"], "--donor", zoo["d"], "--workload",
                           tmp_path / "w.jsonl", "-o", tmp_path / "r.yml", "--report", tmp_path / "report.json"])
    assert code == 0, output
    code, output = invoke(["sweep", "--report", tmp_path / "report.json", "--target", model, "--tasks", "tiny_mc",
                           "--include-path", tasks, "--limit", "2", "--random-controls", "1", "--no-whole-model",
                           "--k", "1"])
    assert_clean_error(code, output, "trust_remote_code")
    assert not marker.exists()


# --------------------------------------------------------------------------- pickle


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def pickles(zoo, tmp_path_factory):
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("pickles")
    honest, evil = root / "honest", root / "evil"
    for d in (honest, evil):
        d.mkdir()
        shutil.copy(zoo["d"] / "config.json", d / "config.json")
    torch.save(load_file(zoo["d"] / "model.safetensors"), honest / "pytorch_model.bin")
    marker = root / "pickle-ran"
    with open(evil / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.layers.0.mlp.down_proj.weight": _Payload(marker)}, fh)
    return honest, evil, marker


def test_pickle_refused_with_reason_by_every_command(zoo, pickles, tmp_path):
    honest, evil, marker = pickles
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], honest))
    (tmp_path / "w.jsonl").write_text('{"text": "the cat one two"}\n')
    for args in (
        ["check", tmp_path / "r.yml"],
        ["merge", tmp_path / "r.yml", tmp_path / "out"],
        ["organ", "extract", tmp_path / "r.yml", "-o", tmp_path / "organ"],
        ["analyze", "--quiet", "--target", zoo["t"], "--donor", honest, "--workload", tmp_path / "w.jsonl",
         "-o", tmp_path / "recipe.yml"],
    ):
        code, output = invoke(args)
        assert_clean_error(code, output, "pickle", "arbitrary code", "--allow-pickle")
    assert not (tmp_path / "out").exists() and not (tmp_path / "organ").exists()


def test_allow_pickle_merges_an_honest_pickle(zoo, pickles, tmp_path):
    from safetensors.torch import load_file

    honest, _, _ = pickles
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], honest))
    code, output = invoke(["check", "--allow-pickle", tmp_path / "r.yml"])
    assert code == 0 and DOWN0 in output, output
    code, output = invoke(["merge", "--allow-pickle", tmp_path / "r.yml", tmp_path / "out"])
    assert code == 0, output
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged[DOWN0].equal(load_file(zoo["d"] / "model.safetensors")[DOWN0])


def test_allow_pickle_still_runs_no_code(zoo, pickles, tmp_path):
    _, evil, marker = pickles
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], evil))
    for args in (["check", "--allow-pickle", tmp_path / "r.yml"],
                 ["merge", "--allow-pickle", tmp_path / "r.yml", tmp_path / "out"]):
        code, output = invoke(args)
        assert_clean_error(code, output, "cannot read this pickle checkpoint")
    assert not marker.exists() and not (tmp_path / "out").exists()


def _with_tokenizer(evil: Path, zoo_donor: Path, dest: Path) -> Path:
    """The hostile pickle beside a real tokenizer, so eval gets as far as loading the weights."""
    shutil.copytree(evil, dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (zoo_donor / name).exists():
            shutil.copy(zoo_donor / name, dest / name)
    return dest


@pytest.mark.parametrize("command", ["analyze", "sweep", "eval"])
def test_allow_pickle_runs_no_code_in_analyze_sweep_and_eval(zoo, pickles, files, analysis_report, tmp_path,
                                                             command):
    _, evil, marker = pickles
    evil = _with_tokenizer(evil, zoo["d"], tmp_path / "evil")
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "analyze": ["analyze", "--quiet", "--target", zoo["t"], "--donor", evil, "--workload", files["work"],
                    "-o", out / "recipe.yml", "--report", out / "report.json"],
        "sweep": ["sweep", "--report", analysis_report, "--donor", evil, "--tasks", "tiny_mc", "--include-path",
                  files["tasks"], "--limit", "2", "--random-controls", "1", "--no-whole-model", "--k", "1",
                  "--output", out / "sweep.json", "--recipe-out", out / "best.yml"],
        "eval": ["eval", "--target", zoo["t"], "--donor", evil, "--merged", files["merged"], "--tasks", "tiny_mc",
                 "--include-path", files["tasks"], "--limit", "2", "--batch-size", "4", "--no-cache",
                 "-o", out / "results.json"],
    }[command]
    code, output = invoke(args + ["--allow-pickle"])
    assert_clean_error(code, output, str(evil), "cannot read this pickle checkpoint")
    assert not marker.exists(), f"{command} --allow-pickle ran the pickle's code"
    assert list(out.iterdir()) == []
    # positive control: the payload is live, so the refusal is what kept it out
    with open(evil / "pytorch_model.bin", "rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberately unsafe, to prove the payload works
    assert marker.exists()
    marker.unlink()


# --------------------------------------------------------------------------- writes stay inside the output


def test_merge_writes_only_its_output_folder(zoo, tmp_path):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    watched = [tmp_path, zoo["t"], zoo["d"]]
    before = {str(p): tree(p) for p in watched}
    code, output = invoke(["merge", tmp_path / "r.yml", tmp_path / "out"])
    assert code == 0, output
    after = {str(p): tree(p) for p in watched}
    new = {k for k in after[str(tmp_path)] if k not in before[str(tmp_path)]}
    assert new and all(k.startswith("out/") for k in new), new
    assert after[str(zoo["t"])] == before[str(zoo["t"])] and after[str(zoo["d"])] == before[str(zoo["d"])]


def test_hostile_recipe_writes_nothing_outside_out(zoo, tmp_path, monkeypatch):
    """A recipe written to escape: '..' paths, a symlinked donor, path-like and markup-laden names and comments.

    The merge must still write only ``OUT/``: the working folder, the folders
    beside it, both models and the temp folder are diffed before and after.
    """
    import tempfile

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "sneaky").symlink_to(zoo["d"], target_is_directory=True)
    donor = "../work/./sneaky"  # the donor, reached through '..' and a symlink
    target = f"{zoo['t']}/./"
    text = ("# ../../pwned\n# <img src=x onerror=alert(1)> `rm -rf ~` ---\n"
            + recipe(target, donor, [(DOWN0, 1.0), ("model.layers.1.mlp.up_proj.weight", 0.5)],
                     extra="dtype: float32\nout_dtype: float32\n"))
    (work / "r.yml").write_text(text)
    watched = [tmp_path, zoo["t"], zoo["d"]]
    before = {str(p): tree(p) for p in watched}
    temp_before = set(os.listdir(tempfile.gettempdir()))
    code, output = invoke(["merge", "r.yml", "OUT"])
    assert code == 0, output
    after = {str(p): tree(p) for p in watched}
    new = {k for k in after[str(tmp_path)] if k not in before[str(tmp_path)]}
    changed = {k for k in before[str(tmp_path)] if after[str(tmp_path)].get(k) != before[str(tmp_path)][k]}
    assert new and all(k.startswith("work/OUT/") for k in new), new
    assert changed == set(), changed
    assert after[str(zoo["t"])] == before[str(zoo["t"])] and after[str(zoo["d"])] == before[str(zoo["d"])]
    assert set(os.listdir(tempfile.gettempdir())) <= temp_before  # nothing left in the temp folder either


def test_symlinked_output_is_replaced_not_followed(zoo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "important.txt").write_text("not yours")
    (tmp_path / "out").symlink_to(elsewhere)
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    code, output = invoke(["merge", tmp_path / "r.yml", tmp_path / "out"])
    assert_clean_error(code, output, "not empty")
    code, output = invoke(["merge", "--overwrite", tmp_path / "r.yml", tmp_path / "out"])
    assert code == 0, output
    assert [p.name for p in elsewhere.iterdir()] == ["important.txt"]
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "model.safetensors").exists()


def test_organ_output_may_not_overlap_a_model(zoo, tmp_path):
    donor = tmp_path / "donor"
    shutil.copytree(zoo["d"], donor)
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], donor))
    before = tree(donor)
    for out in (donor, donor / "organ"):
        code, output = invoke(["organ", "extract", "--overwrite", tmp_path / "r.yml", "-o", out])
        assert_clean_error(code, output, "overlaps")
    assert tree(donor) == before


def test_manifest_names_never_become_paths(zoo, tmp_path):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    organ = tmp_path / "organ"
    code, output = invoke(["organ", "extract", tmp_path / "r.yml", "-o", organ])
    assert code == 0, output
    manifest = json.loads((organ / "organ.json").read_text())
    manifest["donors"][0]["tensors"][0]["name"] = "../../pwned"
    manifest["donors"][0]["ref"] = "../../pwned-ref"
    (organ / "organ.json").write_text(json.dumps(manifest))
    before = tree(tmp_path)
    for args in (["organ", "verify", organ], ["organ", "apply", organ, tmp_path / "out", "--target", zoo["t"]]):
        code, output = invoke(args)
        assert_clean_error(code, output, "../../pwned")
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- the model card


HOSTILE_TARGET = "<img src=x onerror=alert(1)> *bold* [x](javascript:alert(1))"
HOSTILE_DONOR = "evil\n---\nlicense: evil\n```"
HOSTILE_COMMENT = "# </code><script>alert('comment')</script>\n# ```\n# ---\n# [click](javascript:alert(2))\n"


def _outside_code(markdown: str) -> str:
    """The card with fenced blocks and code spans removed: what renders as markdown/HTML."""
    lines, out, fence = markdown.splitlines(), [], None
    for line in lines:
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and set(line.strip()) <= {fence[0]}:
                fence = None
            continue
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"(`+)(.+?)\1", "", text, flags=re.S)


def test_card_escapes_untrusted_names_and_comments(zoo, tmp_path):
    t, d = tmp_path / HOSTILE_TARGET, tmp_path / HOSTILE_DONOR
    shutil.copytree(zoo["t"], t)
    shutil.copytree(zoo["d"], d)
    body = yaml.safe_dump({"merge_method": "transplant", "base_model": str(t), "models": [
        {"model": str(d), "parameters": {"strength": [{"filter": DOWN0, "value": 1.0}, {"value": 0.0}]}}]})
    (tmp_path / "r.yml").write_text(HOSTILE_COMMENT + body)
    code, output = invoke(["merge", tmp_path / "r.yml", tmp_path / "out"])
    assert code == 0, output
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert "license" not in front and set(front) <= {"library_name", "tags", "base_model", "base_model_relation",
                                                     "license", "language", "pipeline_tag", "datasets"}
    rendered = _outside_code(card)
    for bad in ("<script", "<img", "onerror", "javascript:", "license: evil"):
        assert bad not in rendered, bad
    assert "alert('comment')" in card  # the recipe is shown verbatim, inside a fence
