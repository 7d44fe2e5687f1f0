"""``mergekit-transplant unplug`` and ``unplug sweep`` from the command line.

Bad input exits 2 with one ``error:`` line and writes nothing; the options
are generated from the settings dataclasses (checked field by field); the
sweep chooses its keep ratio on the selection split and reports it on the
held-out split.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from mergekit_transplant.options import default_of, flags_of
from mergekit_transplant.testing import write_task
from mergekit_transplant.unplug.config import UnplugSettings, UnplugSweepSettings
from mergekit_transplant.testing_cli import assert_clean_error, invoke, leftovers


@pytest.fixture(scope="module")
def zoo(model_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("unplug-cli")
    z = {"root": root, "m": model_factory("unplug-llama", "llama")}
    z["w"] = root / "w.jsonl"
    z["w"].write_text("".join(json.dumps({"text": f"one plus {w}", "continuation": " equals three"}) + "\n"
                              for w in ("two", "three", "four")))
    z["empty"] = root / "empty.jsonl"
    z["empty"].write_text("\n")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=96, n_positions=64)).save_pretrained(gpt2)
    shutil.copy(z["m"] / "tokenizer.json", gpt2)
    z["gpt2"] = gpt2
    for name, change in (("olmo", {"architectures": ["OlmoForCausalLM"]}),
                         ("custom", {"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}})):
        folder = root / name
        shutil.copytree(z["m"], folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(change)
        (folder / "config.json").write_text(json.dumps(cfg))
        z[name] = folder
    pick = root / "pick"
    shutil.copytree(z["m"], pick)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(pick / "model.safetensors"), pick / "pytorch_model.bin")
    (pick / "model.safetensors").unlink()
    z["pick"] = pick
    return z


def run_unplug(zoo, out: Path, *extra, model=None, workload=None):
    args = ["unplug", "--model", model or zoo["m"], "--workload", workload or zoo["w"], "-o", out,
            "--report", out.parent / "copy.json"] + list(extra)
    if "--keep" not in extra:
        args += ["--keep", "0.5"]
    return invoke(args)


CASES = {
    "keep-zero": (dict(), ["--keep", "0"], ["--keep 0 is outside (0, 1]"]),
    "keep-above-one": (dict(), ["--keep", "1.5"], ["--keep 1.5 is outside (0, 1]"]),
    "keep-nan": (dict(), ["--keep", "nan"], ["outside (0, 1]"]),
    "keep-no-neuron": (dict(), ["--keep", "0.003"], ["= 0 neurons per layer", "0.0039"]),
    "not-gated": (dict(model="gpt2"), [], ["GPT2LMHeadModel", "not gated"]),
    "unknown-layout": (dict(model="olmo"), [], ["OlmoForCausalLM", "does not know"]),
    "empty-workload": (dict(workload="empty"), [], ["empty.jsonl", "no prompts"]),
    "pickle-without-flag": (dict(model="pick"), [], ["pickle", "--allow-pickle"]),
    "custom-code-without-flag": (dict(model="custom"), [], ["auto_map", "--trust-remote-code"]),
    "unknown-score": (dict(), ["--score", "magnitude"], ["magnitude"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(zoo, tmp_path, case):
    kwargs, extra, needles = CASES[case]
    kwargs = {k: zoo[v] for k, v in kwargs.items()}
    out = tmp_path / "expert"
    code, output = run_unplug(zoo, out, *extra, **kwargs)
    if case == "unknown-score":  # click's own usage error: exit 2, names the value
        assert code == 2 and "magnitude" in output
    else:
        assert_clean_error(code, output, *needles)
        assert len(output.strip().splitlines()) == 1, output
    assert not out.exists() and not (tmp_path / "copy.json").exists()
    assert leftovers(tmp_path) == []


def test_existing_output_is_kept_without_overwrite(zoo, tmp_path):
    out = tmp_path / "expert"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, output = run_unplug(zoo, out)
    assert_clean_error(code, output, "exists and is not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    code, output = run_unplug(zoo, out, "--overwrite", "--score", "random")
    assert code == 0, output
    assert (out / "unplug.json").is_file() and not (out / "mine.txt").exists()


def test_cli_writes_the_expert_and_the_report_copy(zoo, tmp_path):
    from mergekit_transplant.unplug import UnplugReport

    out = tmp_path / "expert"
    code, output = run_unplug(zoo, out, "--keep", "0.35", "--score", "wanda", "--seed", "3")
    assert code == 0, output
    assert "kept 45 of 128 MLP neurons in each of 2 layers" in output
    report = UnplugReport.load(tmp_path / "copy.json")
    assert report == UnplugReport.load(out)
    assert report.score == "wanda" and report.keep == 0.35
    assert report.workload["sha256"] == __import__("hashlib").sha256(zoo["w"].read_bytes()).hexdigest()
    assert report.base_fingerprint["model_sha256"]
    assert "--score wanda" in (out / "README.md").read_text()


@pytest.mark.parametrize("cls,command", [(UnplugSettings, ["unplug"]), (UnplugSweepSettings, ["unplug", "sweep"])])
def test_options_are_the_settings_fields(cls, command):
    """Every field is an option with the field's help text and default, and no option is anything else."""
    from mergekit_transplant.cli import main

    group = main.get_command(None, "unplug")
    cmd = group if command == ["unplug"] else group.commands["sweep"]
    params = {p.name: p for p in cmd.params if p.name not in ("debug", "verbose", "quiet")}  # the group adds these
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("help")}
    assert sorted(params) == sorted(fields)
    for name, f in fields.items():
        p = params[name]
        assert p.help == f.metadata["help"]
        assert list(p.opts) + list(p.secondary_opts) == flags_of(f)
        default = default_of(f)
        assert p.default == (",".join(map(str, default)) if isinstance(default, list) else default), name
    code, output = invoke(command + ["--help"])
    assert code == 0
    for f in fields.values():
        assert flags_of(f)[-1] in output


