"""``-v/--verbose`` and ``-q/--quiet``: what each level prints, through the real console script.

Default: our own progress and informational lines on stderr, lm-eval's and
transformers' inner bars and log lines hidden. ``-v``: those too. ``--quiet``:
stderr keeps only ``warning:``/``error:`` lines, stdout (the results) is the
same at every level. The flags work before and after the command name.
Each run is a subprocess with tqdm left on (the suite's ``TQDM_DISABLE`` is
removed), as a user's terminal has it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from mergekit_transplant.testing import perturbed_copy, write_tiny_tasks
from mergekit_transplant.testing_cli import console_script, recipe

CLI = console_script()
CHANGED = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
#: what lm-eval and transformers print inside one of our steps
INNER = ("Running loglikelihood requests", "Loading weights", "it/s]", "INFO:lm_eval", "fatal: not a git")


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trio(model_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("verbosity")
    target = model_factory("verbosity-t", seed=0)
    donor = perturbed_copy(target, root / "donor", CHANGED, scale=2.0, seed=3)
    return {"root": root, "target": target, "donor": donor, "tasks": write_tiny_tasks(root / "tasks")}


def eval_args(trio, tasks="tiny_mc"):
    # the donor stands in for the merged model: what is printed does not depend on it
    return ["eval", "--target", trio["target"], "--donor", trio["donor"], "--merged", trio["donor"],
            "--tasks", tasks, "--include-path", trio["tasks"], "--limit", "6", "--batch-size", "4", "--no-cache"]


@pytest.fixture(scope="module")
def default_eval(trio):
    proc = run(*eval_args(trio))
    assert proc.returncode == 0, proc.stderr
    return proc


def test_default_shows_our_steps_and_hides_lm_evals_inner_bars_and_log_lines(default_eval):
    err = default_eval.stderr
    for role in ("target", "donor", "merged"):
        assert f"{role}: scoring tiny_mc with lm-eval" in err, err
    for noise in INNER:
        assert noise not in err, f"{noise!r} shown by default:\n{err}"
    assert "| tiny_mc | acc" in default_eval.stdout


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_lm_evals_bars_and_info_lines_wherever_given(trio, default_eval, where):
    args = eval_args(trio)
    proc = run("-v", *args) if where == "before" else run(*args, "--verbose")
    assert proc.returncode == 0, proc.stderr
    for shown in ("Running loglikelihood requests", "INFO:lm_eval", "target: scoring tiny_mc"):
        assert shown in proc.stderr, f"{shown!r} missing under -v:\n{proc.stderr[-3000:]}"
    assert proc.stdout == default_eval.stdout


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_quiet_keeps_the_results_and_drops_everything_else(trio, default_eval, flag):
    proc = run(*eval_args(trio), flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == default_eval.stdout
    assert proc.stderr == "", proc.stderr


def test_quiet_still_prints_the_error_line(trio):
    proc = run("--quiet", *eval_args(trio, tasks="no_such_task"))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown lm-eval task(s) no_such_task"), proc.stderr


def test_quiet_and_verbose_together_are_refused(trio):
    for args in (["-q", "-v", "check", "r.yml"], ["check", "r.yml", "-q", "-v"], ["-v", "check", "r.yml", "-q"]):
        proc = run(*args, cwd=trio["root"])
        assert proc.returncode == 2 and "--quiet and -v/--verbose contradict" in proc.stderr, (args, proc.stderr)


@pytest.mark.slow
def test_merge_hands_the_groups_quiet_to_mergekit(trio, tmp_path):
    """mergekit's own bars ("Executing graph") follow -q given before the command name, as its own --quiet."""
    (tmp_path / "r.yml").write_text(recipe(trio["target"], trio["donor"], filters=((CHANGED[0], 1.0),)))
    loud = run("merge", tmp_path / "r.yml", tmp_path / "loud")
    assert loud.returncode == 0 and "Executing graph" in loud.stderr, loud.stderr
    for args in (["-q", "merge", tmp_path / "r.yml", tmp_path / "q1"],
                 ["merge", tmp_path / "r.yml", tmp_path / "q2", "--quiet"]):
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
        assert "Executing graph" not in proc.stderr and "%|" not in proc.stderr, proc.stderr
        out = next(a for a in args if str(a).startswith(str(tmp_path / "q")))
        assert proc.stdout.replace(str(out), "OUT") == loud.stdout.replace(str(tmp_path / "loud"), "OUT")


@pytest.mark.slow
def test_analyze_quiet_prints_the_table_but_not_the_plan(trio, tmp_path):
    work = tmp_path / "w.txt"
    work.write_text("the cat is red\none two three four\nthe dog and the bird\n")
    base = ["analyze", "--target", trio["target"], "--donor", trio["donor"], "--workload", work,
            "--select", "top", "--top-k", "2", "--score", "local"]
    loud = run(*base, "-o", tmp_path / "a.yml")
    quiet = run("-q", *base, "-o", tmp_path / "b.yml")
    assert loud.returncode == 0 and quiet.returncode == 0, (loud.stderr, quiet.stderr)
    assert "memory plan" in loud.stderr and "wrote recipe" in loud.stderr
    assert "Loading weights" not in loud.stderr  # transformers' bar: shown with -v only
    assert "memory plan" not in quiet.stderr and "wrote" not in quiet.stderr and "%|" not in quiet.stderr
    assert all(line.startswith("warning: ") for line in quiet.stderr.splitlines()), quiet.stderr  # warnings stay
    assert quiet.stdout == loud.stdout and "modules selected" in quiet.stdout  # the table
    same = [(tmp_path / name).read_text().replace(name, "R") for name in ("a.yml", "b.yml")]
    assert same[0] == same[1]  # the recipe, its header's command line included, does not depend on the level
