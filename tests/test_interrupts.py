"""SIGTERM while ``eval``, ``sweep``, ``card`` and ``organ extract`` write their outputs.

The moment that matters is the last one: the new output is complete in its
temp file or folder and about to be renamed into place. The command runs in a
subprocess whose ``atomic.replacing``/``replacing_dir`` are wrapped to stop
there, on the output named in the test, and touch a marker file; the test then
sends SIGTERM. Every command must exit 130 with ``interrupted: nothing was
half-written``, leave the previous version of the file (or folder) as it was
and leave no temp file behind. (``merge`` and ``analyze`` are interrupted mid-run
in tests/test_atomic.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergekit_transplant.testing_cli import leftovers, tree

PAUSING_CLI = r"""
import contextlib, os, sys, time
from pathlib import Path
from mergekit_transplant import atomic

pause_on, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
inner_file, inner_dir = atomic.replacing, atomic.replacing_dir

def pause(path):
    if Path(path).name == pause_on:
        marker.write_text(str(path))
        time.sleep(120)  # complete in its temp, not yet renamed: the signal lands here

@contextlib.contextmanager
def replacing(path):
    with inner_file(path) as tmp:
        yield tmp
        pause(path)

@contextlib.contextmanager
def replacing_dir(path, overwrite=False):
    with inner_dir(path, overwrite=overwrite) as tmp:
        yield tmp
        pause(path)

atomic.replacing, atomic.replacing_dir = replacing, replacing_dir
from mergekit_transplant.cli import main
main(args, prog_name="mergekit-transplant")
"""


def interrupt_while_committing(args, pause_on: str, tmp_path: Path, sig=signal.SIGTERM):
    marker = tmp_path / "paused"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_CLI, pause_on, str(marker), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (exit {proc.returncode}) before writing {pause_on}:\n{out}\n{err}")
        assert time.time() < deadline, f"{pause_on} was never written"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted: nothing was half-written", err[-3000:]
    assert "Traceback" not in err
    return out, err


@pytest.mark.slow
def test_sigterm_while_eval_writes_its_results(zoo, files, tmp_path):
    results = tmp_path / "results.json"
    results.write_text('{"previous": true}\n')
    interrupt_while_committing(
        ["eval", "--target", zoo["t"], "--donor", zoo["d"], "--merged", files["merged"], "--tasks", "tiny_mc",
         "--include-path", files["tasks"], "--limit", "2", "--batch-size", "4", "--no-cache", "-o", results],
        "results.json", tmp_path)
    assert results.read_text() == '{"previous": true}\n' and leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigterm_while_sweep_writes_its_results(files, analysis_report, tmp_path):
    out = tmp_path / "sweep.json"
    out.write_text('{"previous": true}\n')
    interrupt_while_committing(
        ["sweep", "--report", analysis_report, "--tasks", "tiny_mc", "--include-path", files["tasks"],
         "--limit", "2", "--random-controls", "1", "--no-whole-model", "--k", "1", "--output", out,
         "--recipe-out", tmp_path / "best.yml"],
        "sweep.json", tmp_path)
    assert out.read_text() == '{"previous": true}\n' and not (tmp_path / "sweep.csv").exists()
    # the recipe is written before the results: one file after the other, each whole
    from mergekit_transplant.recipe import load_recipe

    assert load_recipe(tmp_path / "best.yml").donors
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigterm_while_card_writes_the_readme(files, tmp_path):
    folder = tmp_path / "merged"
    shutil.copytree(files["merged"], folder)
    (folder / "README.md").write_text("the previous card\n")
    before = tree(folder)
    interrupt_while_committing(["card", folder], "README.md", tmp_path)
    assert tree(folder) == before and leftovers(folder) == []


@pytest.mark.slow
def test_sigterm_while_organ_extract_commits_the_folder(zoo, files, tmp_path):
    organ = tmp_path / "organ"
    organ.mkdir()
    (organ / "organ.json").write_text("the previous organ\n")
    before = tree(organ)
    interrupt_while_committing(["organ", "extract", "--overwrite", files["root"] / "r.yml", "-o", organ],
                               "organ", tmp_path)
    assert tree(organ) == before and leftovers(tmp_path) == []
