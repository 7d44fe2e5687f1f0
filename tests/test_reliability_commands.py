"""Bad inputs for analyze, eval, sweep, card, organ and publish: exit 2, a message naming the fault, nothing written.

Same contract as tests/test_reliability.py (check and merge), through click's
CliRunner. Cases that currently break the contract are ``xfail(strict=True)``
with the exact failure as the reason, so that fixing them turns the suite red
until the mark is removed (docs/reliability.md lists them as known gaps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mergekit_transplant.testing_cli import assert_clean_error, invoke, leftovers, recipe

# --------------------------------------------------------------------------- analyze


def _analyze(zoo, out: Path, *args, target=None, donor=None, workload=None):
    base = ["analyze", "--quiet", "--target", target or zoo["t"], "--donor", donor or zoo["d"], "-o", out / "recipe.yml"]
    if workload is not None:
        base += ["--workload", workload]
    return invoke(base + list(args))


ANALYZE_CASES = {
    # case: (kwargs for _analyze, extra args, needles)
    "missing-donor": (dict(donor="MISSING"), [], ["no such folder"]),
    "hub-id-offline": (dict(donor="nonexistent-org/no-such-model"), [], ["not available here"]),
    "architecture-mismatch": (dict(donor="qwen"), [], ["Qwen2ForCausalLM", "LlamaForCausalLM"]),
    "truncated-safetensors": (dict(donor="trunc"), [], ["truncated or corrupted"]),
    "corrupted-header": (dict(donor="corrupt"), [], ["not a valid safetensors file"]),
    "pickle-only-donor": (dict(donor="pick"), [], ["pickle", "--allow-pickle"]),
    "empty-workload": (dict(workload="empty.jsonl"), [], ["empty.jsonl", "no prompts"]),
    "blank-workload": (dict(workload="blank.jsonl"), [], ["blank.jsonl", "no prompts"]),
    "malformed-jsonl": (dict(workload="badline.jsonl"), [], ["badline.jsonl", "line 2", "not valid JSON"]),
    "jsonl-without-text": (dict(workload="notext.jsonl"), [], ["line 1", '"text"']),
    "jsonl-text-not-string": (dict(workload="nonstr.jsonl"), [], ["line 1", "not a string"]),
    "unknown-workload-format": (dict(workload="w.csv"), [], [".csv"]),
    "missing-workload": (dict(workload="MISSING"), [], ["no such file"]),
    "unknown-lm-eval-task": (dict(), ["--lm-eval-task", "no_such_task_xyz"], ["lm-eval task 'no_such_task_xyz' not found"]),
    "strength-nan": (dict(workload="work"), ["--strength", "nan"], ["--strength", "nan"]),
    "strength-negative": (dict(workload="work"), ["--strength", "-0.5"], ["--strength"]),
    "strength-above-1": (dict(workload="work"), ["--strength", "1.5"], ["--strength"]),
    "param-budget-above-1": (dict(workload="work"), ["--param-budget", "2"], ["--param-budget"]),
    "top-k-zero": (dict(workload="work"), ["--top-k", "0"], ["--top-k"]),
    "unknown-dtype": (dict(workload="work"), ["--dtype", "float99"], ["float99"]),
}


def _resolve(zoo, files, tmp_path, kwargs):
    out = {}
    for key, value in kwargs.items():
        if value == "MISSING":
            out[key] = tmp_path / "missing"
        elif key == "workload":
            out[key] = files[value]
        elif value in zoo:
            out[key] = zoo[value]
        elif value in files:
            out[key] = files[value]
        else:
            out[key] = value
    if "workload" not in out and "--lm-eval-task" not in kwargs:
        out.setdefault("workload", files["work"])
    return out


#: cases where lm-eval indexes its thousands of built-in task YAMLs looking for the name (tens of seconds)
SLOW_CASES = {"unknown-lm-eval-task", "unknown-task"}


def _cases(table):
    return [pytest.param(case, marks=pytest.mark.slow) if case in SLOW_CASES else case for case in table]


@pytest.mark.parametrize("case", _cases(ANALYZE_CASES))
def test_analyze_rejects_bad_input(zoo, files, tmp_path, case):
    kwargs, extra, needles = ANALYZE_CASES[case]
    resolved = _resolve(zoo, files, tmp_path, kwargs)
    if case == "unknown-lm-eval-task":
        resolved.pop("workload")
    (tmp_path / "recipe.yml").write_text("previous recipe\n")
    code, output = _analyze(zoo, tmp_path, *extra, **resolved)
    assert_clean_error(code, output, *needles)
    assert (tmp_path / "recipe.yml").read_text() == "previous recipe\n"
    assert leftovers(tmp_path) == []


def test_analyze_truncates_long_lines_with_a_warning(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, "--top-k", "2", workload=files["long.txt"])
    assert code == 0, output
    assert "warning: 1 of 2 workload samples were longer than 256 tokens" in output
    assert (tmp_path / "recipe.yml").exists()


def test_analyze_nonfinite_donor_is_refused(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, workload=files["work"], donor=zoo["nan"])
    assert_clean_error(code, output, "non-finite", "model.layers.0.mlp.down_proj")
    assert not (tmp_path / "recipe.yml").exists()


def test_analyze_nonfinite_donor_message_names_the_donor(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, workload=files["work"], donor=zoo["nan"])
    assert_clean_error(code, output, f"donor {zoo['nan']}")
    assert "--dtype" not in output


def test_analyze_refuses_vocab_mismatch(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, workload=files["work"], donor=zoo["vocab"])
    assert_clean_error(code, output, "vocab")


def test_analyze_says_when_shapes_differ(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, workload=files["work"], donor=zoo["wide"])
    # every MLP module differs in shape; the attention modules still match, so the analysis runs on them
    assert code == 0, output
    said = [line for line in output.splitlines() if line.startswith("warning:")]
    assert any("differ in shape between target and donor" in line for line in said), output
    assert "error:" not in output and (tmp_path / "recipe.yml").exists()


def test_analyze_plot_format_checked_up_front(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, "--plot", tmp_path / "heat.txt", workload=files["work"])
    assert_clean_error(code, output, "heat.txt")
    assert not (tmp_path / "recipe.yml").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_analyze_missing_gpu_named(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, "--device", "cuda", workload=files["work"])
    assert_clean_error(code, output, "cuda")


def test_analyze_allow_pickle_works(zoo, files, tmp_path):
    code, output = _analyze(zoo, tmp_path, "--allow-pickle", workload=files["work"], donor=files["pick"])
    assert code == 0, output


# --------------------------------------------------------------------------- merge on a machine without a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_merge_missing_gpu_named_before_anything_is_written(zoo, files, tmp_path):
    code, output = invoke(["merge", "--cuda", files["root"] / "r.yml", tmp_path / "out"])
    assert_clean_error(code, output, "no CUDA GPU")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- eval


def _eval(zoo, files, tmp_path, *extra, target=None, donor=None, merged=None, tasks="tiny_mc"):
    return invoke(["eval", "--target", target or zoo["t"], "--donor", donor or zoo["d"],
                   "--merged", merged or files["merged"], "--tasks", tasks, "--include-path", files["tasks"],
                   "--limit", "2", "--batch-size", "4", "--no-cache", "-o", tmp_path / "results.json", *extra])


EVAL_CASES = {
    "unknown-task": (dict(tasks="no_such_task_xyz"), ["unknown lm-eval task(s) no_such_task_xyz"]),
    "no-task": (dict(tasks=""), ["--tasks"]),
    "empty-task-dataset": (dict(tasks="tiny_empty"), ["tiny_empty"]),
    "missing-target": (dict(target="MISSING"), ["no such folder"]),
    "hub-id-offline": (dict(target="nonexistent-org/no-such-model"), ["not available here"]),
    "truncated-donor": (dict(donor="trunc"), ["truncated or corrupted"]),
    "pickle-only-donor": (dict(donor="pick"), ["pickle"]),
}


@pytest.mark.parametrize("case", _cases(EVAL_CASES))
def test_eval_rejects_bad_input(zoo, files, tmp_path, case):
    kwargs, needles = EVAL_CASES[case]
    kwargs = {k: (tmp_path / "missing" if v == "MISSING" else zoo.get(v, files.get(v, v))) for k, v in kwargs.items()}
    code, output = _eval(zoo, files, tmp_path, **kwargs)
    assert_clean_error(code, output, *needles)
    assert not (tmp_path / "results.json").exists() and leftovers(tmp_path) == []


def test_eval_malformed_task_yaml_is_named(zoo, files, tmp_path):
    tasks = shutil.copytree(files["tasks"], tmp_path / "tasks")
    (tasks / "tiny_bad.yaml").write_text("task: tiny_bad\ndataset_path: json\ndoc_to_text: [\n")
    code, output = invoke(["eval", "--target", zoo["t"], "--donor", zoo["d"], "--merged", files["merged"],
                           "--tasks", "tiny_mc,tiny_bad", "--include-path", tasks, "--no-cache"])
    assert_clean_error(code, output, "lm-eval task tiny_bad", "tiny_bad.yaml", "malformed", "line 4, column 1")
    assert "unknown" not in output


def test_eval_tokenizer_that_loses_the_answer_is_named(zoo, files, tmp_path):
    """An lm-eval assertion is a clear error naming the failed check, the model and (here) the cause.

    transformers 5 loads the test's word-level tokenizer.json through Qwen2Tokenizer (chosen by the
    config's model_type), which rebuilds a byte-level BPE from the vocabulary: every answer encodes to
    zero tokens and lm-eval asserts. Real Qwen2 tokenizers are byte-level BPE and are not affected.
    """
    q = zoo["qwen"]
    code, output = _eval(zoo, files, tmp_path, target=q, donor=q, merged=q)
    assert_clean_error(code, output, "lm-eval failed on target model", "len(continuation_enc) > 0",
                       "lm_eval/models/huggingface.py", "tokenizer encodes a task's answer to zero tokens")


def test_eval_unknown_include_path(zoo, files, tmp_path):
    code, output = invoke(["eval", "--target", zoo["t"], "--donor", zoo["d"], "--merged", files["merged"],
                           "--tasks", "tiny_mc", "--include-path", tmp_path / "nope"])
    assert code == 2 and "nope" in output and "Traceback" not in output


def test_eval_checks_every_model_before_scoring(zoo, files, tmp_path, monkeypatch):
    import lm_eval

    calls = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *a, **k: calls.append(a) or pytest.fail("scored"))
    unknown_type = tmp_path / "unknown-type"
    shutil.copytree(files["merged"], unknown_type)
    cfg = json.loads((unknown_type / "config.json").read_text())
    cfg["model_type"] = "no_such_model_type"
    (unknown_type / "config.json").write_text(json.dumps(cfg))
    for kwargs, needles in (
        (dict(merged=tmp_path / "missing"), ["--merged", "no such folder"]),
        (dict(merged=zoo["trunc"]), ["--merged", "truncated or corrupted"]),
        (dict(merged=unknown_type), ["--merged", "config.json", "no_such_model_type"]),
        (dict(tasks="tiny_mc,tiny_empty"), ["tiny_empty"]),
    ):
        code, output = _eval(zoo, files, tmp_path, **kwargs)
        assert_clean_error(code, output, *needles)
        assert "scoring" not in output and calls == []


def test_eval_pickle_message_matches_its_options(zoo, files, tmp_path):
    code, output = _eval(zoo, files, tmp_path, donor=files["pick"])
    assert_clean_error(code, output, "--donor", "pickle", "arbitrary code", "--allow-pickle")  # refused, and says how
    code, help_text = invoke(["eval", "--help"])
    assert code == 0 and "--allow-pickle" in help_text  # the option the message names exists
    assert not (tmp_path / "results.json").exists()


def test_eval_allow_pickle_scores_the_pickled_weights(zoo, files, tmp_path):
    pick = tmp_path / "pick"
    shutil.copytree(zoo["d"], pick, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(files["pick"] / "pytorch_model.bin", pick)
    # the same weights as safetensors (target) and as a pickle (donor): the same perplexity, to the bit
    code, output = _eval(zoo, files, tmp_path, "--allow-pickle", target=zoo["d"], donor=pick, tasks="tiny_ppl")
    assert code == 0, output
    row = json.loads((tmp_path / "results.json").read_text())["tasks"]["tiny_ppl"]
    assert row["donor"] == row["target"] and row["merged"] != row["target"]
    (pick / "tokenizer.json").unlink()
    (pick / "tokenizer_config.json").unlink()
    code, output = _eval(zoo, files, tmp_path, "--allow-pickle", donor=pick)
    assert_clean_error(code, output, "--donor", "no tokenizer files")


# --------------------------------------------------------------------------- sweep


def _sweep(files, tmp_path, report, *extra):
    return invoke(["sweep", "--report", report, "--tasks", "tiny_mc", "--include-path", files["tasks"],
                   "--limit", "2", "--random-controls", "1", "--no-whole-model", "--k", "1",
                   "--output", tmp_path / "sweep.json", *extra])


@pytest.mark.slow
def test_sweep_rejects_bad_reports_and_settings(zoo, files, analysis_report, tmp_path):
    bad = {"missing.json": None, "bad.json": "{not json", "list.json": "[]", "schema.json": '{"settings": 3}'}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        code, output = _sweep(files, tmp_path, tmp_path / name)
        assert_clean_error(code, output, name)
    for extra, needle in ((["--k", "0"], "--k"), (["--strength", "nan"], "--strength"),
                          (["--strength", "1.5"], "--strength"), (["--tasks", "no_such_task_xyz"], "no_such_task_xyz"),
                          (["--donor", tmp_path / "missing"], "no such folder")):
        code, output = _sweep(files, tmp_path, analysis_report, *extra)
        assert_clean_error(code, output, needle)
    assert not (tmp_path / "sweep.json").exists() and leftovers(tmp_path) == []


def test_sweep_refuses_architecture_mismatch(zoo, files, analysis_report, tmp_path, monkeypatch):
    _never_score(monkeypatch)
    code, output = _sweep(files, tmp_path, analysis_report, "--donor", zoo["qwen"])
    assert_clean_error(code, output, "Qwen2ForCausalLM", "LlamaForCausalLM")
    assert not (tmp_path / "sweep.json").exists()


def _never_score(monkeypatch):
    """Make any lm-eval call (a scored point) or model load fail the test: the refusal must come first."""
    import lm_eval

    import mergekit_transplant.loading

    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *a, **k: pytest.fail("a point was scored"))
    monkeypatch.setattr(mergekit_transplant.loading, "load_causal_lm", lambda *a, **k: pytest.fail("loaded"))


def test_sweep_allow_pickle_reads_the_pickled_donor(zoo, files, analysis_report, tmp_path):
    from mergekit_transplant.sweep.result import SweepResult

    code, output = _sweep(files, tmp_path, analysis_report, "--donor", files["pick"])
    assert_clean_error(code, output, "pickle", "--allow-pickle")
    scores = {}
    for name, donor in (("safetensors", zoo["d"]), ("pickle", files["pick"])):
        # perplexity: continuous, so any difference in the donor's weights shows
        code, output = _sweep(files, tmp_path, analysis_report, "--donor", donor, "--allow-pickle",
                              "--tasks", "tiny_ppl")
        assert code == 0, output
        data = SweepResult.load(tmp_path / "sweep.json").to_dict()
        scores[name] = (data["references"], [(p["selection"], p["score"]) for p in data["points"]])
    assert scores["pickle"] == scores["safetensors"]
    references = scores["pickle"][0]
    assert references["donor"] != references["target"]


def test_sweep_shape_mismatch_is_a_clean_error(zoo, files, analysis_report, tmp_path, monkeypatch):
    _never_score(monkeypatch)
    code, output = _sweep(files, tmp_path, analysis_report, "--donor", zoo["wide"])
    assert_clean_error(code, output, "shape mismatch", "[32, 64] in the target", "[32, 96] in the donor")
    assert not (tmp_path / "sweep.json").exists()


# --------------------------------------------------------------------------- card


def test_card_rejects_bad_inputs(files, tmp_path):
    out = tmp_path / "card"
    shutil.copytree(files["merged"], out)
    before = (out / "README.md").read_text()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "h.png").write_text("not a png")
    (tmp_path / "bad.yml").write_text("merge_method: transplant\nbase_model: [\n")
    for args, needle in (
        (["--report", tmp_path / "bad.json"], "malformed JSON"),
        (["--eval", tmp_path / "bad.json"], "malformed JSON"),
        (["--report", tmp_path / "list.json"], "expected a JSON object"),
        (["--heatmap", tmp_path / "h.png"], "not a PNG"),
        (["--hub-id", "foo"], "PATH=org/name"),
        (["--hub-id", f"{tmp_path}=not a valid id"], "not a valid Hub id"),
        (["--recipe", tmp_path / "bad.yml"], "malformed YAML"),
    ):
        code, output = invoke(["card", out, *args])
        assert_clean_error(code, output, needle)
        assert (out / "README.md").read_text() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = invoke(["card", empty])
    assert_clean_error(code, output, "mergekit_config.yml")
    assert list(empty.iterdir()) == [] and leftovers(out) == []


def test_card_eval_file_must_be_eval_results(files, analysis_report, tmp_path):
    out = tmp_path / "card"
    shutil.copytree(files["merged"], out)
    before = (out / "README.md").read_text()
    code, output = invoke(["card", out, "--eval", analysis_report])
    assert_clean_error(code, output, str(analysis_report), "no 'tasks' section", "pass it with --report")
    good = {"tasks": {"t": {"metric": "acc", "target": 0.2, "donor": 0.6, "merged": 0.5}}}
    (tmp_path / "results.json").write_text(json.dumps(good))
    code, output = invoke(["card", out, "--report", tmp_path / "results.json"])
    assert_clean_error(code, output, "results.json", "not the report.json", "pass it with --eval")
    for broken, needle in (({"tasks": {}}, "lists no task"),
                           ({"tasks": {"t": {"metric": "acc", "target": "0.2", "donor": 0.6, "merged": 0.5}}},
                            "tasks.t.target is a str"),
                           ({"tasks": {"t": {"metric": "acc", "target": 0.2, "donor": 0.6}}}, "no 'merged' score")):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        code, output = invoke(["card", out, "--eval", tmp_path / "bad.json"])
        assert_clean_error(code, output, "bad.json", needle)
    assert (out / "README.md").read_text() == before and leftovers(out) == []
    code, output = invoke(["card", out, "--eval", tmp_path / "results.json", "--report", analysis_report])
    assert code == 0, output


# --------------------------------------------------------------------------- organ


@pytest.fixture(scope="module")
def organ_dir(zoo, files):
    out = files["root"] / "organ"
    code, output = invoke(["organ", "extract", files["root"] / "r.yml", "-o", out])
    assert code == 0, output
    return out


def test_organ_extract_refuses_nonempty_output_and_bad_recipes(zoo, files, tmp_path):
    out = tmp_path / "organ"
    out.mkdir()
    (out / "keep").write_text("x")
    code, output = invoke(["organ", "extract", files["root"] / "r.yml", "-o", out])
    assert_clean_error(code, output, "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep"]
    for text, needle in ((recipe(zoo["t"], zoo["d"], [("model.layers.1", 1.0)]), "ambiguous"),
                         (recipe(zoo["t"], zoo["trunc"]), "truncated"),
                         ("merge_method: transplant\nbase_model: [\n", "malformed YAML")):
        (tmp_path / "r.yml").write_text(text)
        code, output = invoke(["organ", "extract", tmp_path / "r.yml", "-o", tmp_path / "o2"])
        assert_clean_error(code, output, needle)
        assert not (tmp_path / "o2").exists()
    (tmp_path / "p.yml").write_text(recipe(zoo["t"], files["pick"]))
    code, output = invoke(["organ", "extract", tmp_path / "p.yml", "-o", tmp_path / "o3"])
    assert_clean_error(code, output, "pickle")
    assert leftovers(tmp_path) == []


def _tampered(organ_dir: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / f"organ-{how}"
    shutil.copytree(organ_dir, bad)
    manifest = json.loads((bad / "organ.json").read_text())
    if how == "bytes":
        f = bad / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    elif how == "manifest-json":
        (bad / "organ.json").write_text("{not json")
    elif how == "traversal":
        manifest["donors"][0]["folder"] = "../../elsewhere"
        (bad / "organ.json").write_text(json.dumps(manifest))
    elif how == "extra-tensor":
        from safetensors.torch import load_file, save_file

        state = load_file(bad / "model.safetensors")
        state["model.layers.5.mlp.up_proj.weight"] = torch.zeros(64, 32)
        save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    elif how == "config":
        (bad / "config.json").write_text((bad / "config.json").read_text().replace("silu", "gelu"))
    elif how == "no-manifest":
        (bad / "organ.json").unlink()
    elif how == "recipe-python-tag":
        (bad / "recipe.yml").write_text('!!python/object/apply:os.system ["echo pwned"]\n')
    return bad


TAMPERING = {
    "bytes": "sha256 differs", "manifest-json": "malformed JSON", "traversal": "not allowed",
    "extra-tensor": "not listed in the manifest", "config": "config.json was modified",
    "no-manifest": "organ.json", "recipe-python-tag": "python/object/apply",
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampered_organ_is_refused_and_nothing_is_merged(zoo, organ_dir, tmp_path, how):
    bad = _tampered(organ_dir, tmp_path, how)
    if how != "recipe-python-tag":
        code, output = invoke(["organ", "verify", bad, "--target", zoo["t"]])
        assert_clean_error(code, output, TAMPERING[how])
    code, output = invoke(["organ", "apply", bad, tmp_path / "out", "--target", zoo["t"]])
    assert_clean_error(code, output, TAMPERING[how])
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "elsewhere").exists()


def test_organ_recipe_cannot_pull_in_an_unverified_donor(zoo, organ_dir, tmp_path):
    import yaml

    bad = tmp_path / "organ"
    shutil.copytree(organ_dir, bad)
    data = yaml.safe_load((bad / "recipe.yml").read_text())
    data["models"].append({"model": str(zoo["nan"]), "parameters": {"strength": [
        {"filter": "model.layers.2.mlp.down_proj.weight", "value": 1.0}, {"value": 0.0}]}})
    (bad / "recipe.yml").write_text(yaml.safe_dump(data))
    code, output = invoke(["organ", "apply", bad, tmp_path / "out", "--target", zoo["t"]])
    assert_clean_error(code, output, "not one of this organ's donor folders")
    assert not (tmp_path / "out").exists()


def test_organ_against_the_wrong_target(zoo, organ_dir, tmp_path):
    for target, needle in ((zoo["qwen"], "Qwen2ForCausalLM"), (zoo["wide"], "shape mismatch"),
                           (tmp_path / "missing", "no such folder")):
        code, output = invoke(["organ", "apply", organ_dir, tmp_path / "out", "--target", target])
        assert_clean_error(code, output, needle)
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- publish


def test_publish_refuses_unready_folders_before_any_network(files, tmp_path):
    cases = {}
    for name in ("pickle", "truncated", "no-card", "bad-card"):
        d = tmp_path / name
        shutil.copytree(files["merged"], d)
        cases[name] = d
    shutil.copy(files["pick"] / "pytorch_model.bin", cases["pickle"] / "pytorch_model.bin")
    f = cases["truncated"] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    (cases["no-card"] / "README.md").unlink()
    (cases["bad-card"] / "README.md").write_text("---\nbase_model: [\n---\n")
    needles = {"pickle": "pickle", "truncated": "truncated", "no-card": "no model card", "bad-card": "metadata"}
    for name, d in cases.items():
        code, output = invoke(["publish", d, "--repo-id", "org/name", "--dry-run"])
        assert_clean_error(code, output, needles[name])
    code, output = invoke(["publish", files["merged"], "--repo-id", "not a repo id", "--dry-run"])
    assert_clean_error(code, output, "not a valid Hub id")


def _no_sockets(monkeypatch, allow=("127.0.0.1",)):
    """Any connection to a host outside ``allow`` fails the test."""
    import socket

    real = socket.socket.connect

    def connect(self, address):
        if not (isinstance(address, tuple) and address[0] in allow):
            pytest.fail(f"network access to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def test_publish_offline_is_a_clean_error(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _no_sockets(monkeypatch, allow=())
    code, output = invoke(["publish", files["merged"], "--repo-id", "org/name", "--skip-load"])
    assert_clean_error(code, output, "Hub", "HF_HUB_OFFLINE", "passed every local check", "nothing was uploaded")
    # the local checks ran first: a broken folder says what is wrong with it, not that the Hub is offline
    broken = tmp_path / "broken"
    shutil.copytree(files["merged"], broken)
    (broken / "README.md").unlink()
    code, output = invoke(["publish", broken, "--repo-id", "org/name", "--skip-load"])
    assert_clean_error(code, output, "no model card")
    assert "HF_HUB_OFFLINE" not in output
    # --dry-run needs no network at all
    code, output = invoke(["publish", files["merged"], "--repo-id", "org/name", "--dry-run"])
    assert code == 0 and "dry run: nothing was uploaded" in output, output


def test_publish_without_network_is_a_clean_error(files, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    _no_sockets(monkeypatch)
    code, output = invoke(["publish", files["merged"], "--repo-id", "org/name", "--skip-load", "--token", "hf_x"])
    assert_clean_error(code, output, "Hugging Face Hub cannot be reached", "ConnectError", "nothing was uploaded")
