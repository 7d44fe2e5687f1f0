"""Forward hooks that reduce each module's activity to one number per sample.

A pass runs one model over the workload with a forward hook on every
candidate. Each hook gathers the module's input and output at the scored
positions only, reduces them on the module's own device (float32, whatever
the model's dtype) to per-row scalars, and keeps nothing else: no
activation tensor outlives its hook call. Per batch, the scalars of all
modules are stacked and copied to the CPU once, into an
``[n_samples, n_candidates]`` matrix per statistic.

``run_pass`` is the one pass for every unit (``analysis.units``): what it
hooks and how it reduces is a ``Probes`` object. ``ModuleProbes`` (the
default; ``module`` and ``layer`` units) is described here;
``units.NeuronProbes`` hooks the MLPs' down projections for ``unplug``.

Statistics (per sample, averaged over its scored positions):

- ``activation``: mean |output|, over output features;
- ``local``: ||(W_donor - W_target) x (+ b_donor - b_target)||, x the module's
  input in this (the target's) pass, with the donor tensor streamed from its
  checkpoint while the module runs;
- ``local_relative``: that norm divided by ||module output||;
- ``attribution`` (gradient pass, on the donor): sum over all real positions
  of |<c, d log p(continuation) / d output>|, where c = (W_donor - W_target) x
  (+ b_donor - b_target) is the part of the module's output that the donor's
  change contributes, x the module's input in the donor's pass, the target
  tensor streamed. DoE's |a * dy/da| with a restricted to what a transplant
  moves: a first-order estimate of how much the continuation's log-probability
  would change if this one module were reverted to the target's weights;
- ``attribution_signed``: the same sum without the absolute value, per
  sample: positive where the donor's change raises the log-probability;
- ``gain`` (gradient pass, on the target): sum over all real positions of
  <(W_donor - W_target) x (+ b_donor - b_target), d log p(continuation) / d output>,
  x the module's input in the target's pass, the donor tensor streamed:
  sum_m <d log p / d W_m, W_donor,m - W_target,m>, signed, the first-order
  change of the target's log-likelihood if this one module were transplanted.

The gradient scores (``attribution``, ``gain``) compute each module's term in
a hook on its output's gradient, from a reference to the module's input, and
free it at once. Autograd still keeps every decoder layer's activations
until the backward pass reaches it, so the gradient pass runs over
micro-batches small enough for those to fit (``gradient_batch_size``, sized
by the memory plan); or, with ``recompute``, over whole batches with each
decoder layer recomputed in the backward pass (``recompute.Replay``), one
layer's activations at a time. The probes see a recomputed layer twice and
measure the forward statistics only in its first call.

``other`` names the checkpoint each pass compares its model with: the donor
in the target's pass (``local``, ``gain``), the target in the donor's
(``attribution``).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.analysis.candidates import Candidate
from mergekit_transplant.analysis.recompute import Replay
from mergekit_transplant.analysis.streaming import TensorStreamer
from mergekit_transplant.analysis.tokens import Batch, TokenSequence, batches, fit
from mergekit_transplant.errors import TransplantError

EPS = 1e-12
#: the most padding (a share of the batch) at which gradient hooks compute at every position
DENSE_PADDING = 0.1


@dataclass
class PassResult:
    stats: Dict[str, "torch.Tensor"]  # noqa: F821  name -> [n_samples, n_candidates] float64
    seconds: float
    tokens: int
    batches: int
    streamed_bytes: int = 0


class _Context:
    """The batch being processed, with its index tensors cached per device.

    Each statistic's values for the batch go into one ``[B, n_candidates]``
    matrix allocated when the batch starts, written column by column by the
    hooks: no small tensor per module outlives its hook call. (Many small
    tensors kept alive across a forward pass land in the holes freed
    activations leave, fragment the C heap and raised the peak RSS by up to
    a third of the model's size in the benchmark.)
    """

    def __init__(self, device, stats: Sequence[str], n_candidates: int):
        self.device = device
        self.stats = list(stats)
        self.n_candidates = n_candidates
        self.batch: Optional[Batch] = None
        self._per_device: Dict[str, tuple] = {}
        self._everywhere: Dict[str, tuple] = {}
        self.out: Dict[str, "torch.Tensor"] = {}  # noqa: F821  stat -> [B, n_candidates] float32
        self.seen: Dict[str, set] = {}  # stat -> probes that reported
        self.replay = None  # recompute.Replay during an attribution pass

    def start(self, batch: Batch) -> None:
        import torch

        self.batch = batch
        self._per_device = {}
        self._everywhere = {}
        self.out = {stat: torch.zeros(batch.size, self.n_candidates, dtype=torch.float32, device=self.device)
                    for stat in self.stats}
        self.seen = {stat: set() for stat in self.stats}

    def index(self, device):
        key = str(device)
        cached = self._per_device.get(key)
        if cached is None:
            b = self.batch
            cached = (b.rows.to(device), b.cols.to(device), b.weights.to(device), b.input_ids.to(device),
                      b.attention_mask.to(device))
            self._per_device[key] = cached
        return cached

    def real_positions(self, device):
        """``(rows, cols)`` of every non-padding position of the batch, on ``device``."""
        key = str(device)
        cached = self._everywhere.get(key)
        if cached is None:
            cached = self._everywhere[key] = tuple(
                t.to(device) for t in self.batch.attention_mask.bool().nonzero(as_tuple=True))
        return cached

    def dense_mask(self, device):
        """``[B*T]`` bool, True at real positions, when padding is at most ``DENSE_PADDING`` of the batch
        (the gradient hooks then work on every position: cheaper than gathering the real ones); else None."""
        key = ("dense", str(device))
        if key not in self._everywhere:
            mask = self.batch.attention_mask
            dense = self.batch.tokens >= (1 - DENSE_PADDING) * mask.numel()
            self._everywhere[key] = mask.bool().flatten().to(device) if dense else None
        return self._everywhere[key]

    def store(self, stat: str, probe: int, per_position, *, weighted: bool = True, rows=None) -> None:
        """Reduce ``[P]`` per-position values to ``[B]`` per-row values and keep them.

        The positions are the scored ones unless ``rows`` gives their rows.
        """
        import torch

        scored_rows, _cols, weights, _ids, _mask = self.index(per_position.device)
        rows = scored_rows if rows is None else rows
        values = per_position * weights if weighted else per_position
        per_row = torch.zeros(self.batch.size, dtype=torch.float32, device=per_position.device)
        per_row.index_add_(0, rows, values.float())
        self.put(stat, probe, per_row)

    def put(self, stat: str, probe: int, per_row) -> None:
        self.out[stat][:, probe] += per_row.to(self.device)
        self.seen[stat].add(probe)


class Probe:
    """The forward hook of one candidate module."""

    def __init__(self, index: int, candidate: Candidate, module, ctx: _Context, *, stats: Sequence[str],
                 other: Optional[TensorStreamer] = None, own_files: Optional[TensorStreamer] = None,
                 attribution: bool = False, gain: bool = False):
        self.index = index
        self.candidate = candidate
        self.module = module
        self.ctx = ctx
        self.stats = set(stats)
        self.other = other
        self.own_files = own_files
        self.attribution = attribution
        self.gain = gain
        self.handle = module.register_forward_hook(self)

    def remove(self) -> None:
        self.handle.remove()

    def _current(self, name: str, param):
        """This model's tensor as it holds it (from its file if offloaded)."""
        if param.device.type == "meta":
            if self.own_files is None:
                raise TransplantError(f"{name}: weight is offloaded and no checkpoint is available to read it")
            return self.own_files.get(name)
        return param.detach()

    def __call__(self, module, inputs, output):
        import torch

        ctx = self.ctx
        y = output[0] if isinstance(output, tuple) else output
        rows, cols, _w, ids, _mask = ctx.index(y.device)
        replaying = ctx.replay is not None and ctx.replay.active
        # a recomputed layer (attribution's backward) was measured in its first call
        if not replaying and self.stats & {"activation", "local"}:
            with torch.no_grad():
                ys = y.detach()[rows, cols].float()  # [P, d_out]
                if "activation" in self.stats:
                    ctx.store("activation", self.index, ys.abs().mean(-1))
                if "local" in self.stats:
                    diff = self._change(module, inputs, rows, cols, ids)
                    norm = diff.norm(dim=-1)
                    ctx.store("local", self.index, norm)
                    ctx.store("local_relative", self.index, norm / ys.norm(dim=-1).clamp_min(EPS))
                del ys
        if (self.attribution or self.gain) and y.requires_grad:
            # The change term is computed when the output's gradient arrives, from the module's
            # input (held by reference: q/k/v and gate/up share theirs), and freed right after.
            # Inside a recomputed layer that is moments later; the layer's graph goes with it.
            stat_index, attribution, gain = self.index, self.attribution, self.gain
            x = inputs[0].detach() if inputs else None

            def on_grad(grad, x=x):
                with torch.no_grad():
                    real = None if self.candidate.embedding else ctx.dense_mask(grad.device)
                    if real is not None:
                        # (nearly) no padding: every position of the padded batch, no gathered copies;
                        # padding's values are dropped (its gradient is zero, its input need not be finite)
                        per_pos = self._dots(module, x.flatten(0, -2), grad.flatten(0, -2)).where(real, 0.0)
                        size = (ctx.batch.size, -1)

                        def put(stat, values):
                            ctx.put(stat, stat_index, values.view(size).sum(1))
                    else:
                        every_row, every_col = ctx.real_positions(grad.device)
                        per_pos = self._dots(module, x, grad[every_row, every_col], every_row, every_col, ids)

                        def put(stat, values):
                            ctx.store(stat, stat_index, values, weighted=False, rows=every_row)
                    if gain:  # on the target: the donor's change, signed
                        put("gain", per_pos)
                    if attribution:  # on the donor: its own change against the target, the opposite sign
                        per_pos = per_pos.neg_()
                        put("attribution", per_pos.abs())
                        put("attribution_signed", per_pos)

            y.register_hook(on_grad)

    def _dots(self, module, x, grad, rows=None, cols=None, ids=None):
        """``<(W_other - W_this) x (+ b_other - b_this), grad>`` per position, float32 ``[P]``.

        ``x`` is the module's input at those positions (``[P, d_in]``), or, with ``rows`` and
        ``cols``, the whole input they index; ``grad`` the output's gradient there (``[P, d_out]``).
        The product is taken on the narrower side: ``((W_other - W_this) x) . grad`` when
        ``d_out <= d_in``, else ``x . ((W_other - W_this)^T grad)``; the same sum, fewer values
        to multiply and add.
        """
        cand = self.candidate
        if cand.embedding:
            return (self._change(module, (x,), rows, cols, ids) * grad).sum(-1)
        weight = self._current(cand.tensor, module.weight)
        delta = self.other.delta(cand.tensor, weight)  # [d_out, d_in], float32
        x = (x if rows is None else x[rows, cols]).float()  # [P, d_in]
        grad = grad.float()
        if delta.shape[0] <= delta.shape[1]:
            dots = (x @ delta.T).mul_(grad).sum(-1)
        else:
            dots = (grad @ delta).mul_(x).sum(-1)
        if cand.bias:
            bias = self._current(cand.bias, module.bias)
            dots += grad @ self.other.delta(cand.bias, bias)
        return dots

    def _change(self, module, inputs, rows, cols, ids):
        """``(W_other - W_this) x (+ b_other - b_this)`` at the given positions, float32 ``[P, d_out]``."""
        cand = self.candidate
        weight = self._current(cand.tensor, module.weight)
        if cand.embedding:
            stored = self.other.get(cand.tensor)
            token_ids = ids[rows, cols].to(stored.device)
            picked = stored[token_ids].to(device=weight.device, dtype=weight.dtype)
            return picked.float() - weight[ids[rows, cols]].float()
        delta = self.other.delta(cand.tensor, weight)
        x = inputs[0].detach()[rows, cols].float()  # [P, d_in]
        diff = x @ delta.T
        if cand.bias:
            bias = self._current(cand.bias, module.bias)
            diff += self.other.delta(cand.bias, bias)
        return diff


class Probes:
    """Where a pass hooks and how it reduces: the one part of ``run_pass`` that depends on the unit.

    A unit strategy (``analysis.units``) supplies one. ``run_pass`` gives it
    a ``_Context`` (the batch being processed, its positions cached per
    device, and one ``[B, count]`` matrix per name in ``names`` for
    per-sample values) and calls ``attach`` once, ``collect`` after every
    batch and ``finish`` at the end.
    """

    names: Sequence[str] = ()  # per-sample statistics (the context allocates a [B, count] matrix per batch for each)
    count: int = 0  # columns of those matrices
    gradients: bool = False  # a backward pass per batch (the graph is built from the input embeddings on)
    head: bool = False  # hooks the output head: logits are needed at every position (set by ``attach``)

    def attach(self, model, ctx: _Context, n_samples: int) -> list:
        """Register the hooks (after the gradient graph is set up); returns objects with ``remove()``."""
        raise NotImplementedError

    def collect(self, ctx: _Context, batch: Batch) -> None:
        """Keep this batch's values (on the CPU)."""
        raise NotImplementedError

    def finish(self, desc: str, sources: Sequence[tuple]) -> Dict[str, "torch.Tensor"]:  # noqa: F821
        """The statistics, checked finite."""
        raise NotImplementedError

    @property
    def streamed_bytes(self) -> int:
        """Bytes read from another checkpoint's files during the pass (0: none streamed)."""
        return 0


class ModuleProbes(Probes):
    """``module`` and ``layer`` units: a ``Probe`` on every candidate module, one value per sample and
    candidate, ``[n_samples, n_candidates]`` float64 per statistic (layers are grouped afterwards)."""

    def __init__(self, candidates: Sequence[Candidate], stats: Sequence[str], *,
                 other: Optional[TensorStreamer] = None, own_files: Optional[TensorStreamer] = None,
                 attribution: bool = False, gain: bool = False):
        self.candidates = candidates
        self.stats = stats
        self.other, self.own_files, self.attribution, self.gain = other, own_files, attribution, gain
        self.names = list(stats) + (["local_relative"] if "local" in stats else []) + (
            ["attribution", "attribution_signed"] if attribution else []) + (["gain"] if gain else [])
        self.count = len(candidates)
        self.gradients = attribution or gain
        self.out: Dict[str, "torch.Tensor"] = {}  # noqa: F821

    def attach(self, model, ctx: _Context, n_samples: int) -> list:
        import torch

        modules = dict(model.named_modules())
        self.out = {name: torch.zeros(n_samples, self.count, dtype=torch.float64) for name in self.names}
        self.head = any(modules[c.module] is model.get_output_embeddings() for c in self.candidates)
        return [
            Probe(i, c, modules[c.module], ctx, stats=self.stats, other=self.other, own_files=self.own_files,
                  attribution=self.attribution, gain=self.gain)
            for i, c in enumerate(self.candidates)
        ]

    def collect(self, ctx: _Context, batch: Batch) -> None:
        _collect(ctx, self.out, batch)

    def finish(self, desc: str, sources: Sequence[tuple]) -> Dict[str, "torch.Tensor"]:  # noqa: F821
        _check_finite(self.out, self.candidates, desc, sources)
        return self.out

    @property
    def streamed_bytes(self) -> int:
        return self.other.bytes_read if self.other else 0


def _input_device(model):
    emb = model.get_input_embeddings()
    return emb.weight.device if emb.weight.device.type != "meta" else next(
        p.device for p in model.parameters() if p.device.type != "meta")


def run_pass(model, candidates: Sequence[Candidate], seqs: Sequence[TokenSequence], *, stats: Sequence[str],
             batch_size: int, pad_id: int, padding_side: str, other: Optional[TensorStreamer] = None,
             own_files: Optional[TensorStreamer] = None, attribution: bool = False, gain: bool = False,
             recompute: bool = False, gradient_batch_size: Optional[int] = None,
             desc: str = "capture", progress: bool = True,
             sources: Sequence[tuple] = (), units: Optional["Probes"] = None) -> PassResult:
    """One pass of ``model`` over ``seqs`` with every candidate probed.

    ``other``: the checkpoint ``local`` and ``attribution`` compare with,
    streamed a tensor at a time; ``own_files``: this model's checkpoint, read
    for weights that a device map offloaded. ``attribution`` (on the donor)
    and ``gain`` (on the target) run a backward pass per batch; ``gain``
    expects every sequence to have a continuation (``tokens.likelihood_view``).
    With either, the batches hold ``gradient_batch_size`` rows (default
    ``batch_size``; ``plan.Planner.gradient_rows`` sizes them so that the
    activations kept for the backward pass fit), and ``recompute`` recomputes
    each decoder layer in the backward pass (``recompute.Replay``).
    Per-sample values do not depend on how samples are batched.

    ``sources``: ``(role, TensorStreamer)`` pairs whose tensors are checked
    for NaN/Inf when a statistic comes out non-finite, so the error can name
    the checkpoint and tensor at fault.

    ``units``: where the pass hooks and how it reduces what the hooks see
    (``Probes``), chosen by the unit strategy (``analysis.units``). By default
    ``ModuleProbes`` over ``candidates`` (``module`` and ``layer`` units);
    ``units.NeuronProbes`` measures MLP neurons (``unplug``), and then
    ``candidates``, ``stats``, ``other``, ``own_files``, ``attribution`` and
    ``gain`` are not used. Everything else (device, batching, the forward and
    backward step, recomputation, progress, timing) is the same for every unit.
    """
    import torch
    from tqdm.auto import tqdm

    device = _input_device(model)
    if units is None:
        units = ModuleProbes(candidates, stats, other=other, own_files=own_files, attribution=attribution, gain=gain)
    gradients = units.gradients
    ctx = _Context(device, units.names, units.count)
    graph = gradients_from_embeddings(model) if gradients else contextlib.nullcontext()
    # entered before the probes are registered (hooks run in order), so an embedding probe sees a graph too
    graph.__enter__()
    try:
        probes = units.attach(model, ctx, len(seqs))
    except BaseException:
        graph.__exit__(None, None, None)
        raise
    head_probed = units.head
    keep_last = _can_keep_last(model) and not gradients and not head_probed
    start, tokens, n_batches = time.perf_counter(), 0, 0
    bar = tqdm(total=len(seqs), desc=desc, unit="sample", disable=not progress, leave=False)
    try:
        rows = (gradient_batch_size or batch_size) if gradients else batch_size
        for batch in batches(seqs, rows, pad_id=pad_id, padding_side=padding_side, device=device):
            ctx.start(batch)
            kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids, use_cache=False)
            if gradients:
                with torch.enable_grad(), (Replay(model) if recompute else contextlib.nullcontext()) as ctx.replay:
                    _attribution_step(model, batch, kwargs, head_is_candidate=head_probed)
                ctx.replay = None
            else:
                if keep_last:
                    kwargs["logits_to_keep"] = 1
                with torch.inference_mode():
                    model(**kwargs)
            units.collect(ctx, batch)
            tokens += batch.tokens
            n_batches += 1
            bar.update(batch.size)
    finally:
        bar.close()
        for probe in probes:
            probe.remove()
        graph.__exit__(None, None, None)
    out = units.finish(desc, sources)
    return PassResult(out, time.perf_counter() - start, tokens, n_batches,
                      streamed_bytes=units.streamed_bytes)


