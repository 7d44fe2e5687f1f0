"""The ``transplant`` merge method: per tensor, target + Σ sᵢ·(donorᵢ − target).

It is an ordinary mergekit group method, so mergekit's lazy loader, dtype
handling, filters and GPU options all apply. Strength 0 returns the target's
tensor and strength 1 (one donor) the donor's, bit for bit; anything between is
computed in fp32 (fp64 for fp64 inputs) with ``torch.lerp`` and cast back.
"""

import torch

from mergekit_transplant.strength import OUTSIDE_CLOSED, strength_problem


class StrengthError(ValueError):
    """A strength (or the sum of strengths) is outside [0, 1] or not finite."""


def check_strengths(
    strengths: list[tuple[str, float]], tensor: str, allow_extrapolation: bool = False
) -> None:
    """Raise a message naming the tensor and donor when a strength is out of bounds."""
    for donor, s in strengths:
        problem = strength_problem(s, allow_extrapolation=allow_extrapolation)
        if problem is not None:
            hint = " (set allow_extrapolation: true to permit it)" if problem == OUTSIDE_CLOSED else ""
            raise StrengthError(f"{tensor}: strength {s} for donor {donor} {problem}{hint}")
    total = sum(s for _, s in strengths)
    if not allow_extrapolation and total > 1.0 + 1e-9:
        donors = ", ".join(d for d, s in strengths if s)
        raise StrengthError(
            f"{tensor}: strengths of donors {donors} sum to {total:g} > 1 "
            "(set allow_extrapolation: true to permit it)"
        )


def blend(target: torch.Tensor, donors: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """target + Σ sᵢ·(dᵢ − target), exact at the endpoints, fp32/fp64 in between."""
    active = [(d, s) for d, s in donors if s != 0.0]
    if not active:
        return target
    if len(active) == 1 and active[0][1] == 1.0:
        return active[0][0]
    work = torch.float64 if target.dtype == torch.float64 else torch.float32
    t = target.to(work)
    if len(active) == 1:
        donor, s = active[0]
        out = torch.lerp(t, donor.to(work), s)
    else:
        out = t.clone()
        for donor, s in active:
            out.add_(donor - t, alpha=s)  # torch promotes a half-precision donor to t's dtype
    return out.to(target.dtype)


def transplant_group(group, strength, allow_extrapolation: bool = False) -> torch.Tensor:
    """The method's body for one mergekit ``TensorGroup``: check each donor's strength, then blend.

    At module level (the registered function only calls it) so that it is
    looked up on every tensor, not frozen into the method object built once.
    """
    name = group.metadata.name or "<tensor>"
    donors = [(entry, float(strength[entry.id])) for entry in group.non_base]
    check_strengths([(str(e.id), s) for e, s in donors], name, allow_extrapolation)
    return blend(group.base.tensor, [(e.tensor, s) for e, s in donors])


_METHOD = None


def transplant_method():
    """The ``transplant`` mergekit method object (built once, on first use).

    Built inside a function so that importing this module never imports
    mergekit: the post-import hook calls this right after
    ``mergekit.merge_methods`` has finished executing.
    """
    global _METHOD
    if _METHOD is not None:
        return _METHOD
    from mergekit.merge_methods.base import (
        BasePolicy,
        InputContract,
        OptionalTensorPolicy,
        PerNonBase,
        TensorGroup,
    )
    from mergekit.merge_methods.easy_define import merge_method

    def transplant(
        group: TensorGroup,
        strength: PerNonBase[float] = 0.0,
        allow_extrapolation: bool = False,
    ) -> torch.Tensor:
        """Copy or blend donor tensors into the base model (the target)."""
        return transplant_group(group, strength, allow_extrapolation)

    _METHOD = merge_method(
        transplant,
        name="transplant",
        pretty_name="Transplant",
        reference_url="https://arxiv.org/abs/2602.16189",
        contract=InputContract(base=BasePolicy.REQUIRED, min_inputs=1),
        optional_tensor_policy=OptionalTensorPolicy.PASSTHROUGH_BASE_SINGLETON,
    )
    return _METHOD
