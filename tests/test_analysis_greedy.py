"""The signed ``gain`` score and ``--select greedy``: what they compute, what they find, when they stop.

``gain`` is checked against a reference computed by hand with autograd
(per sample, the weight gradient of log p(continuation) dotted with
W_donor - W_target), at batch 1 and 8 and with left and right padding.
Greedy is checked on a planted pair of modules that help only together
(an MLP path whose up-projection and down-projection the donor both
changed): first-order scores cannot see it, greedy must find it, and then
stop because nothing else helps.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from mergekit_transplant.analysis import analyze, load_workload  # noqa: E402
from mergekit_transplant.analysis.greedy import GreedyResult, SelectConfig  # noqa: E402
from mergekit_transplant.cli import main  # noqa: E402
from mergekit_transplant.errors import TransplantError  # noqa: E402
from mergekit_transplant.testing import (  # noqa: E402
    SAMPLE_WORDS, load_state, make_model, perturbed_copy, workload_rows, write_jsonl)

CHANGED = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.v_proj.weight",
           "model.layers.1.mlp.gate_proj.weight", "model.layers.0.self_attn.q_proj.weight"]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gain")
    target = make_model(root / "target", "llama", layers=2)
    donor = perturbed_copy(target, root / "donor", CHANGED, scale=0.3, seed=2)
    return target, donor, write_jsonl(root / "work.jsonl", workload_rows(11, seed=4, max_words=12))


def _reference_gain(target, donor, rows):
    """Per module: mean over samples of <d log p(continuation) / d W, W_donor - W_target>, by autograd."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    donor_state = load_state(donor)
    params = {n: p for n, p in model.named_parameters() if n.endswith("proj.weight")}
    totals = {n: 0.0 for n in params}
    for row in rows:
        prompt = tok(row["text"])["input_ids"]
        cont = tok(row["continuation"], add_special_tokens=False)["input_ids"] if "continuation" in row else []
        ids = prompt + cont
        first = len(prompt) if cont else 1  # no continuation: the text itself, every token after the first
        logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        value = sum(logp[pos - 1, ids[pos]] for pos in range(first, len(ids)))
        grads = torch.autograd.grad(value, list(params.values()))
        for (name, p), g in zip(params.items(), grads):
            totals[name] += float((g * (donor_state[name] - p.detach())).sum())
    return {n: v / len(rows) for n, v in totals.items()}


@pytest.mark.parametrize("batch_size,padding_side,backward", [
    (1, "right", {}), (8, "right", {}), (8, "left", {}),
    (8, "left", {"gradient_batch_size": 3}),  # forward + backward in micro-batches of 3 rows
    (8, "right", {"recompute": True}),  # whole batches, each decoder layer recomputed
])
def test_gain_matches_a_hand_computed_reference(noisy, batch_size, padding_side, backward):
    target, donor, work = noisy
    rows = [json.loads(line) for line in work.read_text().splitlines()]
    expected = _reference_gain(target, donor, rows)
    result = analyze(str(target), str(donor), load_workload(work), score="gain", top_k=2, batch_size=batch_size,
                     padding_side=padding_side, select="top", progress=False, **backward)
    if "gradient_batch_size" in backward:
        assert result.report["plan"]["gradient_batch_size"] == 3
        assert "micro-batches of 3 rows" in " ".join(result.report["plan"]["passes"])
    got = {c["tensor"]: c["scores"]["gain"] for c in result.report["candidates"]}
    assert set(got) == set(expected)  # every module's predicted gain is in the report
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        if name not in CHANGED:
            assert got[name] == 0.0  # a tensor the donor shares predicts exactly nothing
    assert any(got[n] < 0 for n in CHANGED)  # signed: some changes are predicted to hurt ...
    positive = sorted((n for n in CHANGED if got[n] > 0), key=lambda n: -got[n])
    assert result.report["selected"]["units"] == positive[:2]  # ... and those are never selected


def test_gain_never_selects_a_module_predicted_to_hurt(noisy):
    target, donor, work = noisy
    result = analyze(str(target), str(donor), load_workload(work), score="gain", top_k=4, select="top", progress=False)
    gains = {c["tensor"]: c["scores"]["gain"] for c in result.report["candidates"]}
    assert all(gains[u] > 0 for u in result.report["selected"]["units"])
    assert len(result.report["selected"]["units"]) == sum(g > 0 for g in gains.values()) < 4
    assert any("--top-k 4: only" in w and "positive score" in w for w in result.warnings)


