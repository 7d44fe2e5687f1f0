"""``-v/--verbose`` and ``-q/--quiet``: how much one invocation prints, given before or after the command name.

mergekit's convention (``mergekit-yaml -v``: INFO, ``-vv``: DEBUG; ``--quiet``:
no progress bars), extended to what this plugin drives:

- ``--quiet``: no progress bars and no informational lines. stderr keeps only
  ``warning:`` and ``error:`` lines; stdout (tables, ``wrote`` summaries of
  commands that print them there) is the same as without it.
- default: this plugin's own progress bars and informational lines.
  lm-eval's per-request bars and its log lines (below ERROR), and
  transformers' weight-loading bars, are hidden: they are the inner loops of
  one step the plugin already reports.
- ``-v``: those too, and every library's INFO log lines; ``-vv``: DEBUG.

The flags set one state for the whole invocation (``mergekit-transplant -v
eval ...`` and ``mergekit-transplant eval ... -v`` are the same; repeats add
up). Commands that take mergekit's own options (``merge``, ``organ apply``)
keep mergekit's ``-v`` and ``--quiet/--no-quiet`` and combine them with the
group's. The library reads the level from the ``mergekit_transplant``
logger (``lm_eval_output`` in ``evaluation/runner.py``), so Python callers get
the same behaviour from ``logging.getLogger("mergekit_transplant").setLevel``.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Dict, List, Tuple

import click

#: the invocation's flags; reset per invocation by ``reset`` (cli/__init__.py's LazyGroup.make_context)
_STATE: Dict[str, Any] = {"verbose": 0, "quiet": False}
#: (logger name, level before this invocation) to restore afterwards, and toggles to undo
_SAVED: List[Tuple[str, int]] = []
_UNDO: List[Any] = []

LOGGER = "mergekit_transplant"
FORMAT = "%(levelname)s:%(name)s:%(message)s"  # logging.basicConfig's, as mergekit-yaml -v prints


def reset() -> None:
    _STATE.update(verbose=0, quiet=False)


def quiet() -> bool:
    """True under ``--quiet``: no progress bars, no informational lines."""
    return bool(_STATE["quiet"])


def verbose() -> int:
    """How many ``-v`` were given (0 by default)."""
    return int(_STATE["verbose"])


def info(message: str) -> None:
    """An informational line on stderr (what is being done, what was written); dropped under ``--quiet``."""
    if not quiet():
        click.echo(message, err=True)


def _set(ctx, param, value):
    if param.name == "verbose":
        _STATE["verbose"] += int(value or 0)
    elif value:
        _STATE["quiet"] = True
    if _STATE["quiet"] and _STATE["verbose"]:
        raise click.UsageError("--quiet and -v/--verbose contradict each other; pass one of them", ctx=ctx)
    return value


def verbose_option(f):
    return click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True, callback=_set,
                        help="Also show lm-eval's and transformers' progress bars and INFO log lines "
                             "(-vv: DEBUG).")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True, callback=_set,
                        help="No progress bars or informational lines: only results, warnings and errors.")(f)


def _taken(cmd: click.Command) -> set:
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


def attach(cmd: click.Command) -> click.Command:
    """Give ``cmd`` (and, for a group, each of its commands) the flags, and configure output before it runs.

    A command that already has ``-v`` or ``--quiet`` (mergekit's options) keeps its own.
    """
    if getattr(cmd, "_verbosity_attached", False):
        return cmd
    taken = _taken(cmd)  # click.option on a Command appends to its params
    if not taken & {"-v", "--verbose"}:
        verbose_option(cmd)
    if not taken & {"-q", "--quiet"}:
        quiet_option(cmd)
    invoke = cmd.invoke

    @functools.wraps(invoke)
    def configured(ctx):
        configure()
        return invoke(ctx)

    cmd.invoke = configured  # type: ignore[method-assign]
    cmd._verbosity_attached = True  # type: ignore[attr-defined]
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            attach(sub)
    return cmd


def merged_with(options):
    """mergekit's ``MergeOptions`` with the group's ``-v``/``--quiet`` added to its own; output configured."""
    update = {"verbosity": options.verbosity + verbose(), "quiet": options.quiet or quiet()}
    if update["verbosity"] and update["quiet"]:
        raise click.UsageError("--quiet and -v/--verbose contradict each other; pass one of them")
    _STATE.update(verbose=update["verbosity"], quiet=update["quiet"])
    configure()
    return options.model_copy(update=update)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (click's test runner swaps it), as ``logging.lastResort``."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _level(name: str, level: int) -> None:
    logger = logging.getLogger(name)
    _SAVED.append((name, logger.level))
    logger.setLevel(level)


def configure() -> None:
    """Apply the invocation's level to logging and to the libraries' progress bars (undone by ``restore``)."""
    restore()
    v, q = verbose(), quiet()
    level = logging.DEBUG if v >= 2 else logging.INFO if v == 1 else logging.WARNING
    _level(LOGGER, level)
    _level("lm_eval", level if v else logging.ERROR)
    if v:
        root = logging.getLogger()
        _level("", min(level, root.level or logging.WARNING))
        if not any(isinstance(h, _Stderr) for h in root.handlers):
            handler = _Stderr()
            root.addHandler(handler)
            _UNDO.append(lambda: root.removeHandler(handler))
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled() and not v:
        hf_logging.disable_progress_bar()
        _UNDO.append(hf_logging.enable_progress_bar)
    if q:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            _UNDO.append(enable_progress_bars)


def restore() -> None:
    """Put logging levels and progress-bar switches back as they were before ``configure``."""
    while _UNDO:
        _UNDO.pop()()
    while _SAVED:
        name, level = _SAVED.pop()
        logging.getLogger(name).setLevel(level)
