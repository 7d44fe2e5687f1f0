"""The memory plan: the peak memory of an analysis, estimated before any model loads.

From the config and the safetensors headers alone (the candidates are found on
a model built on the ``meta`` device, which holds no data) and the workload's
token lengths (the tokenizer runs, no model), the plan itemises what the run
will hold at its peak on the device:

- ``weights``: the one resident model (target and donor are never resident
  together), in the dtype it is loaded in;
- ``streamed tensors``: the read buffer and the float32 ``W_other - W_this``
  scratch that ``local`` and ``attribution`` keep per weight shape
  (``streaming.TensorStreamer``);
- ``activations``: what the passes hold for the largest batch. A forward pass
  without gradients holds one layer's working set at a time. The gradient
  scores (``attribution``, ``gain``) run forward + backward over micro-batches
  of ``gradient_rows`` rows and hold every layer's saved activations for one
  micro-batch (``saved activations``: at most ``GRADIENT_BUDGET`` x the
  weights, and what the device has free), plus one layer's gradients and the
  logits at the scored columns; with ``--recompute`` they keep each decoder
  layer's input for the whole batch (``layer inputs``) and recompute one
  layer at a time (``recompute``), holding one layer's saved activations and
  gradients;
- ``score buffers``: per-module values in flight: ``local``'s change at the
  scored positions, ``attribution``'s change, gathered input and gradient at
  every real position of one module (computed when its gradient arrives,
  then freed).

On the CPU the process's own memory before loading (the Python runtime,
torch, transformers, the tokenizer) is measured and added, so the plan's peak
is comparable with the peak RSS; the device's free memory (``MemAvailable``,
or ``torch.cuda.mem_get_info``) is what the items must fit in.

The formulas count the tensors a Llama-style decoder layer creates (see
``_layer``); they are checked against measured peaks in
tests/test_analysis_plan.py and, on a GPU, by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mergekit_transplant.errors import TransplantError

PLAN_SCHEMA = 1
MIB = 1024 * 1024
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_STORED = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class BatchShape:
    """The largest batch of a run: rows, padded width, real tokens, scored positions, logit columns kept."""

    rows: int
    width: int
    tokens: int
    scored: int
    columns: int

    @property
    def padded(self) -> int:
        return self.rows * self.width


@dataclass(frozen=True)
class Dims:
    """What the estimate needs from a config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict) -> "Dims":
        cfg = config.get("text_config") or config
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            return cls(
                hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                intermediate=int(cfg.get("intermediate_size") or 4 * hidden), vocab=int(cfg["vocab_size"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TransplantError(f"the model's config lacks {error} needed for the memory plan") from None


@dataclass
class PlanItem:
    name: str
    bytes: int
    detail: str
    spread: bool = False  # divides over the devices of a device map, with the layers


@dataclass
class MemoryPlan:
    """An itemised estimate of an analysis' peak memory on one device (bytes)."""

    score: str
    passes: List[str]
    device: str
    dtype: str
    batch_size: int
    shape: BatchShape
    items: List[PlanItem]
    baseline_bytes: int = 0  # the process before loading (CPU: measured RSS; not in the report)
    free_bytes: Optional[int] = None  # the device's free memory, when known
    devices: int = 1  # devices a --device-map spreads the model over
    notes: List[str] = field(default_factory=list)
    gradient_batch_size: Optional[int] = None  # rows per forward + backward micro-batch (gradient scores)

    @property
    def added_bytes(self) -> int:
        """What the analysis adds to the device: the sum of the items."""
        return sum(i.bytes for i in self.items)

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.added_bytes

    def per_device_bytes(self, devices: Optional[int] = None) -> int:
        """With the layers spread over ``devices``: their share of what spreads, plus the rest (upper bound)."""
        n = devices or self.devices
        spread = sum(i.bytes for i in self.items if i.spread)
        return -(-spread // n) + self.added_bytes - spread

    def fits(self) -> Optional[bool]:
        return None if self.free_bytes is None else self.added_bytes <= self.free_bytes

    def to_json(self) -> dict:
        """The deterministic part (the report's ``plan``): no measured baseline, no free memory."""
        return {
            "schema": PLAN_SCHEMA, "score": self.score, "passes": list(self.passes), "device": self.device,
            "dtype": self.dtype, "batch_size": self.batch_size, "shape": asdict(self.shape),
            "items": [asdict(i) for i in self.items], "added_bytes": self.added_bytes, "devices": self.devices,
            "notes": list(self.notes), "gradient_batch_size": self.gradient_batch_size,
        }

    @classmethod
    def from_json(cls, data: dict) -> "MemoryPlan":
        if data.get("schema") != PLAN_SCHEMA:
            raise TransplantError(f"memory plan schema {data.get('schema')!r} is not {PLAN_SCHEMA}")
        return cls(score=data["score"], passes=list(data["passes"]), device=data["device"], dtype=data["dtype"],
                   batch_size=data["batch_size"], shape=BatchShape(**data["shape"]),
                   items=[PlanItem(**i) for i in data["items"]], devices=data.get("devices", 1),
                   notes=list(data.get("notes", [])), gradient_batch_size=data.get("gradient_batch_size"))

    def format(self) -> str:
        s = self.shape
        lines = [f"memory plan ({self.score}; {', '.join(self.passes)}; {self.dtype} on {self.device}; "
                 f"largest batch {s.rows} x {s.width} tokens, {s.tokens} real, {s.scored} scored):"]
        if self.baseline_bytes:
            lines.append(f"  {_mib(self.baseline_bytes):>10}  runtime (this process before loading, measured)")
        for item in self.items:
            lines.append(f"  {_mib(item.bytes):>10}  {item.name}: {item.detail}")
        peak = f"  {_mib(self.peak_bytes):>10}  estimated peak"
        if self.devices > 1:
            peak += f" (at most {_mib(self.per_device_bytes())} on one of {self.devices} devices)"
        if self.free_bytes is not None:
            peak += f"; {_mib(self.free_bytes)} free on {self.device}"
        lines.append(peak)
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB" if n < 10 * 1024 * MIB else f"{n / (1024 * MIB):,.1f} GiB"


# --------------------------------------------------------------------------- shapes


def batch_shape(lengths: Sequence[int], scored: Sequence[int], batch_size: int) -> BatchShape:
    """The worst batch of ``batches()`` (sorted by length, then index): max of each quantity over batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    rows = width = tokens = n_scored = padded = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        w = max(lengths[i] for i in chunk)
        padded = max(padded, len(chunk) * w)
        rows, width = (len(chunk), w) if len(chunk) * w >= rows * width else (rows, width)
        tokens = max(tokens, sum(lengths[i] for i in chunk))
        n_scored = max(n_scored, sum(scored[i] for i in chunk))
    return BatchShape(rows=rows, width=width, tokens=tokens, scored=n_scored, columns=min(width, n_scored))


def uniform_shape(batch: int, length: int, scored_per_row: int) -> BatchShape:
    """A batch of ``batch`` rows of ``length`` tokens each, ``scored_per_row`` of them scored (for tables)."""
    return BatchShape(rows=batch, width=length, tokens=batch * length, scored=batch * scored_per_row,
                      columns=scored_per_row)


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Module:
    """A candidate as the plan sees it: its weight's shape and stored dtype."""

    d_out: int
    d_in: int
    stored: str  # safetensors dtype code
    embedding: bool = False
    head: bool = False


def estimate(dims: Dims, weight_bytes: int, modules: Sequence[Module], shape: BatchShape, *, score: str,
             also: Sequence[str] = (), dtype_bytes: int, dtype: str, device: str = "cpu", devices: int = 1,
             baseline_bytes: int = 0, free_bytes: Optional[int] = None, eager_attention: bool = False,
             batch_size: Optional[int] = None, recompute: bool = False, greedy: bool = False,
             gradient_shape: Optional[BatchShape] = None, gradient_rows: Optional[int] = None) -> MemoryPlan:
    """The plan for one run; see the module docstring for what each item holds.

    ``gradient_shape``: the largest micro-batch of the gradient pass (``gradient_rows`` rows;
    default: the whole batch, ``shape``).
    """
    wanted = {score, *also}
    grad = gradient_shape or shape
    gradients = bool(wanted & {"attribution", "gain"})  # a backward pass (on the donor, or the target for gain)
    passes = []
    if "local" in wanted or "activation" in wanted:
        passes.append("target forward")
    how = " (layers recomputed)" if recompute else ""
    if gradients and grad.rows < shape.rows:
        how += f" (in micro-batches of {grad.rows} row{'s' if grad.rows > 1 else ''})"
    if "gain" in wanted:
        passes.append("target forward + backward" + how)
    if "activation" in wanted or "attribution" in wanted:
        passes.append(("donor forward + backward" + how) if "attribution" in wanted else "donor forward")
    b = dtype_bytes
    items = [PlanItem("weights", weight_bytes, f"one model resident at a time, {dtype}", spread=True)]
    streams = "local" in wanted or gradients
    if streams:
        shapes = {}
        for m in modules:
            if not m.embedding:
                shapes[(m.d_out, m.d_in)] = max(shapes.get((m.d_out, m.d_in), 0), _DT_BYTES.get(m.stored, 4))
        if device.startswith("cpu"):
            streamed = sum(o * i * (4 + stored) for (o, i), stored in shapes.items())
            what = f"read buffer + float32 delta for each of {len(shapes)} weight shapes"
        else:  # read buffers stay on the CPU; the device holds the delta and one cast copy
            streamed = sum(o * i * 4 for (o, i) in shapes) + max((o * i * b for (o, i) in shapes), default=0)
            what = f"float32 delta for each of {len(shapes)} weight shapes + one cast copy (read buffers on the CPU)"
        items.append(PlanItem("streamed tensors", streamed, what))
    forward = _forward_activations(dims, shape, b, eager_attention, keep_all_logits=any(m.head for m in modules))
    if gradients and recompute:
        inputs = (dims.layers + 1) * grad.padded * dims.hidden * b
        items.append(PlanItem("layer inputs", inputs, f"{dims.layers + 1} x {grad.rows} x {grad.width} x "
                              f"{dims.hidden}: each decoder layer's input, kept for its recomputation", spread=True))
        acts, what = _attribution_activations(dims, grad, b, eager_attention, forward)
    elif gradients:  # no recomputation: every layer's graph, and the probed inputs, until backward
        items.append(PlanItem("saved activations", kept_activations(dims, grad, b, eager_attention),
                              f"{grad.rows} x {grad.width} tokens: {dims.layers} layers' tensors saved for the "
                              "backward pass, and the probed modules' inputs", spread=True))
        acts, what = _attribution_activations(dims, grad, b, eager_attention, forward)
        what = ("the larger of a forward pass's working set and, for a micro-batch of "
                f"{grad.rows} x {grad.width} tokens, one layer's gradients; logits at the scored columns")
    else:
        acts, what = forward, "one layer's working set (no gradients)"
    if greedy:  # --select greedy: forward passes of the target, logits at the scored columns
        working, _ = _layer(dims, shape.padded, b)
        evaluation = working + shape.rows * shape.columns * dims.vocab * b + 2 * shape.scored * dims.vocab * 4
        if evaluation > acts:
            acts, what = evaluation, "greedy's evaluations: one layer's working set, logits at the scored columns"
        passes.append("target: greedy evaluations (forward)")
    items.append(PlanItem("activations", acts, f"{shape.rows} x {shape.width} tokens: {what}"))
    buffers, detail = 0, []
    if "local" in wanted and modules:
        local = max(shape.scored * m.d_out * 4 * 2 for m in modules)
        buffers = max(buffers, local)
        detail.append("local: change at the scored positions of one module")
    if gradients and modules:
        attr = max(grad.tokens * (2 * m.d_out + m.d_in) * 4 for m in modules)
        buffers = max(buffers, attr)
        detail.append(f"{'/'.join(sorted(wanted & {'attribution', 'gain'}))}: change, input and gradient at every "
                      "real position of one module (float32)")
    items.append(PlanItem("score buffers", buffers, "; ".join(detail) or "per-batch statistics only"))
    plan = MemoryPlan(score=score, passes=passes, device=device, dtype=dtype,
                      batch_size=batch_size or shape.rows, shape=shape, items=items,
                      baseline_bytes=baseline_bytes, free_bytes=free_bytes, devices=devices,
                      gradient_batch_size=(gradient_rows or grad.rows) if gradients else None)
    if greedy:
        plan.notes.append("--select greedy also keeps CPU copies of the chosen units' target tensors "
                          "(not itemised: at most the selected parameters)")
    return plan


#: without recomputation, the gradient pass runs over micro-batches whose saved activations
#: (every layer's, until the backward pass) stay within this share of the model's weights
GRADIENT_BUDGET = 0.75

_DT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def _layer(dims: Dims, tokens: int, b: int):
    """Per decoder layer, for ``tokens`` padded tokens: (no-grad working set, saved for backward, bytes)."""
    h, i = dims.hidden, dims.intermediate
    q, kv = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    norm_in = 4 if b < 4 else b  # RMSNorm computes in float32
    # forward without gradients: residual + normed input, then the larger of attention
    # (q, k, v before and after rotary, output) and the MLP (gate, up, act(gate) * up)
    attention = 2 * (q + 2 * kv) + q
    mlp = 3 * i
    working = tokens * (2 * h * b + h * norm_in + max(attention, mlp) * b)
    # saved by autograd with frozen weights: both norms' float32 inputs, attention's q, k, v
    # (k, v expanded to every head) and output, the MLP's gate, act(gate) and up
    saved = tokens * (2 * h * norm_in + (4 * q) * b + 3 * i * b)
    return working, saved


def _attention_scores(dims: Dims, shape: BatchShape, b: int, eager: bool) -> int:
    return shape.rows * dims.heads * shape.width * shape.width * max(b, 4) if eager else 0


def _forward_activations(dims: Dims, shape: BatchShape, b: int, eager: bool, *, keep_all_logits: bool) -> int:
    working, _ = _layer(dims, shape.padded, b)
    logits = (shape.padded if keep_all_logits else shape.rows) * dims.vocab * b
    return working + _attention_scores(dims, shape, b, eager) + logits


def kept_activations(dims: Dims, shape: BatchShape, b: int, eager: bool) -> int:
    """A gradient pass without recomputation: what every decoder layer keeps until the backward pass
    reaches it (autograd's saved tensors, and the probed modules' inputs, which their gradient hooks use)."""
    _, saved = _layer(dims, shape.padded, b)
    q = dims.heads * dims.head_dim
    held = saved + shape.padded * (2 * dims.hidden + q + dims.intermediate) * b
    return dims.layers * (held + _attention_scores(dims, shape, b, eager))


def gradient_rows(dims: Dims, lengths: Sequence[int], scored: Sequence[int], batch_size: int, *, b: int,
                  eager: bool, budget: int) -> int:
    """The most rows (at most ``batch_size``, at least 1) per gradient micro-batch whose
    ``kept_activations`` stay within ``budget`` bytes."""
    for rows in range(batch_size, 1, -1):
        if kept_activations(dims, batch_shape(lengths, scored, rows), b, eager) <= budget:
            return rows
    return 1


def _attribution_activations(dims: Dims, shape: BatchShape, b: int, eager: bool, forward: int):
    n = shape.padded
    working, saved = _layer(dims, n, b)
    # one recomputed layer: its saved tensors, plus the gradients flowing through it
    replay = saved + working + 2 * _attention_scores(dims, shape, b, eager)
    # logits at the kept columns (model dtype, and their gradient) and the float32
    # log-softmax at the scored positions (and its gradient)
    logits = 2 * shape.rows * shape.columns * dims.vocab * b + 3 * shape.scored * dims.vocab * 4
    acts = max(replay, forward) + logits
    return acts, "one layer recomputed at a time (saved tensors and gradients), logits at the scored columns"


# --------------------------------------------------------------------------- from checkpoints


def meta_model(config: dict, *, trust_remote_code: bool = False, root=None):
    """The model ``config`` describes, built on the ``meta`` device: shapes and module names, no data.

    With ``root`` (a model folder) the config is read from there, as loading
    would read it (custom code included when ``trust_remote_code``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise TransplantError("the model's config has no model_type; the memory plan cannot build it")
    try:
        if root is not None and (Path(root) / "config.json").exists():
            config_obj = AutoConfig.from_pretrained(str(root), trust_remote_code=trust_remote_code)
        else:
            config_obj = AutoConfig.for_model(model_type, **cfg)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config_obj, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise TransplantError(f"cannot build a {model_type} model from its config for the memory plan "
                              f"({type(error).__name__}: {error})") from None


class Planner:
    """Plans one analysis for any batch size and length, from headers, config and token lengths.

    ``lengths`` and ``scored`` are per workload sample: tokens fed to the model
    and positions scored (the tokenised workload; nothing is loaded).
    """

    def __init__(self, target, donor, *, score: str, also: Sequence[str] = (), lengths: Sequence[int],
                 scored: Sequence[int], modules: Optional[Sequence[str]] = None, include_embeddings: bool = False,
                 dtype: Optional[str] = None, device: str = "cpu", device_map: Optional[str] = None,
                 trust_remote_code: bool = False, model=None, measure: bool = True, recompute: bool = False,
                 greedy: bool = False, gradient_batch_size: Optional[int] = None):
        from mergekit_transplant.analysis.candidates import find_candidates

        self.score, self.also, self.recompute, self.greedy = score, list(also), recompute, greedy
        self.gradient_batch_size = gradient_batch_size
        self._rows: Dict[Optional[int], tuple] = {}  # max_length -> (batch size asked, gradient rows)
        self.lengths, self.scored = list(lengths), list(scored)
        self.device = device if not device_map else f"device map {device_map}"
        model = model if model is not None else meta_model(target.config, trust_remote_code=trust_remote_code,
                                                            root=target.root)
        cands, _ = find_candidates(model, target, donor, modules=modules, include_embeddings=include_embeddings)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        named = dict(model.named_modules())
        self.modules = [Module(d_out=target.tensors[c.tensor].shape[0], d_in=_d_in(target.tensors[c.tensor].shape),
                               stored=target.tensors[c.tensor].dtype, embedding=c.embedding,
                               head=named.get(c.module) is head)
                        for c in cands]
        self.dims = Dims.from_config(target.config)
        self.dtype = dtype or _stored_dtype(target)
        self.dtype_bytes = _BYTES.get(self.dtype, 4)
        self.weight_bytes = max(_weight_bytes(target, self.dtype_bytes), _weight_bytes(donor, self.dtype_bytes))
        self.eager = getattr(model.config, "_attn_implementation", None) == "eager"
        self.devices = 1
        self.baseline, self.free = (0, None)
        if measure:
            self.baseline, self.free, self.devices = _device_memory(device, device_map)

    def plan(self, batch_size: int, max_length: Optional[int] = None) -> MemoryPlan:
        lengths = self.lengths if max_length is None else [min(n, max_length) for n in self.lengths]
        plan = self._estimate(batch_size, lengths, self.gradient_rows(batch_size, max_length, lengths))
        if self.devices > 1:
            plan.notes.append("spread over the devices by the device map; each holds its layers' share")
        return plan

    def _estimate(self, batch_size: int, lengths: Sequence[int], rows: Optional[int]) -> MemoryPlan:
        return estimate(self.dims, self.weight_bytes, self.modules, batch_shape(lengths, self.scored, batch_size),
                        score=self.score, also=self.also, dtype_bytes=self.dtype_bytes, dtype=self.dtype,
                        device=self.device, devices=self.devices, baseline_bytes=self.baseline,
                        free_bytes=self.free, eager_attention=self.eager, batch_size=batch_size,
                        recompute=self.recompute, greedy=self.greedy,
                        gradient_shape=batch_shape(lengths, self.scored, rows) if rows else None, gradient_rows=rows)

    def gradient_rows(self, batch_size: int, max_length: Optional[int] = None,
                      lengths: Optional[Sequence[int]] = None) -> Optional[int]:
        """Rows per forward + backward micro-batch of the gradient scores (None: no gradient pass).

        ``--gradient-batch-size`` when given; with recomputation, the whole batch; else the most rows
        whose saved activations (``kept_activations``) stay within ``GRADIENT_BUDGET`` x the weights,
        and within what the device has free besides the plan's other items (when that is known).
        """
        if not {self.score, *self.also} & {"attribution", "gain"}:
            return None
        if self.gradient_batch_size:
            return min(self.gradient_batch_size, batch_size)
        if self.recompute:
            return batch_size
        asked, rows = self._rows.get(max_length, (0, 0))
        if batch_size > asked:  # fewer rows never hold more, so the answer for a larger batch bounds a smaller one
            if lengths is None:
                lengths = self.lengths if max_length is None else [min(n, max_length) for n in self.lengths]
            budget = int(GRADIENT_BUDGET * self.weight_bytes)
            if self.free is not None:  # and what the device can hold besides everything else
                one = self._estimate(batch_size, lengths, 1)
                rest = one.added_bytes - sum(i.bytes for i in one.items if i.name == "saved activations")
                budget = min(budget, max(self.free - rest, 0))
            rows = gradient_rows(self.dims, lengths, self.scored, batch_size, b=self.dtype_bytes, eager=self.eager,
                                 budget=budget)
            self._rows[max_length] = (batch_size, rows)
        return min(rows, batch_size)

    def advice(self, batch_size: int, max_length: int, min_length: int) -> Optional[str]:
        """``--recompute`` (gradient scores), else the largest ``--batch-size`` (else ``--max-length`` at
        batch 1) that fits, or None."""
        if not self.recompute and self.gradient_rows(batch_size, max_length):
            self.recompute = True
            try:
                if self.plan(batch_size, max_length).fits():
                    return "--recompute fits (each decoder layer recomputed in the backward pass)"
            finally:
                self.recompute = False
        for b in range(batch_size - 1, 0, -1):
            if self.plan(b, max_length).fits():
                return f"--batch-size {b} fits"
        longest = max(self.lengths)
        for length in range(min(max_length, longest) - 1, min_length - 1, -1):
            if self.plan(1, length).fits():
                return f"--batch-size 1 --max-length {length} fits"
        return None


def _d_in(shape) -> int:
    return int(shape[1]) if len(shape) > 1 else 1


def _stored_dtype(index) -> str:
    counts: Dict[str, int] = {}
    for t in index.all_tensors().values():
        name = _STORED.get(t.dtype)
        if name:
            counts[name] = counts.get(name, 0) + t.numel
    return max(counts, key=counts.get) if counts else "float32"


def _weight_bytes(index, dtype_bytes: int) -> int:
    total = 0
    for t in index.all_tensors().values():
        total += t.numel * (dtype_bytes if t.dtype in _STORED else _DT_BYTES.get(t.dtype, 1))
    return total


def _proc_field(path: str, key: str) -> Optional[int]:
    """A ``key: N kB`` line of a Linux ``/proc`` file, in bytes (None when absent)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    """This process's resident set now (Linux ``VmRSS``; 0 where unknown)."""
    return _proc_field("/proc/self/status", "VmRSS") or 0


def available_ram_bytes() -> Optional[int]:
    """Memory the kernel can give this process (``MemAvailable``), or None off Linux."""
    return _proc_field("/proc/meminfo", "MemAvailable")


def _device_memory(device: str, device_map: Optional[str]):
    """(baseline bytes, free bytes, devices) for the device the run uses."""
    import torch

    if device_map and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return 0, sum(torch.cuda.mem_get_info(i)[0] for i in range(n)), n
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return torch.cuda.memory_allocated(index), torch.cuda.mem_get_info(index)[0], 1
    if dev.type == "cpu":
        return current_rss_bytes(), available_ram_bytes(), 1
    return 0, None, 1
