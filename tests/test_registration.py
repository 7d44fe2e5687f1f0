"""Zero-config registration: `merge_method: transplant` just works after install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

PY = sys.executable


def py(code: str, *args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PY, *args, "-c", code], capture_output=True, text=True, env=full_env, cwd=cwd)


REGISTERED = "import mergekit.merge_methods as m; print('transplant' in [x.spec.name for x in m.registered_methods()])"


def test_interpreter_start_imports_neither_torch_nor_mergekit():
    proc = py("import sys; print('torch' in sys.modules, 'mergekit' in sys.modules)")
    assert proc.stdout.split() == ["False", "False"]
    # ... but the hook is installed
    proc = py("import sys; print([type(f).__name__ for f in sys.meta_path][0], 'mergekit_transplant' in sys.modules)")
    assert proc.stdout.split() == ["MergekitTransplantFinder", "False"]


def test_pth_file_is_the_generated_stub_line():
    """The shipped .pth holds exactly ``_hook.pth_line()`` (regenerate it after editing the hook)."""
    from mergekit_transplant import _hook

    assert (REPO / "mergekit_transplant" / "_autoload.pth").read_text() == _hook.pth_line()
    installed = Path(sysconfig.get_paths()["purelib"]) / "mergekit_transplant.pth"
    assert installed.read_text() == _hook.pth_line(), "reinstall (pip install -e .) to refresh the .pth"


@pytest.mark.parametrize(
    "code",
    [
        REGISTERED,
        "import mergekit_transplant; " + REGISTERED,
        REGISTERED + "; import mergekit_transplant; mergekit_transplant.register(); mergekit_transplant.register()",
        "from mergekit.merge import run_merge; import mergekit.merge_methods as m; print(m.get('transplant').spec.name == 'transplant')",
        "import mergekit.plan as p; print(getattr(p.MergePlanner.plan_tensor, '_transplant_hook', False))",
    ],
    ids=["mergekit-only", "plugin-first", "mergekit-first-then-register-twice", "via-run_merge", "planner-hook"],
)
def test_registered_in_any_import_order(code):
    proc = py(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("True")


def test_opt_out_and_explicit_register():
    """One process: opted out, mergekit alone has no transplant (the first line); register() adds it."""
    env = {"MERGEKIT_TRANSPLANT_DISABLE": "1"}
    code = REGISTERED + "; import mergekit_transplant; mergekit_transplant.register(); " + REGISTERED.split("; ")[1]
    proc = py(code, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_python_dash_S_needs_explicit_register():
    site = sysconfig.get_paths()["purelib"]
    code = (
        f"import sys; sys.path[:0] = [{site!r}, {str(REPO)!r}]; " + REGISTERED
        + "; import mergekit_transplant; mergekit_transplant.register(); " + REGISTERED.split("; ")[1]
    )
    proc = py(code, "-S")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


@pytest.mark.slow
def test_plain_pip_install_into_fresh_venv(tmp_path, model_factory):
    """A regular (non-editable) wheel install ships the .pth and mergekit-yaml runs the method."""
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    # the fresh venv borrows the already-installed dependencies, but not the project
    site = Path(sysconfig.get_paths()["purelib"])
    vsite = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (vsite / "zz_borrowed_deps.pth").write_text(str(site) + "\n")
    build = subprocess.run(
        [str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(REPO)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert (vsite / "mergekit_transplant.pth").exists()
    assert (vsite / "mergekit_transplant" / "method.py").exists()

    target, donor = model_factory("pip-t", seed=0), model_factory("pip-d", seed=1)
    (tmp_path / "r.yml").write_text(
        f"merge_method: transplant\nbase_model: {target}\nmodels:\n  - model: {donor}\n"
        "    parameters:\n      strength:\n        - filter: model.layers.0.mlp.down_proj.weight\n"
        "          value: 1.0\n        - value: 0.0\n"
    )
    run = subprocess.run(
        [str(vpy), "-c", "import sys, mergekit_transplant; print(mergekit_transplant.__file__, file=sys.stderr); "
         "from mergekit.scripts.run_yaml import main; main()", "r.yml", "out", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert str(vsite) in run.stderr  # the wheel's copy, not the editable checkout
    assert (tmp_path / "out" / "model.safetensors").exists()