def test_gain_refuses_when_every_change_is_predicted_to_hurt(noisy, tmp_path):
    target, _donor, work = noisy
    donor = perturbed_copy(target, tmp_path / "donor", CHANGED, scale=0.3, seed=4)  # all four predicted < 0
    with pytest.raises(TransplantError, match=r"no candidate has a positive score \(4 score below 0"):
        analyze(str(target), str(donor), load_workload(work), score="gain", select="top", progress=False)


# ------------------------------------------------------------------------------- the planted pair
UP, DOWN = "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"
DECOYS = ["model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight",
          "model.layers.1.self_attn.v_proj.weight"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Target and donor where ``DOWN`` and ``UP`` help only together.

    The target's MLP units J of layer 1 write nothing (``down[:, J] = 0``)
    and read almost nothing (``up[J] = 0.05 U``). The donor gives them a
    real input (``up[J] = U``) and a trained output (``down[:, J] = D``).
    Transplanting ``UP`` alone changes nothing (its units still write
    nothing: predicted and measured gain exactly 0); ``DOWN`` alone opens a
    faint path; both together recover the trained path. Three decoys are
    large random changes plus a small step along the target's own gradient:
    first-order scores like them, but measured they help less or hurt.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted")
    rnd = random.Random(3)
    rows = [{"text": " ".join(rnd.choice(SAMPLE_WORDS) for _ in range(rnd.randint(2, 8))),
             "continuation": " " + " ".join(rnd.choice(SAMPLE_WORDS) for _ in range(3))} for _ in range(16)]
    work = write_jsonl(root / "work.jsonl", rows)
    base = make_model(root / "base", "llama", layers=2)
    tok = AutoTokenizer.from_pretrained(base)
    state = load_file(base / "model.safetensors")
    J = slice(0, 32)
    gen = torch.Generator().manual_seed(5)
    U = torch.randn(state[UP][J].shape, generator=gen) * 0.3
    state[DOWN][:, J] = 0.0
    target_state = dict(state, **{UP: state[UP].clone()})
    target_state[UP][J] = 0.05 * U

    prompts = [tok(r["text"])["input_ids"] for r in rows]
    conts = [tok(r["continuation"], add_special_tokens=False)["input_ids"] for r in rows]
    width = max(len(p) + len(c) for p, c in zip(prompts, conts))
    ids = torch.tensor([p + c + [0] * (width - len(p) - len(c)) for p, c in zip(prompts, conts)])
    mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in zip(prompts, conts)])
    labels = torch.tensor([[-100] * len(p) + c + [-100] * (width - len(p) - len(c)) for p, c in zip(prompts, conts)])

    def loglik(model):
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        lab = labels[:, 1:]
        return (logp.gather(2, lab.clamp(min=0)[..., None])[..., 0] * (lab >= 0)).sum() / len(rows)

    donor_state = dict(target_state, **{UP: target_state[UP].clone()})
    donor_state[UP][J] = U
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.load_state_dict(donor_state, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    down = dict(model.named_parameters())[DOWN]
    down.requires_grad_(True)
    columns = torch.zeros_like(down)
    columns[:, J] = 1.0
    opt = torch.optim.Adam([down], lr=3e-2)
    for _ in range(60):  # train the path's output, and only it
        loss = -loglik(model)
        opt.zero_grad()
        loss.backward()
        down.grad *= columns
        opt.step()
    donor_state[DOWN] = down.detach().clone()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    plain.load_state_dict(target_state, strict=False)
    params = dict(plain.named_parameters())
    grads = torch.autograd.grad(loglik(plain), [params[n] for n in DECOYS])
    for name, g in zip(DECOYS, grads):
        noise = torch.randn(g.shape, generator=gen) * target_state[name].std() * 6.0
        donor_state[name] = target_state[name] + 0.2 * g / g.norm() * target_state[name].norm() + noise
    for name, st in (("target", target_state), ("donor", donor_state)):
        shutil.copytree(base, root / name)
        save_file({k: v.contiguous() for k, v in st.items()}, root / name / "model.safetensors",
                  metadata={"format": "pt"})
    return root / "target", root / "donor", work


def test_greedy_finds_a_pair_that_helps_only_together_where_first_order_scores_miss_it(planted):
    target, donor, work = planted
    tops = {score: analyze(str(target), str(donor), load_workload(work), score=score, top_k=2, select="top",
                           progress=False)
            for score in ("gain", "attribution", "local")}
    for score, top in tops.items():
        assert set(top.report["selected"]["units"]) != {UP, DOWN}, score
    gains = {c["tensor"]: c["scores"]["gain"] for c in tops["gain"].report["candidates"]}
    assert gains[UP] == 0.0 < gains[DOWN] < max(gains[d] for d in DECOYS)
    result = analyze(str(target), str(donor), load_workload(work), score="gain", select="greedy", top_k=2,
                     holdout_fraction=0.0, progress=False)
    assert result.report["selected"]["units"] == [DOWN, UP]
    greedy = result.report["greedy"]
    first, second = greedy["rounds"]
    assert second["gain"] > 5 * first["gain"] > 0  # the pair's worth shows only once both are in
    assert dict(map(tuple, first["runners_up"]))[UP] == 0.0  # alone, UP changes nothing at all
    assert greedy["stopped"] == "top_k"
    assert sorted(s.tensor for s in result.selections) == sorted([DOWN, UP])
    assert result.report["controls"]["kind"] == "measured" and result.report["controls"]["clearly_above"]
    assert not any("not clearly above" in w for w in result.warnings)
    assert GreedyResult.from_json(greedy).to_json() == greedy


def test_greedy_stops_when_nothing_else_helps_and_says_so(planted, tmp_path):
    target, donor, work = planted
    result = analyze(str(target), str(donor), load_workload(work), score="local", select="greedy", top_k=5,
                     holdout_fraction=0.0, progress=False)
    greedy = result.report["greedy"]
    assert greedy["stopped"] == "min_gain" and result.report["selected"]["units"] == [DOWN, UP]
    assert any(w.startswith("stopped after 2 units: no candidate raises") for w in result.warnings)
    best_third = greedy["rejected"][0][1]  # the round that stopped is recorded too
    assert best_third <= 0 and len(greedy["rejected"]) == 3  # every remaining candidate, best first
    # --min-gain is the bar every round must clear: just above the first round's gain, nothing is chosen
    first = greedy["rounds"][0]["gain"]
    with pytest.raises(TransplantError, match="nothing to transplant: stopped after 0 units"):
        analyze(str(target), str(donor), load_workload(work), score="local", select="greedy", top_k=5,
                holdout_fraction=0.0, min_gain=first + 0.01, progress=False)
    # a negative --min-gain accepts modules that hurt, up to K
    more = analyze(str(target), str(donor), load_workload(work), score="local", select="greedy", top_k=3,
                   holdout_fraction=0.0, min_gain=best_third - 1.0, progress=False)
    assert more.report["selected"]["units"][:2] == [DOWN, UP] and len(more.report["selected"]["units"]) == 3
    # nothing above --min-gain at all: an error, and the CLI writes nothing
    out = tmp_path / "r.yml"
    cli = CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), "--workload",
                                    str(work), "--select", "greedy", "--min-gain", "1000", "-o", str(out),
                                    "--report", str(tmp_path / "rep.json"), "--quiet"])
    assert cli.exit_code == 2 and "nothing to transplant" in cli.output and not out.exists()
    assert not (tmp_path / "rep.json").exists()


