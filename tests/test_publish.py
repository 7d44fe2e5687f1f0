"""`publish`: a merged folder is checked before anything could reach the Hub; --dry-run shows the upload."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergekit_transplant.cli import main
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.publish import publish, verify_folder
from mergekit_transplant.testing import make_model, perturbed_copy

TRANSPLANTED = ["model.layers.1.mlp.down_proj.weight"]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    from mergekit_transplant.flows import run_transplant

    root = tmp_path_factory.mktemp("publish")
    make_model(root / "target", "llama", seed=0, dtype="bfloat16", tie=True)
    perturbed_copy(root / "target", root / "donor", TRANSPLANTED)
    (root / "recipe.yml").write_text(
        f"merge_method: transplant\nbase_model: {root / 'target'}\nmodels:\n  - model: {root / 'donor'}\n"
        "    parameters:\n      strength:\n        - filter: model.layers.1.mlp.down_proj.weight\n"
        "          value: 1.0\n        - value: 0\n"
    )
    run_transplant(root / "recipe.yml", root / "out")
    return root / "out"


@pytest.fixture
def folder(merged, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(merged, dst)
    return dst


def test_dry_run_checks_and_lists_the_upload(merged):
    result = CliRunner().invoke(main, ["publish", str(merged), "--repo-id", "acme/tiny-transplant", "--private",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "repo: acme/tiny-transplant (private)" in out
    assert "loads with transformers" in out and "dry run: nothing was uploaded" in out
    assert "warning: README.md has no base_model" in out
    sizes = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    expected = sorted(p.name for p in merged.iterdir() if not p.name.startswith("."))
    assert sorted(sizes) == expected
    assert {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "mergekit_config.yml"} <= set(sizes)
    st = (merged / "model.safetensors").stat().st_size
    assert sizes["model.safetensors"] == [f"{st / 1024:.1f}", "KiB"]


def test_size_check_measures_the_weights(merged):
    check = verify_folder(merged, load=False)
    assert check.ok, check.errors
    assert check.dtype == "bfloat16"
    assert check.parameters == check.stored_elements  # tied lm_head counted once, stored once
    assert check.weight_bytes == 2 * check.parameters == check.expected_bytes


@pytest.mark.parametrize("damage,message", [
    ("pickle", "pickle file(s) training_args.bin"),
    ("dtype", "do not match the config"),
    ("extra-tensor", "missing, extra or duplicated tensors"),
    ("no-card", "no model card"),
    ("bad-card", "base_model entry 'not a repo id' is not a Hub model id"),
    ("no-tokenizer", "no tokenizer files"),
    ("truncated", "truncated or corrupted"),
])
def test_refuses_a_folder_that_is_not_ready(folder, damage, message):
    st = folder / "model.safetensors"
    if damage == "pickle":
        (folder / "training_args.bin").write_bytes(b"\x80\x04K\x01.")
    elif damage == "dtype":
        state = load_file(st)
        save_file({k: v.float() for k, v in state.items()}, st, metadata={"format": "pt"})
    elif damage == "extra-tensor":
        state = load_file(st)
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # duplicated although tied
        save_file(state, st, metadata={"format": "pt"})
    elif damage == "no-card":
        (folder / "README.md").unlink()
    elif damage == "bad-card":
        text = (folder / "README.md").read_text()
        (folder / "README.md").write_text(text.replace("library_name:", "base_model:\n- not a repo id\nlibrary_name:"))
    elif damage == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "truncated":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) - 100])
    with pytest.raises(TransplantError, match="is not ready to publish") as info:
        publish(folder, "acme/x", dry_run=True)
    assert message in str(info.value)
    result = CliRunner().invoke(main, ["publish", str(folder), "--repo-id", "acme/x", "--dry-run"])
    assert result.exit_code == 2 and message in result.output and "repo:" not in result.output


def test_invalid_repo_id_is_refused(merged):
    for bad in ("no-slash", "a/b/c", "bad name/x"):
        result = CliRunner().invoke(main, ["publish", str(merged), "--repo-id", bad, "--dry-run"])
        assert result.exit_code == 2 and "--repo-id" in result.output


class RecordingApi:
    """Stands in for HfApi: records the calls (the Hub cannot be reached from tests)."""

    def __init__(self):
        self.calls = []

    def repo_info(self, repo_id, **kwargs):  # a new repo: no branch head to guard
        return type("Info", (), {"sha": None})()

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_upload_sends_exactly_the_planned_files(folder):
    (folder / ".scratch.tmp").write_text("hidden files are not uploaded")
    api = RecordingApi()
    check, plan, url = publish(folder, "acme/tiny", private=True, load=False, api=api)
    assert url == "https://huggingface.co/acme/tiny/commit/abc"
    (create, repo, kw), (upload, repo2, kw2) = api.calls
    assert (create, repo, kw["private"], kw["exist_ok"]) == ("create_repo", "acme/tiny", True, True)
    assert (upload, repo2, kw2["folder_path"]) == ("upload_folder", "acme/tiny", str(folder))
    import fnmatch

    every = sorted(p.name for p in folder.iterdir())
    selected = [f for f in every if any(fnmatch.fnmatch(f, pat) for pat in kw2["allow_patterns"])]
    assert selected == sorted(name for name, _ in plan.files) == [f for f in every if not f.startswith(".")]