@contextlib.contextmanager
def gradients_from_embeddings(model):
    """Within the block a forward pass builds a graph from the input embeddings on: gradients reach every
    activation, while the weights are frozen (no parameter gradient is stored). Flags are restored on exit."""
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        yield
    finally:
        hook.remove()
        for p, flag in zip(model.parameters(), saved):
            p.requires_grad_(flag)


def _attribution_step(model, batch: Batch, kwargs, *, head_is_candidate: bool = False) -> None:
    """Forward (decoder layers recomputed in the backward pass, see ``recompute``) and backward.

    Unless the output head is a candidate (its probe needs every position),
    logits are computed only at the scored positions' columns.
    """
    import torch

    cols = batch.cols
    if not head_is_candidate and _can_keep_last(model):
        keep = torch.unique(batch.cols)  # sorted
        logits = model(**kwargs, logits_to_keep=keep).logits
        cols = torch.searchsorted(keep, batch.cols)
    else:
        logits = model(**kwargs).logits
    picked = logits[batch.rows, cols].float().log_softmax(-1)  # [P, V]
    del logits
    labels = batch.labels.to(picked.device)
    greedy = picked.detach().argmax(-1)
    labels = torch.where(labels < 0, greedy, labels)
    logprob = picked.gather(1, labels[:, None]).sum()
    logprob.backward()