def test_greedy_holds_out_part_of_the_workload_and_reports_it(planted, tmp_path):
    target, donor, work = planted
    out, rep = tmp_path / "r.yml", tmp_path / "rep.json"
    cli = CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), "--workload",
                                    str(work), "--select", "greedy", "--top-k", "2", "-o", str(out),
                                    "--report", str(rep)])
    assert cli.exit_code == 0, cli.output
    assert "greedy: up to 2 rounds x 5 candidates on 12 samples" in cli.output  # the estimate, up front
    # the bar counts every evaluation of both rounds: 5 candidates, then the 4 left
    assert re.search(r"greedy( round \d)?: +\d+%\|.*\| \d/9 ", cli.output), cli.output
    data = json.loads(rep.read_text())
    g = data["greedy"]
    assert (g["samples"], g["held_out_samples"]) == (12, 4)  # --holdout-fraction 0.25 of 16
    assert all(r["held_out"] is not None for r in g["rounds"])
    assert data["settings"]["select"] == "greedy" and data["settings"]["holdout_fraction"] == 0.25
    assert "selected greedily by measured log-likelihood" in out.read_text()
    from mergekit_transplant.card.content import CardInputs, _section_chosen

    text = _section_chosen(CardInputs(recipe=None, analysis=data))
    assert "Measured gain" in text and f"{g['rounds'][0]['gain']:.4g}" in text
    again = analyze(str(target), str(donor), load_workload(work), top_k=2, select="greedy", progress=False)
    assert again.report["settings"]["select"] == "greedy"
    assert again.report["greedy"]["rounds"] == g["rounds"]  # seeded: the same split, the same rounds


