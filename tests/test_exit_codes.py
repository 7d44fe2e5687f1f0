"""The exit-code contract of docs/reliability.md, asserted exactly.

0 done; 2 bad input with exactly one ``error:`` line; 1 a bug, with one line
naming the exception and a ``--debug`` hint (``--debug`` or
``MERGEKIT_TRANSPLANT_DEBUG=1`` show the traceback instead); 130 on Ctrl-C or
SIGTERM (tests/test_atomic.py). Bugs are planted in the plugin's own code (not in the input), so a
bug reported as "your recipe is wrong" (exit 2) fails here.
"""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from mergekit_transplant.cli import main
from mergekit_transplant.testing_cli import DOWN0, invoke, leftovers, recipe, run_cli

HINT = "(run with --debug for the traceback)"


def error_lines(output: str):
    return [line for line in output.splitlines() if line.startswith("error:")]


def plant_bug_in_planning(monkeypatch):
    """A TypeError inside the plugin's planner subclass: a bug, whatever the recipe says."""
    from mergekit_transplant.adapter import registration

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(registration, "per_input_parameters", broken)


def test_a_bug_exits_1_with_one_line_and_a_debug_hint(zoo, tmp_path, monkeypatch):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    plant_bug_in_planning(monkeypatch)
    for args in (["check", tmp_path / "r.yml"], ["merge", tmp_path / "r.yml", tmp_path / "out"]):
        code, output = invoke(args)
        assert code == 1, output
        assert error_lines(output) == [
            f"error: TypeError: unsupported operand type(s) for +: 'int' and 'str' {HINT}"], output
        assert "Traceback" not in output and "cannot plan" not in output
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_bug_while_validating_is_not_blamed_on_the_recipe(zoo, tmp_path, monkeypatch):
    from mergekit.config import MergeConfiguration

    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))

    def broken(data, *args, **kwargs):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(MergeConfiguration, "model_validate", staticmethod(broken))
    code, output = invoke(["check", tmp_path / "r.yml"])
    assert code == 1, output
    assert error_lines(output) == [f"error: TypeError: 'NoneType' object is not subscriptable {HINT}"]


@pytest.mark.parametrize("how", ["--debug", "MERGEKIT_TRANSPLANT_DEBUG"])
def test_debug_shows_the_bug_itself(zoo, tmp_path, monkeypatch, how):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    plant_bug_in_planning(monkeypatch)
    args = ["check", str(tmp_path / "r.yml")]
    if how == "--debug":
        result = CliRunner().invoke(main, ["--debug", *args])
    else:
        result = CliRunner().invoke(main, args, env={"MERGEKIT_TRANSPLANT_DEBUG": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, TypeError)  # raised, with its traceback, not turned into a message
    assert "unsupported operand" in str(result.exception)
    # and the next run without the switch is back to the one-line message
    code, output = invoke(args)
    assert code == 1 and HINT in output


@pytest.mark.slow
def test_console_script_bug_is_exit_1_with_the_hint_and_traceback_on_debug(zoo, tmp_path):
    """The real console script: a bug planted through a sitecustomize that breaks the planner."""
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import mergekit_transplant.adapter.registration as r\n"
        "def broken(*a, **k):\n    raise ZeroDivisionError('division by zero')\n"
        "r.per_input_parameters = broken\n")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli(["check", tmp_path / "r.yml"], env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"error: ZeroDivisionError: division by zero {HINT}"]
    proc = run_cli(["check", tmp_path / "r.yml"], env={**env, "MERGEKIT_TRANSPLANT_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


@pytest.mark.parametrize("case", ["ambiguous-filter", "missing-donor", "bad-yaml", "bad-strength"])
def test_input_errors_print_exactly_one_error_line_and_exit_2(zoo, tmp_path, case):
    texts = {
        "ambiguous-filter": recipe(zoo["t"], zoo["d"], [("model.layers.1", 1.0)]),
        "missing-donor": recipe(zoo["t"], tmp_path / "gone"),
        "bad-yaml": "merge_method: transplant\nbase_model: [\n",
        "bad-strength": recipe(zoo["t"], zoo["d"], [(DOWN0, 1.5)]),
    }
    (tmp_path / "r.yml").write_text(texts[case])
    for args in (["check", tmp_path / "r.yml"], ["merge", tmp_path / "r.yml", tmp_path / "out"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(error_lines(result.stderr)) == 1, result.stderr
        # the error line comes first; merge follows it with the check's findings, indented
        assert lines[0].startswith("error:") and all(line.startswith("  ") for line in lines[1:]), result.stderr
        assert "Traceback" not in result.output and "error:" not in result.stdout
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
