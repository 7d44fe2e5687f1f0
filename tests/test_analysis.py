"""``analyze`` finds the modules a donor changed and writes a recipe mergekit accepts.

Each test builds its own tiny models: a target with random weights and a
donor that equals it except in known tensors (``testing.perturbed_copy``),
which is the ground truth the scores must recover.
"""

from __future__ import annotations

import json

import pytest
import yaml

import torch  # noqa: E402 - a hard dependency: a missing torch must fail, not skip

from mergekit_transplant.analysis import DEFAULT_SCORE, analyze, load_workload, write_outputs  # noqa: E402
from mergekit_transplant.analysis.report import dumps  # noqa: E402
from mergekit_transplant.checkpoint import read_index  # noqa: E402
from mergekit_transplant.errors import TransplantError  # noqa: E402
from mergekit_transplant.preflight import run_check  # noqa: E402
from mergekit_transplant.recipe import parse_recipe  # noqa: E402
from mergekit_transplant.testing import make_model, perturbed_copy, workload_rows, write_jsonl  # noqa: E402

KNOWN = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.v_proj.weight"]


def _ground_truth_pair(root, changed, scale):
    """A 4-layer llama target, a donor with seeded noise in exactly ``changed``, a workload."""
    torch.set_num_threads(1)
    target = make_model(root / "target", "llama", layers=4)
    donor = perturbed_copy(target, root / "donor", changed, scale=scale)
    return target, donor, write_jsonl(root / "work.jsonl", workload_rows(12, seed=1, max_words=14))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _ground_truth_pair(tmp_path_factory.mktemp("pair"), KNOWN, scale=0.5)


def _run(pair, **kw):
    target, donor, work = pair
    kw.setdefault("progress", False)
    kw.setdefault("select", "top")  # these tests check the scores' rankings and the top-K selection
    return analyze(str(target), str(donor), load_workload(work), **kw)


def test_local_ranks_the_changed_modules_first(pair):
    result = _run(pair, score="local", top_k=len(KNOWN))
    assert sorted(result.ranking("local")[: len(KNOWN)]) == sorted(KNOWN)
    assert sorted(s.tensor for s in result.selections) == sorted(KNOWN)


