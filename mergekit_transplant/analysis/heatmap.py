"""A layers x module-type heatmap of the chosen score, selected units outlined.

Where the donor's advantage sits is easier to see than to read: a column
lighting up (say ``mlp.down_proj`` in every layer) or a band of layers tells
you more than a ranked list. Modules outside numbered layers (embeddings,
the head) are left out of the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from mergekit_transplant.atomic import replacing
from mergekit_transplant.errors import TransplantError


def check_plot_path(path: Union[str, Path]) -> None:
    """Fail before any work if matplotlib is missing or cannot write ``path``'s format."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise TransplantError("--plot needs matplotlib: pip install 'mergekit-transplant[plot]'") from None
    suffix = Path(path).suffix.lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise TransplantError(f"--plot {path}: cannot write a {('.' + suffix) if suffix else 'suffix-less'} image; "
                              f"use one of {', '.join('.' + f for f in sorted(formats))}")


def plot_heatmap(report: dict, path: Union[str, Path], *, score: str = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise TransplantError("--plot needs matplotlib: pip install 'mergekit-transplant[plot]'") from None
    check_plot_path(path)
    score = score or report["settings"]["score"]
    cands = [c for c in report["candidates"] if c["layer"] is not None]
    if not cands:
        raise TransplantError("--plot: no candidate sits in a numbered layer, nothing to draw")
    layers = sorted({c["layer"] for c in cands})
    kinds = sorted({c["kind"] for c in cands}, key=_kind_order)
    import numpy as np

    grid = np.full((len(layers), len(kinds)), np.nan)
    for c in cands:
        grid[layers.index(c["layer"]), kinds.index(c["kind"])] = c["scores"][score]
    selected_units = set(report["selected"]["units"])
    layered = "layers" in report
    selected_layers = {u["layer"] for u in report.get("layers", []) if u["prefix"] in selected_units}

    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 3.0, 0.32 * len(layers) + 2.2))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"{score} score")
    ax.set_xticks(range(len(kinds)), kinds, rotation=40, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    for c in cands:
        row, col = layers.index(c["layer"]), kinds.index(c["kind"])
        if (not layered and c["tensor"] in selected_units) or (layered and c["layer"] in selected_layers):
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    settings = report["settings"]
    ax.set_title(f"{score} score by module (red: selected), {settings['capture']}, "
                 f"n={settings['workload']['n']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=110)
    plt.close(fig)
    return path


def _kind_order(kind: str):
    """Attention before MLP, projections in their usual order."""
    order = ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj"]
    last = kind.rsplit(".", 1)[-1]
    group = 0 if "attn" in kind else 1 if "mlp" in kind else 2
    return (group, order.index(last) if last in order else len(order), kind)