# --------------------------------------------------------------------------- the sweep


def _point(score, keep, select, report, params):
    from mergekit_transplant.unplug.sweep import UnplugPoint

    return UnplugPoint(score, keep, None, int(keep * 100), params, {},
                       {"sel": select, "test": report})


def test_sweep_chooses_on_the_selection_split_and_reports_the_held_out_one():
    from mergekit_transplant.unplug.sweep import UnplugSweepResult

    points = [
        _point("attribution", 0.2, 0.50, 0.95, 200),  # best on the held-out split: must NOT be chosen
        _point("attribution", 0.35, 0.90, 0.70, 350),  # best on the selection split
        _point("attribution", 0.5, 0.90, 0.60, 500),  # a tie on selection: the smaller model wins
        _point("activation", 0.35, 0.99, 0.99, 350),  # another score: not a candidate
    ]
    result = UnplugSweepResult(settings={"score": "attribution", "model": "m"},
                               splits={"select": ["sel"], "report": ["test"]},
                               labels={"select": "sel", "report": "test"}, metrics={"sel": "acc", "test": "acc"},
                               higher_is_better=True, full=_point("full", 1.0, 1.0, 1.0, 1000), points=points)
    best = result.summary()
    assert (best["keep"], best["select_score"], best["report_score"]) == (0.35, 0.90, 0.70)
    again = UnplugSweepResult.from_json(result.to_json())
    assert again.summary() == best


def test_sweep_end_to_end(zoo, tmp_path):
    """Real lm-eval on local tasks: every score at every keep, 3 random seeds, json and plot; the neurons are
    scored on an lm-eval task's documents (--lm-eval-task), as analyze reads them."""
    tasks = tmp_path / "tasks"
    words = "one two three four five six seven eight nine ten".split()
    for name, offset in (("u_sel", 0), ("u_test", 3), ("u_keep", 6)):
        write_task(tasks, name, [{"text": f"{words[(i + offset) % 10]} plus {words[(2 * i) % 10]} is the answer"}
                                 for i in range(6)])
    out, plot = tmp_path / "unplug-sweep.json", tmp_path / "sweep.png"
    code, output = invoke([
        "unplug", "sweep", "--model", zoo["m"], "--lm-eval-task", "u_sel", "--keep", "0.25,0.5",
        "--scores", "attribution,random", "--select-split", "u_sel", "--report-split", "u_test",
        "--retain-tasks", "u_keep", "--include-path", tasks, "--output", out, "--plot", plot, "--quiet",
    ])
    assert code == 0, output
    data = json.loads(out.read_text())
    assert data["schema"] == 1
    kinds = sorted((p["score"], p["keep"], p["seed"]) for p in data["points"])
    assert kinds == sorted([(s, k, seed) for k in (0.25, 0.5) for s, seed in
                            [("attribution", None), ("random", 0), ("random", 1), ("random", 2)]])
    assert data["labels"] == {"select": "u_sel", "report": "u_test", "retain": "u_keep"}
    assert all(set(p["split_scores"]) == {"u_sel", "u_test", "u_keep"} for p in data["points"])
    assert data["best"]["score"] == "attribution" and data["best"]["keep"] in (0.25, 0.5)
    assert data["settings"]["workload_info"]["path"] == "lm-eval:u_sel"
    assert data["settings"]["workload_info"]["n"] == 6
    band = [b for b in data["random_bands"] if b["keep"] == 0.25 and b["split"] == "u_test"][0]
    assert band["n"] == 3
    assert plot.stat().st_size > 10_000
    assert "Best keep for attribution (chosen on u_sel)" in output
