"""The expert's Hub model card: base model, what was removed, how it was chosen, how to reproduce it."""

from __future__ import annotations

from typing import Dict, Optional

from mergekit_transplant._version import __version__
from mergekit_transplant.card.hub_ids import hub_id_for
from mergekit_transplant.card.markdown import md_code, md_text
from mergekit_transplant.unplug.report import REPORT_FILE, UnplugReport

TAGS = ["pruning", "task-expert", "mergekit-transplant"]
METHOD_URL = "https://arxiv.org/abs/2404.11916"
HOW = {
    "attribution": "attribution Σ|a_j · ∂ log p(continuation) / ∂a_j| (DoE), summed over the workload's scored "
                   "positions, one forward and one backward pass per batch",
    "activation": "mean activation magnitude Σ|a_j| over the workload's scored positions",
    "wanda": "Σ|a_j| · ‖W_down[:, j]‖ over the workload's scored positions (Wanda-style)",
    "random": "a seeded random draw (a control, not a task expert)",
}


def build_unplug_card(report: UnplugReport, *, name: str, hub_id: Optional[str] = None,
                      command: Optional[str] = None) -> str:
    """README.md text; ``base_model`` is the Hub id of the base (``hub_id`` for a local folder), else left out."""
    from huggingface_hub import ModelCard, ModelCardData

    repo, _how = hub_id_for(report.base, {report.base: hub_id} if hub_id else {})
    data = ModelCardData(base_model=repo or None, library_name="transformers", tags=list(TAGS),
                         pipeline_tag="text-generation")
    removed = report.intermediate_size - report.kept_size
    params = report.parameters
    share = ""
    if params.get("base"):
        share = (f" The model has {params['expert']:,} parameters, {100 * params['expert'] / params['base']:.1f}% "
                 f"of the base's {params['base']:,}.")
    base_shown = f"[{md_code(repo)}](https://huggingface.co/{repo})" if repo else md_code(report.base)
    wl = report.workload
    share_kept = report.score_kept_share
    kept_line = ""
    if share_kept and report.score != "random":
        kept_line = (f" The kept neurons hold {100 * min(share_kept):.1f}% to {100 * max(share_kept):.1f}% of each "
                     f"layer's total {report.score} score.")
    lines = [
        f"# {md_text(name)}",
        "",
        f"A task expert of {base_shown}: every MLP neuron the task does not use was unplugged "
        f"([DoE, arXiv 2404.11916]({METHOD_URL})) by "
        f"[mergekit-transplant](https://github.com/mergekit-transplant/mergekit-transplant) ({__version__}). "
        "It is a stock transformers model with a smaller `intermediate_size`: no custom code, no masks. "
        "No training was involved.",
        "",
        "## What was removed",
        "",
        f"In each of the {report.num_layers} decoder layers, {removed} of the {report.intermediate_size} MLP neurons "
        f"(channels of the input to `down_proj`, act(gate)·up): every layer keeps the same {report.kept_size} "
        f"(keep ratio {report.keep:g}). Their rows of the gate and up projections and their columns of "
        f"`down_proj` are gone; every other tensor is byte-identical to the base's.{share}",
        "",
        "## How they were chosen",
        "",
        f"Ranked within each layer by {HOW[report.score]}"
        + (f", seed {report.seed}" if report.score == "random" else "")
        + f", on the workload {md_code(wl.get('path'))} ({wl.get('n')} samples, sha256 `{wl.get('sha256')}`)."
        + kept_line,
        "",
        f"`{REPORT_FILE}` in this folder lists the kept neuron indices of every layer. With it the base model can "
        "serve this expert without loading a second copy:",
        "",
        "```python",
        "from mergekit_transplant.unplug import unplugged",
        "",
        f"with unplugged(base_model, \"{REPORT_FILE}\"):",
        "    ...  # the base runs as this expert; its own tensors are restored on exit",
        "```",
        "",
        "## Limits",
        "",
        "An expert is only as good as its workload: tasks the workload did not exercise may have lost the "
        "neurons they need. Evaluate it on what you will serve, and on what it must not forget "
        "(`mergekit-transplant unplug sweep --retain-tasks ...`).",
    ]
    if command:
        lines += ["", "## Reproduce", "", "```bash", command, "```"]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    ModelCard(text)  # parse what we wrote: fails loudly if it is not a valid card
    return text


def card_metadata(text: str) -> Dict:
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()
