"""``mergekit-transplant sweep``: in-place transplant, controls, honest selection, outputs.

Models are built here: a target and a donor that differs from it in exactly
4 known tensors (the "ground truth"), so at K = 4, strength 1 the analysis
point must score exactly what the donor scores. Tasks are local JSONL +
YAML: two perplexity tasks over different documents (selection and held-out
report split) and a multiple-choice task.
"""

import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mergekit_transplant.cli import main
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.sweep.controls import random_units
from mergekit_transplant.sweep.result import SweepResult
from mergekit_transplant.testing import linear_weight_names, make_model, perturbed_copy, write_task

WORDS = "one two three four five six seven eight nine ten".split()


def write_tasks(root: Path) -> Path:
    for name, offset in (("sel_ppl", 0), ("test_ppl", 5)):
        write_task(root, name, [{"text": f"{WORDS[(i + offset) % 10]} plus {WORDS[(2 * i + offset) % 10]} is the answer"}
                                for i in range(12)])
    write_task(root, "mc", [{"q": f"{w} is a", "choices": ["cat", "dog", "bird"], "label": i % 3}
                            for i, w in enumerate(WORDS)],
               body='output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\n'
                    'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    return root


def write_report(path: Path, target: Path, donor: Path, order, score="local") -> Path:
    """An analysis report in the schema ``analyze --report`` writes."""
    cands = [
        {"tensor": t, "module": t[: -len(".weight")], "layer": int(t.split(".")[2]), "kind": t.split(".", 3)[3],
         "parameters": 0, "scores": {score: float(len(order) - i)}}
        for i, t in enumerate(order)
    ]
    report = {"settings": {"target": str(target), "donor": str(donor), "score": score},
              "candidates": cands, "ranking": {score: list(order)}, "selection": []}
    path.write_text(json.dumps(report))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    target = make_model(root / "target", seed=0)
    names = linear_weight_names(target)
    changed = [names[i] for i in (0, 5, 9, 12)]  # the ground truth, spread over both layers
    donor = perturbed_copy(target, root / "donor", changed, scale=2.0, seed=3)
    order = changed + [n for n in names if n not in changed]
    return {"root": root, "target": target, "donor": donor, "changed": changed, "names": names,
            "order": order, "tasks": write_tasks(root / "tasks"),
            "report": write_report(root / "report.json", target, donor, order)}


# --------------------------------------------------------------------------- in-place apply / restore


def _live(target, donor, dtype=None):
    from mergekit_transplant.loading import load_causal_lm
    from mergekit_transplant.inplace import DonorTensors, LiveTransplant

    model, _ = load_causal_lm(str(target), dtype=dtype, with_tokenizer=False)
    return model, LiveTransplant(model, DonorTensors(str(donor)))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_apply_sets_exact_blend_and_restore_is_bit_identical(tmp_path, dtype):
    from safetensors.torch import load_file

    target = make_model(tmp_path / "t", seed=1, dtype=dtype)
    names = linear_weight_names(target)
    donor = perturbed_copy(target, tmp_path / "d", names[:3], scale=1.0, seed=2)
    donor_state = load_file(donor / "model.safetensors")
    model, live = _live(target, donor)
    before = _snapshot(model)
    with live.applied({names[0]: 1.0, names[1]: 0.5, names[2]: 0.0}):
        state = model.state_dict()
        assert torch.equal(state[names[0]], donor_state[names[0]])  # s = 1 is the donor, bit for bit
        # the formula by hand, in fp32 and cast back -- not ``blend``, the code under test
        t32, d32 = before[names[1]].to(torch.float32), donor_state[names[1]].to(torch.float32)
        assert torch.equal(state[names[1]], torch.lerp(t32, d32, 0.5).to(before[names[1]].dtype))
        assert not torch.equal(state[names[1]], before[names[1]])
        assert torch.equal(state[names[2]], before[names[2]])  # s = 0 leaves the target
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(after[k].dtype == before[k].dtype for k in before)


def test_restore_happens_even_when_evaluation_fails(pair):
    model, live = _live(pair["target"], pair["donor"])
    before = _snapshot(model)
    with pytest.raises(RuntimeError):
        with live.applied({t: 1.0 for t in pair["changed"]}):
            raise RuntimeError("lm-eval crashed")
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_whole_model_on_tied_embeddings_restores_exactly(tmp_path):
    from mergekit_transplant.sweep.controls import whole_model_tensors

    target = make_model(tmp_path / "t", seed=4, tie=True)
    donor = perturbed_copy(target, tmp_path / "d", ["model.embed_tokens.weight"], scale=1.0, seed=5)
    model, live = _live(target, donor)
    before = _snapshot(model)
    whole = whole_model_tensors(live.tensors, live.donor.index.tensors)
    assert "model.embed_tokens.weight" in whole and "lm_head.weight" not in whole
    with live.applied({t: 0.5 for t in whole}):
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert not torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_unknown_or_mismatched_tensor_is_a_clear_error(pair):
    _, live = _live(pair["target"], pair["donor"])
    with pytest.raises(TransplantError, match="no tensor model.layers.9.mlp.down_proj.weight"):
        live.check(["model.layers.9.mlp.down_proj.weight"])


# --------------------------------------------------------------------------- controls


def test_random_control_is_reproducible_from_its_seed(pair):
    pool = pair["names"]
    shuffled = list(pool)
    random.Random(99).shuffle(shuffled)
    for seed in range(5):
        first = random_units(pool, 4, seed)
        assert random_units(pool, 4, seed) == first  # same seed, same modules
        assert random_units(shuffled, 4, seed) == first  # whatever order the report listed them in
        assert len(set(first)) == 4 and set(first) <= set(pool)
    assert len({tuple(random_units(pool, 4, s)) for s in range(5)}) > 1
    with pytest.raises(TransplantError, match="outside 1..14"):
        random_units(pool, 15, 0)


# --------------------------------------------------------------------------- the sweep end to end


@pytest.fixture(scope="module")
def swept(pair):
    root = pair["root"]
    out = {"recipe": root / "best.yml", "json": root / "sweep.json", "plot": root / "sweep.png"}
    files_before = {p for p in root.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, [
        "sweep", "--report", str(pair["report"]), "--k", "1,2,4", "--strength", "0.5,1.0",
        "--select-split", "sel_ppl", "--report-split", "test_ppl", "--include-path", str(pair["tasks"]),
        "--random-controls", "2", "--seed", "7", "--batch-size", "4",
        "--recipe-out", str(out["recipe"]), "-o", str(out["json"]), "--plot", str(out["plot"]),
    ])
    assert result.exit_code == 0, result.output
    new_files = {p for p in root.rglob("*") if p.is_file()} - files_before
    # every test below reads the written file back through its reader (the flat view: one row per point and split)
    return result, SweepResult.load(out["json"]).to_dict(), out, new_files


def test_sweep_writes_json_csv_plot_and_recipe_but_no_models(swept):
    _, data, out, new_files = swept
    csv = out["json"].with_suffix(".csv")
    assert {out["recipe"], out["json"], csv, out["plot"]} == new_files  # no model written per point
    assert out["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("k,strength,selection,seed,split,score")
    assert len(lines) == 1 + len(data["points"])


def test_sweep_json_is_the_result_and_reads_back_exactly(pair, swept):
    """sweep.json is ``SweepResult.to_json()``: read back, it is the same result, with every point's tensors
    and task scores and the ranking's pool, and writing it again gives the same file."""
    _, data, out, _ = swept
    written = json.loads(out["json"].read_text())
    assert written["schema"] == 2
    result = SweepResult.load(out["json"])
    assert result.to_json() == written
    assert SweepResult.from_json(json.dumps(result.to_json())) == result
    assert result.ranking.order == pair["order"] and result.ranking.pool == sorted(pair["names"])
    (point,) = result.of("analysis", 4, 1.0)
    assert point.tensors == pair["changed"] and set(point.task_scores) == {"sel_ppl", "test_ppl"}
    assert result.references["donor"].tensors == result.of("whole-model", strength=1.0)[0].tensors
    assert result.summary() == data["best"] == written["best"]


def _margins_are_blank(png: Path, width: int = 3) -> bool:
    """Nothing drawn in the outer ``width`` pixels: the plot's legend and labels are not cut off at an edge."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    w, h = image.size
    pixels = image.load()
    edge = [(x, y) for x in range(w) for y in (*range(width), *range(h - width, h))]
    edge += [(x, y) for y in range(h) for x in (*range(width), *range(w - width, w))]
    return all(pixels[xy] == (255, 255, 255) for xy in edge)


def test_plot_keeps_the_legend_inside_the_image(swept, pair, tmp_path):
    _, _, out, _ = swept
    assert _margins_are_blank(out["plot"])  # two strengths
    # one strength with every legend entry (whole-model, random band, best star): the narrowest figure
    plot = tmp_path / "one.png"
    result = CliRunner().invoke(main, [
        "sweep", "--report", str(pair["report"]), "--k", "1,2", "--strength", "1.0", "--tasks", "mc",
        "--include-path", str(pair["tasks"]), "--random-controls", "1", "--plot", str(plot),
    ])
    assert result.exit_code == 0, result.output
    assert _margins_are_blank(plot)


def test_sweep_points_schema_and_counts(swept):
    _, data, _, _ = swept
    rows = data["points"]
    for row in rows:
        assert set(row) >= {"k", "strength", "selection", "seed", "score", "split"}
        assert row["selection"] in ("analysis", "random", "whole-model")
        assert isinstance(row["k"], int) and isinstance(row["score"], float)
        assert row["split"] in ("sel_ppl", "test_ppl")
        assert (row["seed"] is None) == (row["selection"] != "random")
    per_split = [r for r in rows if r["split"] == "test_ppl"]
    # 3 K × 2 strengths × (1 analysis + 2 random) + 2 whole-model points
    assert len(per_split) == 3 * 2 * 3 + 2
    assert {r["seed"] for r in per_split if r["selection"] == "random"} == {7, 8}
    assert data["settings"]["select_split"] == "sel_ppl" and data["settings"]["report_split"] == "test_ppl"
    assert data["optimistic"] is False and data["settings"]["higher_is_better"] is False


def test_random_points_are_the_sets_their_seeds_draw(pair, swept):
    _, data, _, _ = swept
    for row in data["points"]:
        if row["selection"] == "random":
            assert row["units"] == random_units(pair["names"], row["k"], row["seed"])
        elif row["selection"] == "analysis":
            assert row["units"] == pair["order"][: row["k"]]


def test_ground_truth_point_equals_the_donor_and_whole_model(swept):
    _, data, _, _ = swept
    donor = data["references"]["donor"]["test_ppl"]
    target = data["references"]["target"]["test_ppl"]
    assert donor != target
    point = [r for r in data["points"]
             if r["selection"] == "analysis" and r["k"] == 4 and r["strength"] == 1.0 and r["split"] == "test_ppl"]
    whole = [r for r in data["points"]
             if r["selection"] == "whole-model" and r["strength"] == 1.0 and r["split"] == "test_ppl"]
    # the donor differs from the target only in the 4 top-ranked tensors: same weights, same score
    assert point[0]["score"] == donor == whole[0]["score"]


def test_best_is_chosen_on_the_selection_split_and_reported_held_out(swept):
    _, data, _, _ = swept
    analysis = [r for r in data["points"] if r["selection"] == "analysis"]
    select = {(r["k"], r["strength"]): r for r in analysis if r["split"] == "sel_ppl"}
    report = {(r["k"], r["strength"]): r for r in analysis if r["split"] == "test_ppl"}
    # lower perplexity is better; ties -> fewer parameters, then lower strength
    key = min(select, key=lambda ks: (select[ks]["score"], select[ks]["parameters"], ks[1], ks[0]))
    best = data["best"]
    assert (best["k"], best["strength"]) == key
    assert best["select_score"] == select[key]["score"]
    assert best["report_score"] == report[key]["score"]
    band = best["random_controls"]
    randoms = [r["score"] for r in data["points"] if r["selection"] == "random" and r["split"] == "test_ppl"
               and (r["k"], r["strength"]) == key]
    assert band["n"] == 2 and band["min"] == min(randoms) and band["max"] == max(randoms)
    t, d = best["target"], best["donor"]
    assert best["tir"] == pytest.approx(t / best["report_score"])  # lower is better: target / merged
    assert best["recovery"] == pytest.approx((best["report_score"] - t) / (d - t))


def test_best_recipe_is_a_valid_transplant_recipe(pair, swept):
    from mergekit_transplant.preflight import run_check
    from mergekit_transplant.recipe import load_recipe

    _, data, out, _ = swept
    recipe = load_recipe(out["recipe"])
    assert recipe.source.startswith("# Written by mergekit-transplant sweep")
    assert recipe.target == str(pair["target"]) and recipe.donors == [str(pair["donor"])]
    report = run_check(recipe)
    assert report.ok, report.errors
    assert sorted(r.tensor for r in report.rows) == sorted(data["best"]["units"])
    assert {r.strength for r in report.rows} == {data["best"]["strength"]}


def test_in_memory_point_scores_what_the_merged_model_on_disk_scores(pair, swept, tmp_path):
    """The sweep's number for the best point is the number `merge` + `eval` give for its recipe."""
    from mergekit_transplant.evaluation import EvalSettings, evaluate_models
    from mergekit_transplant.flows import run_transplant

    _, data, out, _ = swept
    merged = tmp_path / "merged"
    run_transplant(out["recipe"], merged, write_card=False)
    report = evaluate_models(
        str(pair["target"]), str(pair["donor"]), str(merged),
        EvalSettings(tasks=["test_ppl"], include_path=str(pair["tasks"]), batch_size=4, device="cpu",
                     cache_dir=str(tmp_path / "cache")),
    )
    row = report.data["tasks"]["test_ppl"]
    assert row["merged"] == pytest.approx(data["best"]["report_score"], rel=1e-5)
    assert row["target"] == pytest.approx(data["best"]["target"], rel=1e-5)
    assert row["donor"] == pytest.approx(data["best"]["donor"], rel=1e-5)


def test_table_on_stdout_and_no_optimism_warning_with_two_splits(swept):
    result, _, _, _ = swept
    assert "| K | strength | analysis (sel_ppl) | analysis (test_ppl) |" in result.stdout
    assert "Best (chosen on sel_ppl)" in result.stdout
    assert "optimistic" not in result.output


def test_single_split_warns_that_the_figure_is_optimistic(pair, tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", "--report", str(pair["report"]), "--k", "1,2", "--strength", "1.0", "--tasks", "mc",
        "--include-path", str(pair["tasks"]), "--random-controls", "1", "--no-whole-model",
        "--output", str(tmp_path / "s.json"),
    ])
    assert result.exit_code == 0, result.output
    assert "warning: selection and report split are the same task(s)" in result.stderr
    assert "optimistic" in result.stderr
    data = SweepResult.load(tmp_path / "s.json").to_dict()
    assert data["optimistic"] is True and data["best"]["optimistic"] is True
    assert not [r for r in data["points"] if r["selection"] == "whole-model"]


@pytest.mark.parametrize("args, message", [
    (["--k", "20"], "K=20 exceeds the 14 modules ranked"),
    (["--strength", "1.5"], "--strength values must be in (0, 1]"),
    (["--select-split", "sel_ppl"], "no tasks to report on: pass --tasks or --report-split"),
    (["--score", "activation"], "no ranking for score 'activation'"),
])
def test_bad_sweep_options_are_clear_errors(pair, args, message):
    base = ["sweep", "--report", str(pair["report"]), "--include-path", str(pair["tasks"])]
    if not any(a in args for a in ("--tasks", "--select-split")):
        base += ["--tasks", "mc"]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_sweep_runs_the_analysis_when_given_a_workload(pair, tmp_path):
    """--target/--donor/--workload: the bundled analysis ranks, then the sweep runs on its ranking."""
    workload = tmp_path / "prompts.jsonl"
    workload.write_text("".join(json.dumps({"text": f"{w} plus {w} is the answer"}) + "\n" for w in WORDS))
    result = CliRunner().invoke(main, [
        "sweep", "--target", str(pair["target"]), "--donor", str(pair["donor"]), "--workload", str(workload),
        "--k", "4", "--strength", "1.0", "--tasks", "test_ppl", "--include-path", str(pair["tasks"]),
        "--random-controls", "1", "--no-whole-model", "--output", str(tmp_path / "s.json"),
    ])
    assert result.exit_code == 0, result.output
    data = SweepResult.load(tmp_path / "s.json").to_dict()
    analysis = [r for r in data["points"] if r["selection"] == "analysis"]
    assert sorted(analysis[0]["units"]) == sorted(pair["changed"])  # the analysis finds the ground truth
    assert analysis[0]["score"] == data["references"]["donor"]["test_ppl"]


def test_layer_units_expand_to_every_tensor_under_the_prefix_and_form_the_pool(pair):
    """An analysis that ranked whole layers (``--granularity layer``) is swept layer by layer."""
    from mergekit_transplant.sweep.controls import expand_units
    from mergekit_transplant.sweep.ranking import ranking_from_dict

    report = {"settings": {"target": str(pair["target"]), "donor": str(pair["donor"]), "score": "local"},
              "candidates": [{"tensor": t, "parameters": 1} for t in pair["names"]],
              "ranking": {"local": ["model.layers.1.", "model.layers.0."]}}
    ranking = ranking_from_dict(report)
    assert ranking.pool == ["model.layers.0.", "model.layers.1."]  # controls draw layers too
    from safetensors import safe_open

    with safe_open(str(pair["target"] / "model.safetensors"), "pt") as fh:
        available = list(fh.keys())
    tensors = expand_units(ranking.order[:1], available)
    assert tensors == sorted(n for n in available if n.startswith("model.layers.1."))
    assert "model.layers.1.input_layernorm.weight" in tensors
    with pytest.raises(TransplantError, match="model.layers.7."):
        expand_units(["model.layers.7."], available)
