"""Helpers for the demo lm-eval tasks.

``load_local_json`` is used as ``custom_dataset``: it resolves the task's
``dataset_kwargs.data_files`` relative to THIS folder, so the tasks work from any
working directory (lm-eval / ``datasets`` would otherwise resolve them against the CWD).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _resolve(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else HERE / p)


def load_local_json(data_files=None, **kwargs) -> datasets.DatasetDict:
    """Load ``{split: jsonl path}`` (paths relative to demo/tasks/) as a DatasetDict."""
    if isinstance(data_files, str):
        data_files = {"test": data_files}
    if not data_files:
        raise ValueError("dataset_kwargs.data_files is required")
    out = {}
    for split, path in data_files.items():
        with open(_resolve(path)) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(out)
