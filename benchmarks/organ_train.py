"""Benchmark ``organ train`` against full fine-tuning and LoRA on a ~100M-parameter Llama on the CPU.

Each method runs as its own process (so peak RSS is that method's alone), the
methods are interleaved over ``--repeats`` rounds and medians are reported,
so that load from other users of a shared machine hits them alike. Every
method trains under the same loop (``organ.training.trainer.run_steps``):
same steps, batch, sequence length, data order and learning-rate schedule.

- ``organ``: ``train_organ`` with ``--layers auto`` (3 layers from ⌊L/3⌋);
- ``full``: full fine-tuning; ``lora``: peft LoRA r=8 on all linear modules
  (``organ.training.baselines``).

Tokens/s is tokens trained / the training loop's wall time (model loading,
data packing and writing are excluded; the first step is included).

Goals (issue 12), with the verdicts computed and printed:

1. organ tokens/s ≥ 1.5 × full fine-tuning's (no gradient flows below the block);
2. organ peak RSS ≤ idle + model + 4 × block + activations, where
   *idle* is the peak RSS of a process that imports what ``train_organ``
   imports (torch, transformers' Llama, accelerate with an ``Accelerator``,
   mergekit-transplant's loading, model check, workload reader and writer)
   and loads no model and no data; *model* the bytes of
   every parameter; *block* the bytes of the block's parameters (its
   gradient and AdamW's two moments are 3 of the 4); *activations* the peak
   RSS of a probe process that loads the model, freezes all but the block and
   runs one forward and backward pass of one batch, minus that process's RSS
   just before the pass (so it holds what autograd keeps for the backward, the
   logits, the block's gradients and the allocator's slack).

    flock /work/cpu.lock python benchmarks/organ_train.py [--steps 3] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, mib, run_measured, write_json  # noqa: E402

SHAPE = dict(hidden=768, layers=14, intermediate=2048, heads=12, kv_heads=4, vocab_size=8192, max_positions=512)
#: ``--smoke``: a tiny model, to check the script end to end in seconds (its figures mean nothing)
SMOKE = dict(hidden=64, layers=4, intermediate=128, heads=4, kv_heads=2, vocab_size=96, max_positions=512)
METHODS = ("organ", "full", "lora")


def build(cache: Path, smoke: bool = False) -> Path:
    from mergekit_transplant.testing import WORDS, make_model

    model = cache / ("llama-smoke" if smoke else "llama-100m")
    if not (model / "model.safetensors").exists():
        print(f"building the model in {model} (once)", flush=True)
        make_model(model, "llama", seed=0, **(SMOKE if smoke else SHAPE))
    corpus = cache / "corpus.txt"
    if not corpus.exists():
        rng = random.Random(0)
        corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(400)) + "\n")
    return model


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def settings(args, out: str):
    from mergekit_transplant.organ.training import OrganTrainSettings

    return OrganTrainSettings(model=args.model, corpus=args.corpus, output=out, layers="auto", steps=args.steps,
                              batch_size=args.batch_size, max_length=args.max_length, lr=1e-4, device="cpu",
                              overwrite=True)


def worker(args) -> None:
    """One method in this process; prints its figures as JSON on the last line."""
    import torch

    torch.set_num_threads(args.threads)
    from mergekit_transplant.organ.training import train_organ
    from mergekit_transplant.organ.training.baselines import train_baseline

    out = {}
    if args.worker == "idle":  # everything train_organ imports and sets up, but no model and no data
        from accelerate import Accelerator
        from transformers.models.llama import modeling_llama  # noqa: F401

        import mergekit_transplant.evaluation.compare  # noqa: F401  (check_model)
        import mergekit_transplant.loading  # noqa: F401
        import mergekit_transplant.organ.training.writer  # noqa: F401
        from mergekit_transplant.analysis.workload import load_workload  # noqa: F401

        Accelerator(cpu=True)
    elif args.worker == "probe":
        from accelerate import Accelerator

        from mergekit_transplant.loading import load_causal_lm
        from mergekit_transplant.organ.training.blocks import layer_prefix, parse_layers
        from mergekit_transplant.organ.training.trainer import freeze_all_but

        model, _ = load_causal_lm(args.model, device="cpu", with_tokenizer=False)
        model.config.use_cache = False
        names = [n for n, _ in model.named_parameters()]
        prefix, layers = layer_prefix(names)
        block = parse_layers("auto", layers, prefix)
        params = freeze_all_but(model, block)
        Accelerator(cpu=True)
        model.train()
        batch = torch.randint(0, 60, (args.batch_size, args.max_length))
        before = _rss_now()
        model(input_ids=batch, labels=batch).loss.backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = {"rss_before_pass": before, "peak": peak, "activations": peak - before,
               "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
               "block_bytes": sum(p.numel() * p.element_size() for _, p in params),
               "block": [block.start, block.end]}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            s = settings(args, str(Path(tmp) / "out"))
            if args.worker == "organ":
                r = train_organ(s, progress=False, log=lambda m: None).record
                out = {"tokens_per_s": r.tokens_per_s, "tokens": r.tokens_trained,
                       "trainable": r.trainable_parameters, "time_s": r.wall_time_s}
            else:
                r = train_baseline(s, args.worker, rank=8, save=False)
                out = {"tokens_per_s": r.tokens_per_s, "tokens": r.tokens_trained,
                       "trainable": r.trainable_parameters, "time_s": r.train_time_s}
    print(json.dumps(out))


def measure(args, kind: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--corpus", args.corpus,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--threads", str(args.threads)]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        m = run_measured(["sh", "-c", " ".join(f"'{c}'" for c in cmd) + f" > {result.name}"], quiet=False,
                         env={"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        lines = [l for l in Path(result.name).read_text().splitlines() if l.startswith("{")]
    if m.returncode != 0 or not lines:
        raise SystemExit(f"{kind} failed (exit {m.returncode})")
    return {**json.loads(lines[-1]), "peak_rss": m.peak_rss_bytes, "wall_s": m.wall_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mergekit-transplant-bench" / "organ")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the three methods")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (1: stable on a shared machine)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny model: checks the script, measures nothing")
    ap.add_argument("--worker", choices=METHODS + ("idle", "probe"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    args.model = str(build(args.cache, args.smoke))
    args.corpus = str(args.cache / "corpus.txt")
    print(f"machine: {machine()}", flush=True)
    rounds = {k: [] for k in METHODS + ("idle", "probe")}
    plan = [METHODS if i % 2 == 0 else tuple(reversed(METHODS)) for i in range(args.repeats)]
    plan.append(("idle", "probe"))  # memory only: once (RSS does not depend on the machine's load)
    for i, kinds in enumerate(plan):
        for kind in kinds:
            r = measure(args, kind)
            rounds[kind].append(r)
            print(f"round {i + 1} {kind}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "block"), flush=True)

    def med(kind, key):
        return statistics.median(r[key] for r in rounds[kind])

    tps = {k: med(k, "tokens_per_s") for k in METHODS}
    rss = {k: med(k, "peak_rss") for k in METHODS}
    idle = med("idle", "peak_rss")
    probe = rounds["probe"][0]
    activations = med("probe", "activations")
    budget = idle + probe["model_bytes"] + 4 * probe["block_bytes"] + activations
    speedup = tps["organ"] / tps["full"]
    print("\n| method | trainable params | tokens/s (median) | peak RSS MiB (median) |\n|---|---:|---:|---:|")
    for k in METHODS:
        print(f"| {k} | {rounds[k][0]['trainable']:,} | {tps[k]:.1f} | {mib(rss[k])} |")
    print(f"\nblock: layers {probe['block'][0]}-{probe['block'][1]}; model {mib(probe['model_bytes'])} MiB, block "
          f"{mib(probe['block_bytes'])} MiB, idle {mib(idle)} MiB, activations {mib(activations)} MiB")
    ok1 = speedup >= 1.5
    ok2 = rss["organ"] <= budget
    print(f"goal 1 (organ >= 1.5x full fine-tuning tokens/s): {speedup:.2f}x -> {'PASS' if ok1 else 'FAIL'}")
    print(f"goal 2 (organ peak RSS <= idle + model + 4 x block + activations = {mib(budget)} MiB): "
          f"{mib(rss['organ'])} MiB -> {'PASS' if ok2 else 'FAIL'}")
    print(f"also: LoRA r=8 tokens/s = {tps['lora'] / tps['full']:.2f}x full; organ = {tps['organ'] / tps['lora']:.2f}x LoRA")
    if args.json:
        write_json(args.json, {"machine": machine(), "settings": {k: v for k, v in vars(args).items()
                                                                   if k not in ("json", "cache")},
                               "rounds": rounds, "tokens_per_s": tps, "peak_rss": rss, "idle": idle,
                               "activations": activations, "budget": budget, "speedup_vs_full": speedup,
                               "goal_speed": ok1, "goal_rss": ok2})


if __name__ == "__main__":
    main()