def _collect(ctx: _Context, out, batch: Batch) -> None:
    """Copy this batch's per-row values to the CPU, one matrix per statistic."""
    import torch

    rows = torch.tensor(batch.sample_ids, dtype=torch.long)
    for stat in out:
        if len(ctx.seen[stat]) != ctx.n_candidates:
            missing = ctx.n_candidates - len(ctx.seen[stat])
            raise TransplantError(f"{missing} candidate module(s) did not run in the forward pass ({stat})")
        out[stat][rows] = ctx.out[stat].to("cpu", torch.float64)


def _check_finite(out, candidates, desc, sources=()) -> None:
    import torch

    for stat, matrix in out.items():
        bad = (~torch.isfinite(matrix)).any(0).nonzero().flatten().tolist()
        if not bad:
            continue
        first = candidates[bad[0]]  # candidates are in model order: the most upstream one
        for role, files in sources:
            for name in first.tensors:
                if not bool(torch.isfinite(files.get(name).float()).all()):
                    raise TransplantError(
                        f"{role} {files.index.ref}: tensor {name} contains NaN or Inf values "
                        f"({desc}: non-finite {stat} values from {first.module})"
                    )
        raise TransplantError(
            f"{desc}: non-finite {stat} values in {first.module} (and {len(bad) - 1} more); "
            "the weights are finite there, so this is an overflow: try --dtype float32"
        )