@pytest.mark.parametrize("arch,tensors", [
    ("qwen2", ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.k_proj.weight"]),
    ("gemma2", ["model.layers.0.self_attn.o_proj.weight", "model.layers.1.mlp.gate_proj.weight"]),
    ("phi3", ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"]),
])
def test_local_is_exact_on_other_architectures(tmp_path, arch, tensors):
    torch.set_num_threads(1)
    target = make_model(tmp_path / "t", arch, layers=2)
    donor = perturbed_copy(target, tmp_path / "d", tensors)
    work = write_jsonl(tmp_path / "w.jsonl", workload_rows(4, seed=1, max_words=14))
    result = analyze(str(target), str(donor), load_workload(work), score="local", top_k=2, select="top", progress=False)
    assert sorted(result.ranking()[:2]) == sorted(tensors)
    scores = {c["tensor"]: c["scores"]["local"] for c in result.report["candidates"]}
    assert all((v > 0) == (t in tensors) for t, v in scores.items())


def test_activation_ranks_a_change_first_when_nothing_downstream_inherits_it(tmp_path):
    torch.set_num_threads(1)
    target = make_model(tmp_path / "t", "llama", layers=3)
    last = "model.layers.2.mlp.down_proj.weight"  # no candidate reads its output
    donor = perturbed_copy(target, tmp_path / "d", [last])
    work = write_jsonl(tmp_path / "w.jsonl", workload_rows(6, seed=1, max_words=14))
    result = analyze(str(target), str(donor), load_workload(work), score="activation", top_k=1, select="top", progress=False)
    assert result.ranking("activation")[0] == last
    assert sum(c["scores"]["activation"] > 0 for c in result.report["candidates"]) == 1


def test_activation_also_flags_modules_downstream_of_a_change(pair):
    """Why ``local`` is the default: o_proj reads the changed v_proj's output, so its
    activation moves although its weights did not; its local score stays exactly 0."""
    result = _run(pair, score="activation", also=["local"], top_k=2)
    o_proj = next(c for c in result.report["candidates"] if c["module"] == "model.layers.2.self_attn.o_proj")
    assert o_proj["scores"]["activation"] > 0
    assert o_proj["scores"]["local"] == 0.0
    v_proj_rank = result.ranking("activation").index("model.layers.2.self_attn.v_proj.weight")
    assert result.ranking("activation").index(o_proj["tensor"]) < 6 and v_proj_rank < 6


#: two modules that write into the residual stream: later modules read them only through a norm
WRITERS = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.o_proj.weight"]


@pytest.fixture(scope="module")
def writers_pair(tmp_path_factory):
    return _ground_truth_pair(tmp_path_factory.mktemp("writers"), WRITERS, scale=1.0)


@pytest.mark.parametrize("score", ["local", "activation", "attribution"])
def test_every_score_ranks_changed_residual_writers_first_and_the_recipe_lists_exactly_them(writers_pair, score):
    """The donor equals the target except for a strong random change (noise as large as the
    weights) to two modules whose outputs the rest of the network sees only through a norm."""
    result = _run(writers_pair, score=score, top_k=len(WRITERS))
    assert sorted(result.ranking(score)[: len(WRITERS)]) == sorted(WRITERS)
    assert sorted(s.tensor for s in result.selections) == sorted(WRITERS)


def test_attribution_ranks_the_changed_modules_first_and_scores_the_rest_exactly_zero(pair):
    """Unlike ``activation``, a v_proj change does not leak into o_proj: attribution weighs
    each module's own change (donor - target weights, on the donor's inputs) by the gradient."""
    result = _run(pair, score="attribution", top_k=len(KNOWN))
    assert sorted(result.ranking("attribution")[: len(KNOWN)]) == sorted(KNOWN)
    for cand in result.report["candidates"]:
        changed = cand["tensor"] in KNOWN
        assert (cand["scores"]["attribution"] > 0) == changed, cand["tensor"]
        assert (cand["scores"]["attribution_signed"] != 0) == changed, cand["tensor"]
        # |sum| <= sum of |.| per position, per sample, hence for their means
        assert abs(cand["scores"]["attribution_signed"]) <= cand["scores"]["attribution"] * (1 + 1e-9)
    assert "target_pass_s" not in result.report["timing"]  # the donor's pass alone, target streamed
    assert result.report["timing"]["target_streamed_bytes"] > 0


def test_recipe_lists_exactly_the_changed_tensors_and_check_accepts_it(pair, tmp_path):
    target, donor, _ = pair
    result = _run(pair, top_k=2)
    path = tmp_path / "recipe.yml"
    write_outputs(result, recipe=path)
    recipe = parse_recipe(path.read_text(), path)
    assert sorted(f for _, f in recipe.filters()) == sorted(KNOWN)
    report = run_check(recipe)
    assert report.ok, report.errors
    assert sorted(r.tensor for r in report.rows) == sorted(KNOWN)
    assert {r.strength for r in report.rows} == {1.0}
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(load_workload(pair[2]).sha256 in line for line in header)
    assert any(f"score: {DEFAULT_SCORE}" in line for line in header)  # the default


def test_local_scores_untouched_modules_exactly_zero_and_never_selects_them(pair):
    result = _run(pair, score="local", top_k=10)
    by_tensor = {c["tensor"]: c for c in result.report["candidates"]}
    for tensor, cand in by_tensor.items():
        assert (cand["scores"]["local"] > 0) == (tensor in KNOWN), tensor
    assert sorted(s.tensor for s in result.selections) == sorted(KNOWN)
    assert any("score 0" in w for w in result.warnings)


def test_local_needs_only_the_target_pass(pair):
    result = _run(pair, score="local", top_k=2)
    assert "donor_pass_s" not in result.report["timing"]
    assert result.report["settings"]["scores_computed"] == ["local", "local_relative"]
    both = _run(pair, score="activation", top_k=2)
    assert both.report["settings"]["scores_computed"] == ["activation"]
    assert "donor_pass_s" in both.report["timing"]
    assert both.report["timing"].get("donor_streamed_bytes", 0) == 0
    # both models ran for attribution + local, so activation comes for free
    extra = _run(pair, score="attribution", also=["local"], top_k=2)
    assert extra.report["settings"]["scores_computed"] == [
        "activation", "local", "local_relative", "attribution", "attribution_signed"]


def test_param_budget_and_proportional_strength(pair):
    total = read_index(str(pair[0])).num_parameters
    # down_proj (8192) does not fit beside v_proj (2048) in 6000 parameters
    result = _run(pair, param_budget=6000 / total)
    assert [s.tensor for s in result.selections] == ["model.layers.2.self_attn.v_proj.weight"]
    with pytest.raises(TransplantError, match="smaller than the best-scoring unit"):
        _run(pair, param_budget=1000 / total)
    prop = _run(pair, top_k=2, strength=0.8, strength_mode="proportional")
    strengths = {s.tensor: s.strength for s in prop.selections}
    scores = {s.tensor: s.score for s in prop.selections}
    best = max(scores, key=scores.get)
    assert strengths[best] == pytest.approx(0.8)
    other = next(t for t in strengths if t != best)
    assert strengths[other] == pytest.approx(0.8 * scores[other] / scores[best], rel=1e-5)


def test_module_glob_restricts_candidates(pair):
    result = _run(pair, modules=["*mlp*"], top_k=1)
    assert all(".mlp." in c["module"] for c in result.report["candidates"])
    assert [s.tensor for s in result.selections] == ["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(TransplantError, match="no candidate modules matching"):
        _run(pair, modules=["*nothing*"])


def test_layer_granularity_selects_whole_layers_with_dotted_filters(pair, tmp_path):
    result = _run(pair, granularity="layer", top_k=2)
    assert sorted(s.tensor for s in result.selections) == ["model.layers.1.", "model.layers.2."]
    layers = {u["prefix"]: u for u in result.report["layers"]}
    # the two changed layers lead the ranking, in the order of their own layer scores
    score = result.report["settings"]["score"]
    assert sorted(result.ranking()[:2]) == ["model.layers.1.", "model.layers.2."]
    assert result.ranking() == sorted(layers, key=lambda p: -layers[p]["scores"][score])
    index = read_index(str(pair[0]))
    assert layers["model.layers.1."]["parameters"] == sum(
        t.numel for n, t in index.tensors.items() if n.startswith("model.layers.1."))
    path = tmp_path / "layers.yml"
    write_outputs(result, recipe=path)
    check = run_check(parse_recipe(path.read_text(), path))
    assert check.ok, check.errors
    moved = {r.tensor for r in check.rows}
    assert "model.layers.1.input_layernorm.weight" in moved  # a layer block carries its norms
    assert not any(t.startswith(("model.layers.0.", "model.layers.3.")) for t in moved)


def test_determinism_byte_identical_recipe_and_report_except_timing(pair, tmp_path):
    a = _run(pair, score="activation", also=["attribution"], top_k=2, batch_size=4)
    b = _run(pair, score="activation", also=["attribution"], top_k=2, batch_size=4)
    assert a.recipe_text == b.recipe_text
    ra, rb = json.loads(dumps(a.report)), json.loads(dumps(b.report))
    assert ra.pop("timing") and rb.pop("timing")
    assert ra == rb
    write_outputs(a, recipe=tmp_path / "a.yml")
    write_outputs(b, recipe=tmp_path / "b.yml")
    assert (tmp_path / "a.yml").read_bytes() == (tmp_path / "b.yml").read_bytes()


def test_report_schema(pair):
    report = _run(pair, score="activation", also=["attribution", "local"], top_k=2).report
    settings = report["settings"]
    for key in ("target", "donor", "score", "capture", "workload"):
        assert key in settings
    assert set(settings["workload"]) >= {"path", "sha256", "n"}
    for role in ("target", "donor"):
        assert set(report["models"][role]) >= {"config_sha256", "tensor_index_sha256", "revision"}
    cand = next(c for c in report["candidates"] if c["tensor"] == KNOWN[0])
    assert cand["module"] == "model.layers.1.mlp.down_proj"
    assert cand["layer"] == 1 and cand["kind"] == "mlp.down_proj" and cand["parameters"] == 128 * 64
    assert set(cand["scores"]) == {"activation", "local", "local_relative", "attribution", "attribution_signed"}
    assert set(cand["per_sample"]["local"]) == {"mean", "std", "min", "median", "max", "top_k_fraction"}
    assert cand["per_sample"]["local"]["top_k_fraction"] == 1.0  # every sample agrees
    assert set(report["ranking"]) == {"activation", "local", "local_relative", "attribution", "attribution_signed"}
    assert len(report["ranking"]["local"]) == len(report["candidates"]) == 4 * 7
    assert [s["tensor"] for s in report["selection"]] == report["ranking"]["activation"][:2]
    assert set(report["selection"][0]) == {"tensor", "donor", "strength", "score"}
    assert report["timing"]["total_s"] > 0


def test_generate_capture_scores_generated_positions(pair):
    result = _run(pair, capture="generate", max_new_tokens=4, top_k=2, also=["activation"])
    gens = result.report["generations"]
    assert len(gens["target"]) == len(gens["donor"]) == 12
    assert sorted(s.tensor for s in result.selections) == sorted(KNOWN)
    assert "target_generate_s" in result.report["timing"]


def test_bias_follows_its_weight_in_the_recipe(tmp_path):
    torch.set_num_threads(1)
    target = make_model(tmp_path / "t", "qwen2", layers=2)
    donor = perturbed_copy(target, tmp_path / "d", ["model.layers.1.self_attn.q_proj.weight"])
    work = write_jsonl(tmp_path / "w.jsonl", workload_rows(4, seed=1, max_words=14))
    result = analyze(str(target), str(donor), load_workload(work), top_k=1, select="top", progress=False)
    assert [s.tensor for s in result.selections] == [
        "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.bias"]
    path = tmp_path / "r.yml"
    write_outputs(result, recipe=path)
    assert run_check(parse_recipe(path.read_text(), path)).ok


def test_embeddings_only_when_asked(tmp_path):
    torch.set_num_threads(1)
    target = make_model(tmp_path / "t", "llama", layers=1)
    donor = perturbed_copy(target, tmp_path / "d", ["model.embed_tokens.weight"])
    work = write_jsonl(tmp_path / "w.jsonl", workload_rows(4, seed=1, max_words=14))
    plain = analyze(str(target), str(donor), load_workload(work), top_k=1, score="activation", select="top", progress=False)
    names = {c["module"] for c in plain.report["candidates"]}
    assert "model.embed_tokens" not in names and "lm_head" not in names
    wide = analyze(str(target), str(donor), load_workload(work), top_k=1, include_embeddings=True,
                   score="attribution", also=["local"], select="top", progress=False)
    assert wide.ranking()[0] == "model.embed_tokens.weight"
    assert "lm_head.weight" in wide.ranking()
    assert wide.report["candidates"][0]["scores"]["local"] > 0
    assert wide.ranking("attribution")[0] == "model.embed_tokens.weight"
    assert [c["tensor"] for c in wide.report["candidates"] if c["scores"]["attribution"] > 0] == [
        "model.embed_tokens.weight"]


def test_refuses_different_architectures_and_same_models(pair, tmp_path):
    target, _, work = pair
    other = make_model(tmp_path / "q", "qwen2", layers=4)
    with pytest.raises(TransplantError, match="structurally identical"):
        analyze(str(target), str(other), load_workload(work), select="top", progress=False)
    with pytest.raises(TransplantError, match="no candidate has a non-zero score"):
        analyze(str(target), str(target), load_workload(work), select="top", progress=False)


def test_recipe_text_is_the_rendered_yaml(pair):
    result = _run(pair, top_k=2)
    doc = yaml.safe_load(result.recipe_text)
    assert doc["merge_method"] == "transplant" and doc["base_model"] == str(pair[0])
    strength = doc["models"][0]["parameters"]["strength"]
    assert strength[-1] == {"value": 0.0}


def test_overlong_samples_are_truncated_with_a_warning(pair):
    result = _run(pair, top_k=2, max_length=6)
    assert any("longer than 6 tokens" in w for w in result.warnings)
    assert result.report["warnings"] == result.warnings
    assert sorted(s.tensor for s in result.selections) == sorted(KNOWN)


def test_device_map_auto_gives_the_same_scores(pair):
    import accelerate  # noqa: F401 - in the test extra: missing means broken, not skipped
    plain = _run(pair, top_k=2, score="attribution", also=["local"])
    mapped = _run(pair, top_k=2, score="attribution", also=["local"], device_map="auto")
    for score in ("attribution", "local", "activation"):
        a = {c["tensor"]: c["scores"][score] for c in plain.report["candidates"]}
        b = {c["tensor"]: c["scores"][score] for c in mapped.report["candidates"]}
        assert a.keys() == b.keys()
        assert all(b[t] == pytest.approx(a[t], rel=1e-5, abs=1e-9) for t in a), score
