"""``export --stock``: the same merge in plain mergekit, checked by running plain mergekit."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mergekit_transplant.cli import main
from mergekit_transplant.flows import run_transplant
from mergekit_transplant.testing import load_state, make_model, perturbed_copy

BIN = Path(sys.executable).parent
A = "model.layers.1.mlp.down_proj.weight"  # strength 1 from donor 1
B = "model.layers.0.self_attn.q_proj.weight"  # 0.3 from donor 1, 0.2 from donor 2
C = "model.layers.1.self_attn.o_proj.weight"  # 0.5 from donor 2
#: documented tolerance between the endpoints (docs/recipes.md): float32 ulps of the larger input
BLEND_ULPS = 2


def two_donor_recipe(target, d1, d2, *, extra="") -> str:
    return f"""merge_method: transplant
base_model: {target}
{extra}models:
  - model: {d1}
    parameters:
      strength:
        - filter: {A}
          value: 1.0
        - filter: {B}
          value: 0.3
        - value: 0
  - model: {d2}
    parameters:
      strength:
        - filter: {C}
          value: 0.5
        - filter: {B}
          value: 0.2
        - value: 0
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    target = make_model(root / "target", "llama", seed=0)
    d1 = perturbed_copy(target, root / "d1", [A, B], seed=1)
    d2 = perturbed_copy(target, root / "d2", [B, C], seed=2)
    return root, target, d1, d2


def test_stock_export_runs_in_plain_mergekit_bit_identical_at_0_and_1(models, tmp_path):
    root, target, d1, d2 = models
    recipe = tmp_path / "transplant.yml"
    recipe.write_text(two_donor_recipe(target, d1, d2))
    result = CliRunner().invoke(main, ["export", str(recipe), "--stock", "-o", str(tmp_path / "stock.yml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "stock.yml").read_text()
    for lost in ("read planning", "pre-flight check", "model card"):
        assert lost in "".join(line for line in text.splitlines(True) if line.startswith("#"))  # the header
    assert yaml.safe_load(text)["merge_method"] == "linear"

    run_transplant(recipe, tmp_path / "plugin")
    env = {**os.environ, "MERGEKIT_TRANSPLANT_DISABLE": "1"}
    proc = subprocess.run([str(BIN / "mergekit-yaml"), str(tmp_path / "stock.yml"), str(tmp_path / "stock")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plugin, stock = load_state(tmp_path / "plugin"), load_state(tmp_path / "stock")
    assert plugin.keys() == stock.keys()
    t, s1, s2 = load_state(target), load_state(d1), load_state(d2)
    for name in plugin:
        if name in (B, C):  # strictly between 0 and 1: the documented tolerance
            scale = torch.maximum(torch.maximum(t[name].abs(), s1[name].abs()), s2[name].abs())
            ulp = torch.finfo(torch.float32).eps * scale
            assert ((plugin[name] - stock[name]).abs() <= BLEND_ULPS * ulp).all(), name
            assert not torch.equal(stock[name], t[name])
        else:  # strength 0 (the target's tensor) or 1 (donor 1's): the same bits
            assert torch.equal(plugin[name].view(torch.int32), stock[name].view(torch.int32)), name
    assert torch.equal(stock[A], s1[A]) and torch.equal(stock["model.norm.weight"], t["model.norm.weight"])


def test_stock_export_guards_tensors_a_shorter_filter_would_catch(models, tmp_path):
    root, target, d1, _d2 = models
    recipe = tmp_path / "r.yml"
    # "model.layers.1.mlp.down_proj.weight" at 1 must not leak into any longer name containing it
    recipe.write_text(f"""merge_method: transplant
base_model: {target}
models:
  - model: {d1}
    parameters:
      strength:
        - filter: model.layers.1.
          value: 1.0
        - value: 0
""")
    from mergekit_transplant.export import export_stock

    out = export_stock(recipe)
    weights = yaml.safe_load(out.text)["models"][0]["parameters"]["weight"]
    names = [w.get("filter") for w in weights]
    assert names == sorted(names[:-1], key=lambda n: (-len(n), n)) + [None]  # longest first, default last
    assert out.weighted_tensors == 9  # layer 1's 7 linear modules and 2 norms


@pytest.mark.parametrize("extra, strengths, message", [
    ("parameters:\n  allow_extrapolation: true\n", (0.7, 0.6), "sum to 1.3 > 1"),
    ("parameters:\n  allow_extrapolation: true\n", (1.5, 0.0), "outside [0, 1]"),
])
def test_stock_export_refuses_what_linear_cannot_express_naming_the_tensor(models, tmp_path, extra, strengths, message):
    root, target, d1, d2 = models
    text = two_donor_recipe(target, d1, d2, extra=extra)
    text = text.replace("value: 0.3", f"value: {strengths[0]}").replace("value: 0.2", f"value: {strengths[1]}")
    (tmp_path / "r.yml").write_text(text)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "r.yml"), "--stock", "-o", str(tmp_path / "s.yml")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: tensor " + B) and message in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "s.yml").exists()


def test_stock_export_refuses_slices_and_needs_the_format_flag(models, tmp_path):
    root, target, d1, _d2 = models
    (tmp_path / "r.yml").write_text(two_donor_recipe(target, d1, d1))
    result = CliRunner().invoke(main, ["export", str(tmp_path / "r.yml"), "-o", str(tmp_path / "s.yml")])
    assert result.exit_code == 2 and "--stock" in result.stderr
    (tmp_path / "sl.yml").write_text(f"""merge_method: transplant
base_model: {target}
slices:
  - sources:
      - model: {target}
        layer_range: [0, 2]
      - model: {d1}
        layer_range: [0, 2]
        parameters:
          strength: 1.0
""")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "sl.yml"), "--stock", "-o", str(tmp_path / "s.yml")])
    assert result.exit_code == 2 and "slices" in result.stderr and not (tmp_path / "s.yml").exists()


def test_export_options_are_generated_from_its_settings_dataclass():
    from mergekit_transplant.cli.export import ExportSettings, export

    fields = {f.name: f for f in dataclasses.fields(ExportSettings)}
    params = {p.name: p for p in export.params if p.name not in ("debug", "verbose", "quiet")}  # the group adds these
    assert params.keys() == fields.keys()
    for name, f in fields.items():
        if not f.metadata.get("argument"):
            assert params[name].help == f.metadata["help"]
