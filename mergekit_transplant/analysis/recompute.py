"""Per-layer recomputation for the gradient scores' backward pass (``--recompute``; activation checkpointing).

By default the gradient pass keeps every layer's activations and runs over
micro-batches small enough for them to fit (``plan.Planner.gradient_rows``);
``--recompute`` runs whole batches this way instead: the least memory, one
more forward pass of the decoder layers.

A plain backward pass keeps every activation autograd saved in the forward
pass until the backward pass reaches it: for a whole batch, every decoder
layer at once, about 10 hidden-sized and 3 MLP-sized values per token and
layer. ``attribution`` needs the gradient at every candidate module's output,
so it needs a backward pass, but not all of that at once.

While the attribution pass runs, each decoder layer's forward is wrapped in
``torch.utils.checkpoint`` (reentrant): the forward pass runs the layer
without building its graph and keeps only the layer's input (one
``batch x length x hidden`` tensor, in the model's dtype). When the backward
pass reaches the layer, the layer is run again from that input with
gradients on, its probes see their inputs again and compute their change
terms as the gradients arrive (``capture.Probe``), and the layer's graph is
freed before the next layer back is recomputed. Peak memory is one layer's
activations plus the layer inputs, instead of every layer's activations.
The price is a second forward pass of the decoder layers.

``Replay.active`` says which of the two calls of a layer is running: the
probes compute the forward statistics (``activation``) in the first and the
attribution terms in the second, so nothing is counted twice.
"""

from __future__ import annotations

from typing import List


def decoder_layers(model) -> List[object]:
    """The decoder layers: the children of the model's largest ``nn.ModuleList`` (by parameters)."""
    import torch.nn as nn

    best, size = None, -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            n = sum(p.numel() for p in module.parameters())
            if n > size:
                best, size = module, n
    return list(best) if best is not None else []


class Replay:
    """Wraps the decoder layers of ``model`` in per-layer recomputation while in use (a context manager)."""

    def __init__(self, model):
        self.model = model
        self.active = False  # True while a layer is being recomputed for the backward pass
        self._wrapped: list = []

    def __enter__(self) -> "Replay":
        for layer in decoder_layers(self.model):
            had_own = "forward" in vars(layer)  # accelerate's hooks replace forward per instance
            inner = layer.forward
            layer.forward = self._checkpointed(inner)
            self._wrapped.append((layer, had_own, inner))
        return self

    def __exit__(self, *exc) -> None:
        for layer, had_own, inner in self._wrapped:
            if had_own:
                layer.forward = inner
            else:
                del layer.forward
        self._wrapped.clear()

    def _checkpointed(self, inner):
        import functools

        import torch
        from torch.utils.checkpoint import checkpoint

        replay = self

        def run(*args, **kwargs):
            previous = replay.active
            replay.active = torch.is_grad_enabled()  # the checkpoint's first call runs under no_grad
            try:
                return inner(*args, **kwargs)
            finally:
                replay.active = previous

        def forward(*args, **kwargs):
            if not args and "hidden_states" in kwargs:  # the input that needs a gradient must be positional
                args = (kwargs.pop("hidden_states"),)
            if not torch.is_grad_enabled() or not any(torch.is_tensor(a) and a.requires_grad for a in args):
                return inner(*args, **kwargs)
            return checkpoint(functools.partial(run, **kwargs), *args, use_reentrant=True,
                              preserve_rng_state=False)

        return forward
