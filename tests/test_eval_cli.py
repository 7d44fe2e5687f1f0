"""``mergekit-transplant eval`` end to end: real lm-eval on tiny models and local tasks.

The models are built here (target, donor = target + noise in 4 tensors,
merged = a real mergekit merge of 2 of them); the tasks are JSONL + YAML in a
temporary folder: a ``generate_until`` task, two ``multiple_choice`` tasks and
a ``loglikelihood_rolling`` task whose perplexity is lower-is-better.
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_transplant.cli import main
from mergekit_transplant.recipe import Selection, render_recipe
from mergekit_transplant.testing import linear_weight_names, make_model, perturbed_copy, write_tiny_tasks

def merge(target: Path, donor: Path, tensors, strength: float, out: Path) -> Path:
    from mergekit_transplant.flows import run_transplant

    recipe = out.parent / f"{out.name}.yml"
    recipe.write_text(render_recipe(str(target), [Selection(t, str(donor), strength) for t in tensors]))
    run_transplant(recipe, out, write_card=False)
    return out


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    target = make_model(root / "target", seed=0)
    changed = linear_weight_names(target)[:4]
    donor = perturbed_copy(target, root / "donor", changed, scale=2.0, seed=3)
    merged = merge(target, donor, changed[:2], 1.0, root / "merged")
    return {"root": root, "target": target, "donor": donor, "merged": merged, "changed": changed,
            "tasks": write_tiny_tasks(root / "tasks")}


def run_eval(trio, cache_dir, *extra, tasks="tiny_gen,tiny_mc,tiny_ppl", merged=None):
    args = [
        "eval", "--target", str(trio["target"]), "--donor", str(trio["donor"]),
        "--merged", str(merged or trio["merged"]), "--tasks", tasks, "--include-path", str(trio["tasks"]),
        "--batch-size", "4", "--cache-dir", str(cache_dir), *extra,
    ]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def first_run(trio):
    out = trio["root"] / "results.json"
    result = run_eval(trio, trio["root"] / "cache", "--retain-tasks", "tiny_retain", "--output", str(out))
    assert result.exit_code == 0, result.output
    return result, json.loads(out.read_text())


def test_results_json_has_every_task_with_scores_and_stderr(first_run):
    _, data = first_run
    assert list(data["tasks"]) == ["tiny_gen", "tiny_mc", "tiny_ppl"]
    assert data["tasks"]["tiny_gen"]["metric"] == "exact_match"
    assert data["tasks"]["tiny_mc"]["metric"] == "acc"
    assert data["tasks"]["tiny_ppl"]["metric"] == "word_perplexity"
    for name, row in data["tasks"].items():
        for role in ("target", "donor", "merged"):
            assert isinstance(row[role], float), (name, role)
            assert role in row["stderr"]
        assert row["n"] == 12
    mc = data["tasks"]["tiny_mc"]
    assert all(0.0 <= mc[r] <= 1.0 for r in ("target", "donor", "merged"))
    assert mc["stderr"]["target"] > 0  # lm-eval's own stderr, carried through
    assert data["settings"]["include_path"] and data["settings"]["lm_eval_version"]


def test_tir_and_recovery_follow_the_metric_direction(first_run):
    _, data = first_run
    for row in data["tasks"].values():
        t, d, m = row["target"], row["donor"], row["merged"]
        if row["higher_is_better"]:
            expected_tir = m / t if t else None
        else:
            expected_tir = t / m if m else None
        if expected_tir is None:
            assert row["tir"] is None and row["tir_reason"]
        else:
            assert row["tir"] == pytest.approx(expected_tir) and row["tir_reason"] is None
        if d == t:
            assert row["recovery"] is None and "no gap" in row["recovery_reason"]
        else:
            assert row["recovery"] == pytest.approx((m - t) / (d - t))
    ppl = data["tasks"]["tiny_ppl"]
    assert ppl["higher_is_better"] is False
    # perplexity is continuous: the three models genuinely differ
    assert len({ppl["target"], ppl["donor"], ppl["merged"]}) == 3


def test_retain_task_reports_merged_minus_target_with_stderr(first_run):
    _, data = first_run
    row = data["retain"]["tiny_retain"]
    assert row["change"] == pytest.approx(row["merged"] - row["target"])
    assert row["stderr_method"] == "paired" and row["change_stderr"] is not None
    assert "tiny_retain" not in data["tasks"]


def test_markdown_table_on_stdout(first_run):
    result, data = first_run
    assert "| task | metric | target | donor | merged | TIR | Recovery |" in result.stdout
    for name in data["tasks"]:
        assert f"| {name} |" in result.stdout
    assert "Retain tasks" in result.stdout and "| tiny_retain |" in result.stdout


def test_rerun_reads_the_cache_and_rescoring_only_a_changed_model(trio, first_run, monkeypatch):
    import lm_eval

    calls = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = trio["root"] / "again.json"
    result = run_eval(trio, trio["root"] / "cache", "--retain-tasks", "tiny_retain", "--output", str(out))
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())
    assert calls == [] and again["cache"]["lm_eval_calls"] == 0
    assert again["tasks"] == first_run[1]["tasks"] and again["retain"] == first_run[1]["retain"]

    # a new merge (different strength) is re-scored; target and donor come from the cache
    remerged = merge(trio["target"], trio["donor"], trio["changed"][:2], 0.5, trio["root"] / "merged-half")
    out = trio["root"] / "half.json"
    result = run_eval(trio, trio["root"] / "cache", "--output", str(out), merged=remerged)
    assert result.exit_code == 0, result.output
    half = json.loads(out.read_text())
    assert len(calls) == 1 and half["cache"]["lm_eval_calls"] == 1
    assert half["tasks"]["tiny_ppl"]["target"] == first_run[1]["tasks"]["tiny_ppl"]["target"]
    assert half["tasks"]["tiny_ppl"]["merged"] != first_run[1]["tasks"]["tiny_ppl"]["merged"]


def test_editing_a_task_invalidates_only_that_task(trio, first_run, tmp_path, monkeypatch):
    import shutil

    import lm_eval

    tasks = shutil.copytree(trio["tasks"], tmp_path / "tasks")
    cache = tmp_path / "cache"
    local = dict(trio, tasks=tasks)
    assert run_eval(local, cache, tasks="tiny_mc,tiny_ppl").exit_code == 0
    yaml = tasks / "tiny_mc.yaml"
    yaml.write_text(yaml.read_text().replace('doc_to_text: "{{q}}"', 'doc_to_text: "{{q}} ?"'))
    seen = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate",
                        lambda *a, **k: seen.append([t.task_name for t in k["tasks"]]) or real(*a, **k))
    result = run_eval(local, cache, tasks="tiny_mc,tiny_ppl")
    assert result.exit_code == 0, result.output
    assert seen == [["tiny_mc"]] * 3  # each model re-scores only the edited task


def test_unknown_task_is_a_clear_error(trio, tmp_path):
    result = run_eval(trio, tmp_path / "cache", tasks="tiny_mc,no_such_task_xyz")
    assert result.exit_code == 2
    assert "error: unknown lm-eval task(s) no_such_task_xyz" in result.output


def test_unknown_metric_is_a_clear_error(trio, first_run):
    result = run_eval(trio, trio["root"] / "cache", "--metric", "bleu", tasks="tiny_mc")
    assert result.exit_code == 2
    assert "metric 'bleu' is not reported by task tiny_mc" in result.output


def test_eval_options_are_generated_from_its_settings_dataclass():
    """Every EvalSettings field but the prompt options is an option with the field's help; -o is results.json."""
    import dataclasses

    from mergekit_transplant.options import cli_fields, flags_of
    from mergekit_transplant.evaluation.compare import EvalSettings

    cmd = main.get_command(None, "eval")
    params = {p.name: p for p in cmd.params}
    fields = {f.name: f for f in cli_fields(EvalSettings)}
    assert set(fields) == {f.name for f in dataclasses.fields(EvalSettings)} - {"prompt"}
    for name, f in fields.items():
        assert params[name].help == f.metadata["help"], name
        assert list(params[name].opts) + list(params[name].secondary_opts) == [
            o for flag in flags_of(f) for o in flag.split("/")], name
    assert params["output"].opts == ["-o", "--output"]
    ctx = cmd.make_context("eval", ["--target", "t", "--donor", "d", "--merged", "m", "--tasks", "a,b", "--no-cache",
                                    "--batch-size", "auto", "--limit", "0.5"])
    from mergekit_transplant.options import settings_from

    settings = settings_from(EvalSettings, {k: v for k, v in ctx.params.items()
                                            if k not in ("target", "donor", "merged", "output")})
    assert (settings.tasks, settings.use_cache, settings.batch_size, settings.limit) == (["a", "b"], False, "auto", 0.5)


def test_results_are_versioned_and_files_without_a_schema_still_load(tmp_path):
    """results.json records its schema; one written before it did (no "schema") reads as schema 1."""
    from mergekit_transplant.errors import TransplantError
    from mergekit_transplant.evaluation.results import SCHEMA, EvalReport

    old = {"tasks": {"arith": {"metric": "acc", "target": 0.2, "donor": 0.6, "merged": 0.5, "tir": 2.5}},
           "settings": {"tasks": ["arith"]}}
    report = EvalReport.from_json(json.dumps(old), "old.json")
    assert report.schema == 1 and report.tasks["arith"]["merged"] == 0.5 and report.settings["tasks"] == ["arith"]
    report.write(tmp_path / "r.json")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written == {**old, "schema": SCHEMA}
    assert EvalReport.load(tmp_path / "r.json").data == old
    with pytest.raises(TransplantError, match="new.json: results schema 99"):
        EvalReport.from_json({**old, "schema": 99}, "new.json")
    with pytest.raises(TransplantError, match="pass it with --report"):
        EvalReport.from_json({"settings": {}, "ranking": {"x": []}}, "r.json")
