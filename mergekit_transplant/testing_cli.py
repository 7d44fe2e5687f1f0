"""Running the command line in tests: in process, as the installed console script, and its error contract.

Shared by the suite's reliability, exit-code, interrupt and command tests
(docs/reliability.md): a recipe text to feed ``check``/``merge``, the two
ways to run the CLI, and the checks every bad-input test makes (one
``error:`` line, exit 2, no traceback, nothing half-written).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

#: the tensor a default ``recipe`` transplants
DOWN0 = "model.layers.0.mlp.down_proj.weight"


def console_script(name: str = "mergekit-transplant") -> str:
    """An installed console script: beside the running interpreter (its venv), else on PATH.

    Never a path inside the checkout: the suite runs the same from any venv,
    any working folder, and outside ``make test``.
    """
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed beside {sys.executable} nor on PATH; pip install -e . first")
    return found


def recipe(target, donor, filters=((DOWN0, 1.0),), *, extra: str = "", catch_all: float = 0.0) -> str:
    """A transplant recipe: ``filters`` ((tensor filter, strength), ...) from ``donor``, then ``catch_all``."""
    lines = "".join(f"        - filter: {f}\n          value: {v}\n" for f, v in filters)
    return (
        f"merge_method: transplant\nbase_model: {target}\nmodels:\n  - model: {donor}\n"
        f"    parameters:\n      strength:\n{lines}        - value: {catch_all}\n{extra}"
    )


def invoke(args: List, **kwargs):
    """Run the CLI in process (click's CliRunner); return (exit code, stdout+stderr)."""
    from click.testing import CliRunner

    from mergekit_transplant.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    return result.exit_code, result.output


def run_cli(args: List, env: Dict[str, str] | None = None, timeout: float = 300, **kwargs):
    """Run the real console script (progress bars off); return the CompletedProcess."""
    full_env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([console_script(), *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, **kwargs)


def leftovers(folder: Path) -> List[str]:
    """Hidden temp files/folders the atomic writers would leave behind if they failed."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


def assert_clean_error(code: int, output: str, *needles: str) -> None:
    """Exit 2, an ``error:`` line, no traceback, and every needle in the message (not in lines before it)."""
    assert code == 2, output
    assert "error: " in output.lower(), output
    assert "Traceback" not in output, output
    message = output[output.lower().find("error:"):]  # not the paths printed before it
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{output}"


def tree(folder: Path) -> Dict[str, tuple]:
    """Every file under ``folder`` with its size and mtime, to prove nothing changed."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def default_sigint() -> None:
    """``preexec_fn`` for a child that must die on SIGINT: a shell's background job may start with SIGINT
    ignored; users' terminals do not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
