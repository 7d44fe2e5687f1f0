"""``mergekit-transplant``: a thin click layer over the Python API.

Commands are imported only when invoked, so ``--help`` stays fast and torch is
loaded only by commands that need it. Every command accepts ``--debug``,
``-v/--verbose`` and ``-q/--quiet`` (cli/verbosity.py); a ``TransplantError``
becomes ``error: ...`` on stderr with exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from mergekit_transplant import __version__
from mergekit_transplant.cli import verbosity

#: command name -> "module:attribute" (one module per command under cli/)
COMMANDS = {
    "analyze": "mergekit_transplant.cli.analyze:analyze",
    "card": "mergekit_transplant.cli.card:card",
    "check": "mergekit_transplant.cli.check:check",
    "eval": "mergekit_transplant.cli.evaluate:evaluate",
    "export": "mergekit_transplant.cli.export:export",
    "merge": "mergekit_transplant.cli.merge:merge",
    "organ": "mergekit_transplant.cli.organ:organ",
    "publish": "mergekit_transplant.cli.publish:publish",
    "sweep": "mergekit_transplant.cli.sweep:sweep",
    "unplug": "mergekit_transplant.cli.unplug:unplug",
}
HELP = {
    "analyze": "Find the modules that carry the donor's advantage; write a recipe.",
    "card": "Write or update the Hub model card of a merged model folder.",
    "check": "Pre-flight check of a recipe from headers only (no weights read).",
    "export": "Rewrite a recipe for plain mergekit (--stock): the same merge, no plugin.",
    "eval": "lm-eval scores of target, donor and merged model, with TIR and Recovery.",
    "merge": "Check a recipe, then run it with mergekit's own merge options.",
    "organ": "Organ files: extract, train (one layer block), verify and apply them.",
    "publish": "Verify a merged model folder and upload it to the Hub.",
    "sweep": "Sweep K and strength in memory against random-module controls.",
    "unplug": "Remove the MLP neurons a task does not use: a smaller task expert (and its sweep).",
}

_DEBUG = {"on": False}


def _set_debug(ctx, param, value):
    if value:
        _DEBUG["on"] = True
    return value


def debug_option(f):
    return click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
        help="Show full tracebacks on error.",
    )(f)


def _close_progress_bars() -> None:
    """Close the bars an interrupt left open, so that the last line is ours, not half a bar."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar's own failure must not hide the interrupt
            pass


def _quiet_unraisable(unraisable) -> None:
    """Drop the 'Exception ignored in __del__' traceback an interrupt can cause.

    The interrupt still takes effect: atomic writes refuse to commit after it.
    """
    if _DEBUG["on"] or not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


class LazyGroup(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        _DEBUG["on"] = False  # per invocation: a --debug run must not leak into the next (tests, embedding)
        verbosity.reset()
        return super().make_context(info_name, args, parent=parent, **extra)

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        module, attr = spec.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not any(p.name == "debug" for p in cmd.params):
            debug_option(cmd)
        return verbosity.attach(cmd)

    def format_commands(self, ctx, formatter):
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from mergekit_transplant.atomic import interrupts_unwind
        from mergekit_transplant.errors import TransplantError

        previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
        try:
            with interrupts_unwind():
                return super().invoke(ctx)
        except TransplantError as error:
            if _DEBUG["on"]:
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            if _DEBUG["on"]:
                raise
            _close_progress_bars()
            click.echo("interrupted: nothing was half-written", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:  # unexpected: short message, traceback on --debug
            if _DEBUG["on"]:
                raise
            click.echo(
                f"error: {type(error).__name__}: {error} (run with --debug for the traceback)", err=True
            )
            ctx.exit(1)
        finally:
            sys.unraisablehook = previous_hook
            verbosity.restore()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mergekit-transplant")
@debug_option
@verbosity.verbose_option
@verbosity.quiet_option
def main():
    """Transplant task-relevant modules from a donor model into a target.

    \b
    The flow:
      mergekit-transplant analyze --target T --donor D --workload prompts.jsonl -o recipe.yml
      mergekit-transplant check recipe.yml
      mergekit-yaml recipe.yml out/          (or: mergekit-transplant merge recipe.yml out/)
      mergekit-transplant eval --target T --donor D --merged out/ --tasks TASK

    \b
    -v shows lm-eval's and transformers' own progress bars and INFO lines
    (hidden by default); -q/--quiet keeps only results, warnings and errors.
    Both work before or after the command name.
    """
    if os.environ.get("MERGEKIT_TRANSPLANT_DEBUG"):
        _DEBUG["on"] = True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
