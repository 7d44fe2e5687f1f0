"""Every input broken or hostile, for ``check`` and ``merge``: clear errors, nothing lost, nothing run.

The contract for each bad input: a short ``error: ...`` naming the thing at
fault, exit code 2, no Python traceback (unless ``--debug``), and nothing
written: no output folder, no temp folder beside it. The bulk runs through
click's CliRunner (in process, fast); a few cases run the real console script
in a subprocess, which is what users run. The same table is in
docs/reliability.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict

import pytest
from safetensors.torch import load_file

from mergekit_transplant.testing_cli import DOWN0, assert_clean_error, invoke, leftovers, recipe, run_cli


# --------------------------------------------------------------------------- the table


def _case_table(z, tmp: Path) -> Dict[str, tuple]:
    """case id -> (recipe text or a path, needles the message must contain)."""
    t, d = z["t"], z["d"]
    return {
        "malformed-yaml": ("merge_method: transplant\nbase_model: [\n", ["malformed YAML at line"]),
        "not-a-mapping": ("- just\n- a list\n", ["expected a YAML mapping"]),
        "empty-recipe": ("", ["expected a YAML mapping"]),
        "unknown-top-key": (recipe(t, d) + "merge_methd: linear\n", ["unknown key(s) merge_methd"]),
        "unknown-parameter": (recipe(t, d).replace("      strength:", "      weight: 1\n      strength:"),
                              ["unknown parameter(s) weight", str(d)]),
        "wrong-type-models": (f"merge_method: transplant\nbase_model: {t}\nmodels: 3\n", ["models", "valid list"]),
        "wrong-type-strength": (recipe(t, d).replace("value: 1.0", "value: lots"), ["strength 'lots'", "not a number"]),
        "wrong-method": (recipe(t, d).replace("merge_method: transplant", "merge_method: linear"),
                         ["merge_method is 'linear'"]),
        "no-base-model": (recipe(t, d).replace(f"base_model: {t}\n", ""), ["base_model"]),
        "unknown-dtype": (recipe(t, d, extra="dtype: float99\n"), ["dtype 'float99'"]),
        "strength-nan": (recipe(t, d, [(DOWN0, ".nan")]), ["strength nan", "not finite"]),
        "strength-negative": (recipe(t, d, [(DOWN0, -0.5)]), ["strength -0.5", "outside [0, 1]"]),
        "strength-above-1": (recipe(t, d, [(DOWN0, 1.5)]), ["strength 1.5", "outside [0, 1]"]),
        "strength-huge-int": (recipe(t, d, [(DOWN0, "1" * 400)]), ["out of range"]),
        "filter-matches-nothing": (recipe(t, d, [("model.layers.0.mlp.dwn_proj", 1.0)]),
                                   ["filter 'model.layers.0.mlp.dwn_proj'", "matches no tensor"]),
        "filter-ambiguous": (recipe(t, d, [("model.layers.1", 1.0)]),
                             ["filter 'model.layers.1'", "ambiguous", "model.layers.10.", "use model.layers.1."]),
        "missing-target": (recipe(tmp / "no-such-target", d), ["no-such-target", "no such folder"]),
        "missing-donor": (recipe(t, tmp / "no-such-donor"), ["no-such-donor", "no such folder"]),
        "hub-id-offline": (recipe(t, "nonexistent-org/no-such-model"),
                           ["nonexistent-org/no-such-model", "not available here", "config.json"]),
        "shape-mismatch": (recipe(t, z["wide"]), ["shape mismatch", DOWN0, "[32, 64]", "[32, 96]"]),
        "architecture-mismatch": (recipe(t, z["qwen"]), ["architecture mismatch", "Qwen2ForCausalLM"]),
        "vocab-mismatch": (recipe(t, z["vocab"], [("model.embed_tokens.weight", 1.0)]),
                           ["vocab size mismatch", "96", "128"]),
        "truncated-safetensors": (recipe(t, z["trunc"]), [str(z["trunc"]), "truncated or corrupted"]),
        "corrupted-header": (recipe(t, z["corrupt"]), [str(z["corrupt"]), "not a valid safetensors file"]),
        "random-bytes-weights": (recipe(t, z["garbage"]), [str(z["garbage"]), "not a valid safetensors file"]),
        "malformed-config": (recipe(t, z["nojson"]), ["config.json", "malformed JSON"]),
        "no-weights": (recipe(t, z["noweights"]), [str(z["noweights"]), "no model weights"]),
        "recipe-missing": (tmp / "absent.yml", ["absent.yml", "recipe not found"]),
        "recipe-is-folder": (tmp, ["is a directory"]),  # click's own usage error
        "python-tag": ('!!python/object/apply:os.system ["echo pwned"]\n', ["python/object/apply"]),
    }


CASE_IDS = list(_case_table({k: Path(k) for k in ("t", "d", "wide", "qwen", "vocab", "trunc", "corrupt",
                                                   "garbage", "nojson", "noweights")}, Path("tmp")))


def _recipe_arg(z, tmp_path: Path, case: str):
    spec, needles = _case_table(z, tmp_path)[case]
    if isinstance(spec, Path):
        return spec, needles
    path = tmp_path / "recipe.yml"
    path.write_text(spec)
    return path, needles


@pytest.mark.parametrize("case", CASE_IDS)
def test_check_rejects_bad_input_cleanly(zoo, tmp_path, case):
    path, needles = _recipe_arg(zoo, tmp_path, case)
    code, output = invoke(["check", path])
    assert_clean_error(code, output, *needles)


@pytest.mark.parametrize("case", CASE_IDS)
def test_merge_rejects_bad_input_and_writes_nothing(zoo, tmp_path, case):
    path, needles = _recipe_arg(zoo, tmp_path, case)
    work = tmp_path / "work"
    work.mkdir()
    code, output = invoke(["merge", path, work / "out"])
    assert_clean_error(code, output, *needles)
    assert not (work / "out").exists()
    assert list(work.iterdir()) == []


def test_nonfinite_donor_tensor_refused_unless_allowed(zoo, tmp_path):
    text = recipe(zoo["t"], zoo["nan"])
    (tmp_path / "r.yml").write_text(text)
    code, output = invoke(["check", tmp_path / "r.yml"])
    assert code == 0, output  # check reads headers only: the values are the merge's business
    code, output = invoke(["merge", tmp_path / "r.yml", tmp_path / "out"])
    assert_clean_error(code, output, "contains NaN or Inf", DOWN0, "--allow-nonfinite")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # a NaN elsewhere in the donor does not matter: only transplanted tensors are read
    (tmp_path / "r2.yml").write_text(recipe(zoo["t"], zoo["nan"], [("model.layers.11.self_attn.q_proj.weight", 1.0)]))
    code, output = invoke(["merge", tmp_path / "r2.yml", tmp_path / "out2"])
    assert code == 0, output
    code, output = invoke(["merge", "--allow-nonfinite", tmp_path / "r.yml", tmp_path / "out3"])
    assert code == 0, output
    assert math.isnan(load_file(tmp_path / "out3" / "model.safetensors")[DOWN0][0, 0].item())


def test_nonempty_output_refused_unless_overwrite(zoo, tmp_path):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, output = invoke(["merge", tmp_path / "r.yml", out])
    assert_clean_error(code, output, str(out), "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["precious.txt"] and leftovers(tmp_path) == []
    # an empty folder is fine; a file in the way is named
    (tmp_path / "file").write_text("x")
    code, output = invoke(["merge", tmp_path / "r.yml", tmp_path / "file"])
    assert_clean_error(code, output, "is a file")
    code, output = invoke(["merge", "--overwrite", tmp_path / "r.yml", out])
    assert code == 0, output
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()
    assert leftovers(tmp_path) == []
    assert load_file(out / "model.safetensors")[DOWN0].equal(load_file(zoo["d"] / "model.safetensors")[DOWN0])


def test_outputs_have_ordinary_permissions(zoo, tmp_path):
    """Temp files are private (0600/0700); the committed output must not stay that way."""
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    code, output = invoke(["merge", tmp_path / "r.yml", tmp_path / "out"])
    assert code == 0, output
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


# --------------------------------------------------------------------------- the real console script


@pytest.mark.slow
def test_console_script_exit_code_and_no_traceback(zoo, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(recipe(zoo["t"], zoo["d"], [("model.layers.1", 1.0)]))
    proc = run_cli(["check", bad])
    assert proc.returncode == 2, proc.stderr
    assert "use model.layers.1." in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    # --debug shows the traceback of the error the message came from
    broken = tmp_path / "broken.yml"
    broken.write_text("merge_method: transplant\nbase_model: [\n")
    proc = run_cli(["check", "--debug", broken])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "malformed YAML" in proc.stderr


@pytest.mark.slow
def test_console_script_hub_id_offline_with_empty_cache(zoo, tmp_path):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], "someorg/somemodel@main"))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli(["merge", tmp_path / "r.yml", tmp_path / "out"], env=env)
    assert proc.returncode == 2, proc.stderr
    assert "someorg/somemodel@main" in proc.stderr and "not available here" in proc.stderr
    assert "--revision main" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_console_script_missing_model_for_merge(zoo, tmp_path):
    (tmp_path / "r.yml").write_text(recipe(zoo["t"], tmp_path / "gone"))
    proc = run_cli(["merge", tmp_path / "r.yml", tmp_path / "out"])
    assert proc.returncode == 2 and f"model '{tmp_path / 'gone'}': no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_unknown_option_is_a_usage_error(tmp_path):
    code, output = invoke(["check", "--no-such-option", tmp_path / "r.yml"])
    assert code == 2 and "No such option" in output and "Traceback" not in output