def test_greedy_batches_the_workload_once_and_reuses_it_for_every_evaluation(planted, monkeypatch):
    """Cost: K x N passes over batches built once (selection part, held-out part), never rebuilt."""
    import mergekit_transplant.analysis.greedy as greedy_mod

    built = []
    real = greedy_mod.batches

    def counting(seqs, *args, **kwargs):
        built.append(len(seqs))
        return real(seqs, *args, **kwargs)

    monkeypatch.setattr(greedy_mod, "batches", counting)
    target, donor, work = planted
    result = analyze(str(target), str(donor), load_workload(work), score="local", select="greedy", top_k=2,
                     batch_size=4, progress=False)
    greedy = result.report["greedy"]
    assert greedy["evaluations"] == 9  # 5 candidates, then the 4 left
    assert built == [greedy["samples"], greedy["held_out_samples"]] == [12, 4]


def test_top_selection_warns_when_it_is_not_clearly_above_random_sets(noisy):
    target, donor, work = noisy
    result = analyze(str(target), str(donor), load_workload(work), score="local", top_k=1, controls=40,
                     select="top", progress=False)
    controls = result.report["controls"]
    assert controls["kind"] == "predicted" and len(controls["random"]) == 40
    # 40 random single modules from 14: some are the changed ones, most score 0
    assert controls["clearly_above"] == (controls["selected"] > max(c["value"] for c in controls["random"]))
    warned = [w for w in result.warnings if "not clearly above that of 40 random 1-unit sets" in w]
    assert len(warned) == (0 if controls["clearly_above"] else 1)


def test_greedy_warns_when_its_selection_is_not_clearly_above_random_sets(noisy, tmp_path):
    """Forced to take a module that hurts (a very low --min-gain), greedy's measured gain is below random
    sets that mostly change nothing: the report and a warning say so, and the CLI prints it."""
    target, _donor, work = noisy
    donor = perturbed_copy(target, tmp_path / "donor", CHANGED, scale=0.3, seed=4)  # every change hurts
    result = analyze(str(target), str(donor), load_workload(work), score="local", select="greedy", top_k=1,
                     min_gain=-1e9, holdout_fraction=0.0, controls=6, progress=False)
    controls = result.report["controls"]
    assert controls["kind"] == "measured" and len(controls["random"]) == 6
    assert controls["selected"] == pytest.approx(result.report["greedy"]["rounds"][0]["total"])
    assert controls["selected"] < 0 <= max(c["value"] for c in controls["random"])
    assert not controls["clearly_above"]
    warned = [w for w in result.warnings if "not clearly above 6 random 1-module sets" in w]
    assert len(warned) == 1 and "may not carry the donor's advantage" in warned[0]
    cli = CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), "--workload",
                                    str(work), "--select", "greedy", "--score", "local", "--top-k", "1",
                                    "--min-gain", "-1e9",
                                    "--holdout-fraction", "0", "--controls", "6", "-o", str(tmp_path / "r.yml"),
                                    "--quiet"])
    assert cli.exit_code == 0, cli.output
    assert "warning: the 1 greedily selected modules raise" in cli.output


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,message", [
    (["--prefilter", "0"], "--prefilter must be at least 1"),
    (["--min-gain", "nan"], "--min-gain must be a finite number"),
    (["--min-gain", "inf"], "--min-gain must be a finite number"),
    (["--holdout-fraction", "1"], "--holdout-fraction must be in [0, 1)"),
    (["--select", "greedy", "--workload", "{empty}"], "no prompts in it"),
    (["--select", "greedy", "--workload", "{short}"], "no continuation and no text of at least 2 tokens"),
    (["--select", "greedy", "--granularity", "layer"], "does not combine with --granularity layer"),
])
def test_bad_greedy_input_is_one_line_exit_2_and_nothing_written(noisy, tmp_path, args, message):
    target, donor, work = noisy
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    short = write_jsonl(tmp_path / "short.jsonl", [{"text": "cat"}, {"text": "dog"}])
    args = [a.format(empty=empty, short=short) for a in args]
    if "--workload" not in args:
        args += ["--workload", str(work)]
    out, rep = tmp_path / "r.yml", tmp_path / "rep.json"
    result = CliRunner().invoke(main, ["analyze", "--target", str(target), "--donor", str(donor), *args,
                                       "-o", str(out), "--report", str(rep), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists() and not rep.exists()


def test_select_options_are_generated_from_the_settings_dataclass():
    import dataclasses

    command = main.get_command(None, "analyze")
    params = {p.name: p for p in command.params}
    for f in dataclasses.fields(SelectConfig):
        assert f.name in params, f.name
        assert params[f.name].default == f.default and params[f.name].help == f.metadata["help"]
    assert SelectConfig().select is None  # resolved by analyze(): DEFAULT_SELECT for modules, top for layers
    with pytest.raises(TransplantError, match="--min-gain must be a finite number"):
        SelectConfig(min_gain=math.nan).validate()
