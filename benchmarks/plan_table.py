"""The memory plan on paper for real architectures: which GPU each analysis needs.

Each model is built on the ``meta`` device from its published config
(``mergekit_transplant.analysis.paper.PUBLISHED``; no weights, no Hub), and
the plan of ``analyze --score S`` is computed for a uniform batch (default
8 x 512 tokens, the last 64 of each row scored, bf16). For each case the
table gives the plan's items, the smallest single GPU whose memory holds the
plan, and how many GPUs of a given size ``--device-map auto`` needs: the
weights and what attribution keeps for its backward pass (every layer's saved
activations for one micro-batch, or with ``--recompute`` each layer's input)
are spread over the GPUs with the layers; every other item is counted on each
GPU (an upper bound). On paper no free memory is known, so the micro-batches
are sized by ``GRADIENT_BUDGET`` x the weights alone; on a device, ``analyze``
also keeps them within its free memory.

Not counted: the CUDA context (about 0.5 GiB per GPU) and the caching
allocator's slack, so leave ~10% headroom.

    python benchmarks/plan_table.py [--batch 8] [--length 512] [--scored 64]
"""

from __future__ import annotations

import argparse

GIB = 1024 ** 3
#: common GPUs by memory (GiB as the vendor sells it, GB = 10^9 bytes)
GPUS = [("24 GB (L4, RTX 4090)", 24e9), ("48 GB (L40S, A6000)", 48e9), ("80 GB (A100, H100)", 80e9),
        ("141 GB (H200)", 141e9)]


def gpus_needed(plan, memory: float) -> int:
    """The fewest GPUs of ``memory`` bytes that hold the plan with the layers spread over them (0: none do)."""
    for n in range(1, 65):
        if plan.per_device_bytes(n) <= memory:
            return n
    return 0


def main() -> None:
    from mergekit_transplant.analysis.paper import PUBLISHED, plan_on_paper

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--scored", type=int, default=64, help="scored positions per row (continuation tokens)")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    print(f"batch {args.batch} x {args.length} tokens ({args.scored} scored per row), {args.dtype}; GiB\n")
    print("| model | score | gradient rows | weights | streamed | kept for backward | activations | score buffers | "
          "total | one GPU | `--device-map auto`: 24 GB / 48 GB / 80 GB GPUs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name in PUBLISHED:
        for score, recompute in (("attribution", False), ("attribution", True), ("local", False),
                                 ("activation", False)):
            plan = plan_on_paper(name, score=score, batch=args.batch, length=args.length,
                                 scored_per_row=args.scored, dtype=args.dtype, recompute=recompute)
            items = {i.name: i.bytes for i in plan.items}
            one = next((label for label, mem in GPUS if plan.added_bytes <= mem), "none: use several")
            counts = " / ".join(str(gpus_needed(plan, mem) or "-") for _, mem in GPUS[:3])
            kept = items.get("saved activations", 0) + items.get("layer inputs", 0)
            cells = [items.get("weights", 0), items.get("streamed tensors", 0), kept, items.get("activations", 0),
                     items.get("score buffers", 0)]
            label = score + (" --recompute" if recompute else "")
            print(f"| {name.split('/')[-1]} | {label} | {plan.gradient_batch_size or '-'} | "
                  + " | ".join(f"{c / GIB:.1f}" for c in cells)
                  + f" | {plan.added_bytes / GIB:.1f} | {one} | {counts} |")


if __name__ == "__main__":
    main()
