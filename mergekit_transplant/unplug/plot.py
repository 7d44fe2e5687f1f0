"""Accuracy vs keep ratio: one line per score, the random band, the full model; retain tasks beside it."""

from __future__ import annotations

import os

from mergekit_transplant.sweep.plot import PANEL_HEIGHT, finish_figure
from mergekit_transplant.unplug.sweep import UnplugSweepResult

COLORS = {"attribution": "tab:blue", "activation": "tab:orange", "wanda": "tab:green"}


def plot_unplug_sweep(result: UnplugSweepResult, path: os.PathLike | str) -> None:
    """Report split (and retain tasks, when given) vs keep; the chosen point is starred."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    roles = ["report"] + (["retain"] if "retain" in result.labels else [])
    keeps = result.keeps
    width = max(6.4, 4.8 * len(roles))
    fig, axes = plt.subplots(1, len(roles), figsize=(width, PANEL_HEIGHT), sharey=True, squeeze=False)
    best = result.best()
    for ax, role in zip(axes[0], roles):
        label = result.labels[role]
        if "random" in result.scores:
            bands = [result.band(k, role) for k in keeps]
            n = max(b["n"] for b in bands)
            ax.fill_between(keeps, [b["min"] for b in bands], [b["max"] for b in bands], color="tab:gray",
                            alpha=0.25, label=f"random (min–max, {n} seeds)")
            ax.plot(keeps, [b["mean"] for b in bands], color="tab:gray", linestyle="--", linewidth=1,
                    label="random mean")
        for score in result.scores:
            if score == "random":
                continue
            ax.plot(keeps, [result.value(score, k, role) for k in keeps], marker="o",
                    color=COLORS.get(score), label=score)
        full = result.full.split_scores.get(label)
        if full is not None:
            ax.axhline(full, color="black", linestyle=":", linewidth=1, label="full model")
        if role == "report":
            ax.plot([best.keep], [best.split_scores.get(label)], marker="*", markersize=14, color="tab:red",
                    linestyle="none", label=f"best {best.score} keep (chosen on select split)")
        ax.set_xticks(keeps)
        ax.set_xticklabels([f"{k:g}" for k in keeps])
        ax.set_xlabel("keep ratio (MLP neurons kept per layer)")
        ax.set_title(f"{role}: {label}", fontsize=9)
        ax.grid(alpha=0.3)
    metric = ", ".join(sorted(set(result.metrics[t] for t in result.splits["report"])))
    direction = "higher" if result.higher_is_better else "lower"
    axes[0][0].set_ylabel(f"{metric} ({direction} is better)")
    finish_figure(fig, axes, width, f"Task experts of {os.path.basename(str(result.settings['model']).rstrip('/'))}",
                  path)
