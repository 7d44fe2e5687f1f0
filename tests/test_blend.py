"""The blend and the strength checks, by hand: every branch, every endpoint, every message.

tests/test_method.py runs the method through real mergekit merges; this file
pins down the two functions those merges stand on, against references
computed here in float64 (never with ``blend`` itself), fast enough for
``make mutation`` to run against every mutant of mergekit_transplant/method.py.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mergekit_transplant import method
from mergekit_transplant.method import StrengthError, blend, check_strengths, transplant_group


def tensors(dtype=torch.float32, n=3):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 5, generator=g, dtype=torch.float64).to(dtype) for _ in range(n)]


def reference(target, donors):
    """target + Σ sᵢ·(dᵢ − target) in float64, then cast: the formula, not the implementation."""
    t = target.to(torch.float64)
    out = t.clone()
    for d, s in donors:
        out += s * (d.to(torch.float64) - t)
    return out


# --------------------------------------------------------------------------- blend


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_endpoints_return_the_inputs_themselves(dtype):
    t, d, e = tensors(dtype)
    assert blend(t, [(d, 0.0)]) is t
    assert blend(t, []) is t
    assert blend(t, [(d, 0.0), (e, 0.0)]) is t
    assert blend(t, [(d, 1.0)]) is d  # no round trip through fp32: the donor's bits, untouched
    assert blend(t, [(e, 0.0), (d, 1.0)]) is d  # a zero-strength donor does not count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_between_the_endpoints_is_fp32_lerp_cast_back(dtype):
    t, d, _ = tensors(dtype)
    out = blend(t, [(d, 0.3)])
    assert out.dtype == dtype
    expected = torch.lerp(t.to(torch.float32), d.to(torch.float32), 0.3).to(dtype)
    assert torch.equal(out, expected)
    assert not torch.equal(out, t) and not torch.equal(out, d)


def test_float64_is_blended_in_float64():
    t, d, _ = tensors(torch.float64)
    out = blend(t, [(d, 0.3)])
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.lerp(t, d, 0.3))
    # fp32 arithmetic would lose this: a difference far below fp32's resolution at 1.0
    tiny = torch.full((3,), 1.0, dtype=torch.float64)
    moved = blend(tiny, [(tiny + 1e-12, 0.5)])
    assert torch.all(moved > 1.0)


def test_several_donors_add_their_differences():
    t, d, e = tensors()
    out = blend(t, [(d, 0.25), (e, 0.5)])
    assert out.dtype == torch.float32
    assert torch.allclose(out.to(torch.float64), reference(t, [(d, 0.25), (e, 0.5)]), atol=1e-6)
    # strength 1 next to another active donor is not a copy of the first
    out = blend(t, [(d, 1.0), (e, 0.5)])
    assert torch.allclose(out.to(torch.float64), reference(t, [(d, 1.0), (e, 0.5)]), atol=1e-6)
    assert not torch.equal(out, d)
    # zero-strength donors between active ones are skipped, not applied
    out = blend(t, [(d, 0.25), (torch.full_like(t, 1e6), 0.0), (e, 0.5)])
    assert torch.allclose(out.to(torch.float64), reference(t, [(d, 0.25), (e, 0.5)]), atol=1e-6)


def test_several_donors_in_half_precision_are_summed_in_fp32():
    t, d, e = tensors(torch.bfloat16)
    out = blend(t, [(d, 0.25), (e, 0.5)])
    assert out.dtype == torch.bfloat16
    t32, d32, e32 = (x.to(torch.float32) for x in (t, d, e))
    assert torch.equal(out, (t32 + 0.25 * (d32 - t32) + 0.5 * (e32 - t32)).to(torch.bfloat16))


def test_blend_does_not_modify_its_inputs():
    t, d, e = tensors()
    before = [x.clone() for x in (t, d, e)]
    blend(t, [(d, 0.5)])
    blend(t, [(d, 0.5), (e, 0.25)])
    assert all(torch.equal(a, b) for a, b in zip((t, d, e), before))


def test_extrapolation_follows_the_formula():
    t, d, _ = tensors()
    for s in (-0.5, 1.5, 2.0):
        out = blend(t, [(d, s)])
        assert torch.allclose(out.to(torch.float64), reference(t, [(d, s)]), atol=1e-5), s


# --------------------------------------------------------------------------- strength checks


@pytest.mark.parametrize("strengths", [[], [("a", 0.0)], [("a", 1.0)], [("a", 0.5), ("b", 0.5)],
                                       [("a", 0.3), ("b", 0.7 + 5e-10)],
                                       [("a", 0.5), ("b", 0.5 + 1e-9)]])  # exactly at the 1e-9 tolerance
def test_valid_strengths_pass(strengths):
    check_strengths(strengths, "t")


HINT = " (set allow_extrapolation: true to permit it)"


@pytest.mark.parametrize("strengths, message", [
    ([("a", -0.01)], "t.w: strength -0.01 for donor a is outside [0, 1]" + HINT),
    ([("a", 1.01)], "t.w: strength 1.01 for donor a is outside [0, 1]" + HINT),
    ([("a", 0.6), ("b", 0.0), ("c", 0.5)], "t.w: strengths of donors a, c sum to 1.1 > 1" + HINT),
    ([("a", 0.5), ("b", 0.5 + 1e-6)], "t.w: strengths of donors a, b sum to 1 > 1" + HINT),
])
def test_out_of_range_strengths_name_tensor_and_donor(strengths, message):
    with pytest.raises(StrengthError) as info:
        check_strengths(strengths, "t.w")
    assert str(info.value) == message
    check_strengths(strengths, "t.w", allow_extrapolation=True)  # permitted when asked for


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_strength_is_refused_even_with_extrapolation(bad):
    for allow in (False, True):
        with pytest.raises(StrengthError) as info:
            check_strengths([("a", 0.5), ("b", bad)], "t.w", allow_extrapolation=allow)
        assert str(info.value) == f"t.w: strength {bad} for donor b is not finite"  # no extrapolation hint


def test_extrapolation_is_off_by_default():
    with pytest.raises(StrengthError):
        check_strengths([("a", 2.0)], "t")
    assert issubclass(StrengthError, ValueError)


# --------------------------------------------------------------------------- the method mergekit calls


def group(target, donors, name="model.layers.0.mlp.down_proj.weight"):
    entries = [SimpleNamespace(id=f"donor{i}", tensor=d) for i, d in enumerate(donors)]
    return SimpleNamespace(metadata=SimpleNamespace(name=name), base=SimpleNamespace(tensor=target),
                           non_base=entries)


def test_transplant_group_checks_then_blends_each_donor_at_its_own_strength():
    t, d, e = tensors()
    out = transplant_group(group(t, [d, e]), {"donor0": 0.25, "donor1": 0.5})
    assert torch.allclose(out.to(torch.float64), reference(t, [(d, 0.25), (e, 0.5)]), atol=1e-6)
    assert transplant_group(group(t, [d]), {"donor0": 1}) is d
    with pytest.raises(StrengthError, match=r"model.layers.0.mlp.down_proj.weight: strengths of donors "
                                            r"donor0, donor1 sum to 1.5"):
        transplant_group(group(t, [d, e]), {"donor0": 0.75, "donor1": 0.75})
    out = transplant_group(group(t, [d, e]), {"donor0": 0.75, "donor1": 0.75}, allow_extrapolation=True)
    assert torch.allclose(out.to(torch.float64), reference(t, [(d, 0.75), (e, 0.75)]), atol=1e-6)
    with pytest.raises(StrengthError, match="<tensor>: strength 2.0 for donor donor0"):
        transplant_group(group(t, [d], name=None), {"donor0": 2.0})


def test_the_method_spec_mergekit_registers(monkeypatch):
    from mergekit.merge_methods.base import BasePolicy, OptionalTensorPolicy

    monkeypatch.setattr(method, "_METHOD", None)  # build it afresh, as the first import does
    built = method.transplant_method()
    assert method.transplant_method() is built  # built once
    spec = built.spec
    assert spec.name == "transplant" and spec.pretty_name == "Transplant"
    assert spec.reference_url == "https://arxiv.org/abs/2602.16189"
    assert spec.contract.base is BasePolicy.REQUIRED and spec.contract.min_inputs == 1
    assert spec.optional_tensor_policy is OptionalTensorPolicy.PASSTHROUGH_BASE_SINGLETON
    params = {p.name: p for p in spec.parameters}
    assert set(params) == {"strength", "allow_extrapolation"}
    assert params["strength"].default == 0.0 and params["strength"].scope.value == "non_base"
    assert params["allow_extrapolation"].default is False and params["allow_extrapolation"].scope.value == "shared"
    t, d, _ = tensors()
    out = built.merge_group(group(t, [d]), strength={"donor0": 0.5}, allow_extrapolation=False)
    assert torch.equal(out, torch.lerp(t, d, 0.5))
    with pytest.raises(StrengthError):
        built.merge_group(group(t, [d]), strength={"donor0": 1.5}, allow_extrapolation=False)
    out = built.merge_group(group(t, [d]), strength={"donor0": 1.5}, allow_extrapolation=True)  # passed through
    assert torch.allclose(out.to(torch.float64), reference(t, [(d, 1.5)]), atol=1e-5)
