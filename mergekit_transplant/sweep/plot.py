"""Score vs K: the analysis line against the random-control band and whole-model line."""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_transplant import atomic
from mergekit_transplant.sweep.runner import SweepResult

PANEL_HEIGHT = 4.4  # inches, panels and titles
LEGEND_ROW_HEIGHT = 0.2  # inches per legend row at fontsize 8
LEGEND_COLUMN_WIDTH = 2.6  # inches a legend column needs for the longest label at fontsize 8


def plot_sweep(result: SweepResult, path: os.PathLike | str) -> None:
    """One panel per strength, on the report split; the best point is starred."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    label = result.split_labels["report"]
    ks = result.settings.ks
    strengths = result.settings.strengths
    best = result.best()
    target = result.references["target"].split_scores[label]
    donor = result.references["donor"].split_scores[label]
    width = max(6.4, 4.8 * len(strengths))
    fig, axes = plt.subplots(1, len(strengths), figsize=(width, PANEL_HEIGHT), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], strengths):
        analysis = [result.of("analysis", k, s)[0].split_scores[label] for k in ks]
        bands = [result.band(k, s) for k in ks]
        if any(b["n"] for b in bands):
            lo = [b["min"] for b in bands]
            hi = [b["max"] for b in bands]
            ax.fill_between(ks, lo, hi, color="tab:gray", alpha=0.25, label=f"random (min–max, n={bands[0]['n']})")
            ax.plot(ks, [b["mean"] for b in bands], color="tab:gray", linestyle="--", linewidth=1, label="random mean")
        ax.plot(ks, analysis, marker="o", color="tab:blue", label="analysis top-K")
        whole = result.whole_model_score(s)
        if whole is not None:
            ax.axhline(whole, color="tab:purple", linestyle="-.", linewidth=1, label=f"whole-model lerp s={s:g}")
        if target is not None:
            ax.axhline(target, color="black", linestyle=":", linewidth=1, label="target")
        if donor is not None:
            ax.axhline(donor, color="tab:green", linestyle=":", linewidth=1, label="donor")
        if best.strength == s:
            ax.plot([best.k], [best.split_scores[label]], marker="*", markersize=14, color="tab:red",
                    linestyle="none", label="best (chosen on select split)")
        if len(ks) > 1 and ks[-1] / ks[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("K (modules transplanted)")
        ax.set_title(f"strength {s:g}")
        ax.grid(alpha=0.3)
    metric = ", ".join(sorted(set(result.metrics[t] for t in result.splits["report"])))
    direction = "higher" if result.higher_is_better else "lower"
    axes[0][0].set_ylabel(f"{label}: {metric} ({direction} is better)")
    title = f"Sweep on {label}"
    if result.settings.single_split:
        title += " (same split used for selection: optimistic)"
    finish_figure(fig, axes, width, title, path)


def finish_figure(fig, axes, width: float, title: str, path: os.PathLike | str) -> None:
    """Legend below the panels (inside the image), title, and an atomic save in the path's format."""
    import matplotlib.pyplot as plt

    handles, names = [], []
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    # as many legend columns as the figure's width holds, and the figure made taller by the legend's rows,
    # so the legend sits below the panels, inside the image, whatever the number of strengths
    ncol = max(1, min(4, len(names), int(width // LEGEND_COLUMN_WIDTH)))
    rows = -(-len(names) // ncol)
    legend_height = LEGEND_ROW_HEIGHT * rows + 0.1
    fig.set_size_inches(width, PANEL_HEIGHT + legend_height)
    fig.legend(handles, names, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, legend_height / (PANEL_HEIGHT + legend_height), 1, 1))
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic.replacing(path) as tmp:
        # bbox_inches="tight" grows the canvas to whatever was drawn: nothing is ever cut at the edges
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