def _can_keep_last(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- generation


def generate(model, seqs: Sequence[TokenSequence], *, max_new_tokens: int, max_length: int, batch_size: int,
             pad_id: int, eos_ids: Sequence[int], desc: str = "generate", progress: bool = True):
    """Greedy continuations of each prompt; returns new sequences and seconds taken.

    Each prompt (truncated to leave room for ``max_new_tokens``) is decoded
    greedily with left padding; the continuation is cut after the first EOS.
    The statistics pass then runs teacher-forced over prompt + continuation,
    scoring the generated positions, which reproduces what the model saw
    while it generated without holding activations across decoding steps.
    """
    import torch
    from tqdm.auto import tqdm

    device = _input_device(model)
    room = max_length - max_new_tokens
    if room < 1:
        raise TransplantError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in {max_length} tokens")
    prompts = [fit(s.ids[: s.prompt_len], [], room) for s in seqs]
    results: List[Optional[TokenSequence]] = [None] * len(seqs)
    start = time.perf_counter()
    eos = set(int(e) for e in eos_ids)
    bar = tqdm(total=len(seqs), desc=desc, unit="sample", disable=not progress, leave=False)
    try:
        for batch in batches(prompts, batch_size, pad_id=pad_id, padding_side="left", device=device):
            with torch.inference_mode():
                generated = model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False, num_beams=1,
                    pad_token_id=pad_id, eos_token_id=sorted(eos) or None,
                    temperature=None, top_p=None, top_k=None,
                )
            new = generated[:, batch.input_ids.shape[1]:].tolist()
            for row, i in enumerate(batch.sample_ids):
                cont = []
                for token in new[row]:
                    cont.append(token)
                    if token in eos:
                        break
                prompt = prompts[i]
                results[i] = TokenSequence(prompt.ids + cont, prompt.prompt_len, truncated=prompt.truncated)
            bar.update(batch.size)
    finally:
        bar.close()
    return results, time.perf_counter() - start
