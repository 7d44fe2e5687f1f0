"""The Hub path against a real HTTP server: headers without downloads, only the transplanted bytes, bad input.

Every test talks to ``testing_hub.LocalHub`` on 127.0.0.1 through the real
``huggingface_hub`` client (in this process, or in a child process through
``HF_ENDPOINT``); nothing is mocked below HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_transplant.checkpoint import read_index
from mergekit_transplant.testing import load_state, make_model, perturbed_copy
from mergekit_transplant.testing_hub import LocalHub, shard_model

BIN = Path(sys.executable).parent
DOWN1 = "model.layers.1.mlp.down_proj.weight"
CHANGED = [DOWN1, "model.layers.2.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"]


def recipe(target: str, donor: str, strengths: dict) -> str:
    lines = ["merge_method: transplant", f"base_model: {target}", "models:", f"  - model: {donor}",
             "    parameters:", "      strength:"]
    for filt, value in strengths.items():
        lines += [f"        - filter: {filt}", f"          value: {value}"]
    return "\n".join(lines + ["        - value: 0", ""])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    target = make_model(root / "target", "llama", layers=4, seed=0)
    donor = perturbed_copy(target, root / "donor", CHANGED)
    sharded = shard_model(donor, root / "donor-sharded", 60_000)
    donor_v2 = perturbed_copy(target, root / "donor-v2", ["model.layers.3.mlp.up_proj.weight"], seed=7)
    server = LocalHub().start()
    server.add_model("org/target", target)
    server.add_model("org/donor", sharded)
    v1 = server.add_model("org/donor-revs", donor, tags=("v1",))
    server.add_model("org/donor-revs", donor_v2)  # main moves on
    server.root, server.local = root, {"target": target, "donor": donor}
    server.v1 = v1
    server.down1_shard = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"][DOWN1]
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path, hub):
    hub.reset_log()
    hub.clear_faults()
    with hub.in_process(tmp_path / "hf-cache"):
        yield tmp_path / "hf-cache"


class Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(args, hub, cache, cwd, *, extra_env=None, exe="mergekit-transplant"):
    """``mergekit-yaml`` in a child process (the real entry point); our CLI in this process (the hub fixture
    already points huggingface_hub here), which is the same code without seconds of imports per call."""
    if exe == "mergekit-transplant" and not extra_env:
        from click.testing import CliRunner

        from mergekit_transplant.cli import main

        result = CliRunner().invoke(main, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Ran(result.exit_code, result.stdout, result.stderr)
    env = {**os.environ, **hub.environment(cache), **(extra_env or {})}
    return subprocess.run([str(BIN / exe), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def weight_gets(hub, repo):
    """(file, bytes, range) of every GET of a safetensors file of ``repo``."""
    out = []
    for r in hub.log:
        if r.method == "GET" and r.path.startswith(f"/{repo}/resolve/") and r.path.endswith(".safetensors"):
            out.append((r.path.rsplit("/", 1)[1], r.sent, r.range))
    return out


# ----------------------------------------------------------------------------- the server itself


def test_local_hub_answers_the_real_client_with_etag_commit_and_ranges(hub, cache):
    import huggingface_hub as hh
    from huggingface_hub.utils import get_session

    info = hh.HfApi().model_info("org/target")
    assert info.sha == hub.head("org/target")
    meta = hh.get_hf_file_metadata(hh.hf_hub_url("org/target", "model.safetensors"))
    local = hub.local["target"] / "model.safetensors"
    assert meta.commit_hash == info.sha and meta.size == local.stat().st_size
    import hashlib

    assert meta.etag == hashlib.sha256(local.read_bytes()).hexdigest()
    response = get_session().get(hh.hf_hub_url("org/target", "model.safetensors"), headers={"Range": "bytes=10-19"})
    assert response.status_code == 206 and response.content == local.read_bytes()[10:20]
    assert hub.log[-1].sent == 10
    path = hh.snapshot_download("org/target", allow_patterns=["*.json"])
    assert sorted(os.listdir(path)) == ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]


# ----------------------------------------------------------------------------- 1. headers without downloads


def test_check_reads_hub_headers_and_downloads_no_weights(hub, cache, tmp_path):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor", {DOWN1: 1.0}))
    result = cli(["check", tmp_path / "r.yml"], hub, cache, tmp_path)
    assert result.returncode == 0, result.stderr
    assert DOWN1 in result.stdout
    gets = weight_gets(hub, "org/target") + weight_gets(hub, "org/donor")
    assert gets and all(rng is not None for _f, _n, rng in gets), gets  # only ranged reads
    headers = hub.header_bytes("org/target") + hub.header_bytes("org/donor")
    assert sum(n for _f, n, _r in gets) == headers  # exactly the headers, not one tensor byte


def test_revision_pins_are_honoured_for_headers_and_organs(hub, cache, tmp_path):
    from mergekit_transplant.organ import extract_organ

    pinned = read_index("org/donor-revs@v1", remote=True)
    assert pinned.commit == hub.v1 != hub.head("org/donor-revs")
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor-revs@v1", {DOWN1: 1.0}))
    result = extract_organ(tmp_path / "r.yml", tmp_path / "organ")
    assert result.manifest.donors[0].revision == hub.v1
    got = load_file(tmp_path / "organ" / "model.safetensors")[DOWN1]
    assert torch.equal(got, load_file(hub.local["donor"] / "model.safetensors")[DOWN1])  # v1's bytes, not main's
    assert all(f"/resolve/{hub.v1}/" in r.path for r in hub.log if r.path.startswith("/org/donor-revs/resolve/"))


def test_offline_mode_reads_the_local_cache(hub, cache, tmp_path, monkeypatch):
    import huggingface_hub as hh

    hh.snapshot_download("org/target")
    hub.reset_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hh.constants, "HF_HUB_OFFLINE", True)
    index = read_index("org/target", remote=True)
    assert DOWN1 in index.tensors and hub.log == []


# ----------------------------------------------------------------------------- 2. + 4. only what is transplanted


@pytest.mark.parametrize("command", ["mergekit-yaml", "merge"])
def test_merge_with_hub_donor_transfers_target_plus_transplanted_bytes(hub, cache, tmp_path, command):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor", {DOWN1: 1.0}))
    args = ["merge", tmp_path / "r.yml", tmp_path / "out"] if command == "merge" else [tmp_path / "r.yml", tmp_path / "out"]
    result = cli(args, hub, cache, tmp_path, exe="mergekit-yaml" if command == "mergekit-yaml" else "mergekit-transplant")
    assert result.returncode == 0, result.stderr[-2000:]
    out, target = load_state(tmp_path / "out"), load_state(hub.local["target"])
    donor = load_state(hub.local["donor"])
    assert torch.equal(out[DOWN1], donor[DOWN1])
    assert all(torch.equal(out[k], target[k]) for k in target if k != DOWN1)
    transplanted = donor[DOWN1].numel() * donor[DOWN1].element_size()
    assert transplanted / sum(t.numel() * t.element_size() for t in target.values()) > 0.04  # a ~5% transplant
    donor_data = sum(n for f, n, rng in weight_gets(hub, "org/donor") if not (rng or "").startswith(("bytes=0-7", "bytes=8-")))
    assert donor_data <= 1.1 * transplanted, weight_gets(hub, "org/donor")
    goal = hub.transfer_goal("org/target", "org/donor", transplanted)
    assert goal["sent"] <= goal["budget"], goal


def test_a_merge_offline_reuses_the_donor_tensors_an_online_merge_fetched(hub, cache, tmp_path, monkeypatch):
    import huggingface_hub as hh

    # a local target: mergekit itself lists a Hub target's files online even when they are cached
    (tmp_path / "r.yml").write_text(recipe(str(hub.local["target"]), "org/donor", {DOWN1: 1.0}))
    assert cli(["merge", tmp_path / "r.yml", tmp_path / "online"], hub, cache, tmp_path).returncode == 0
    hub.reset_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hh.constants, "HF_HUB_OFFLINE", True)
    result = cli(["merge", tmp_path / "r.yml", tmp_path / "offline"], hub, cache, tmp_path)
    assert result.returncode == 0, result.stderr
    assert hub.log == []
    assert torch.equal(load_state(tmp_path / "offline")[DOWN1], load_state(hub.local["donor"])[DOWN1])


def test_read_all_downloads_every_donor_shard(hub, cache, tmp_path, monkeypatch):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor", {DOWN1: 1.0}))
    monkeypatch.setenv("MERGEKIT_TRANSPLANT_READ_ALL", "1")
    result = cli(["merge", tmp_path / "r.yml", tmp_path / "out"], hub, cache, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    whole = {f for f, _n, rng in weight_gets(hub, "org/donor") if rng is None}
    assert whole == {p.name for p in (hub.root / "donor-sharded").glob("*.safetensors")}


def test_download_hook_steps_aside_when_mergekit_changes(monkeypatch, caplog):
    from mergekit import common

    from mergekit_transplant.adapter import download_plan

    download_plan.uninstall_download_hook()

    def local_path(self, cache_dir=None, ignore_lora=False, revision=None):  # a future mergekit
        return "x"

    monkeypatch.setattr(common.ModelReference, "local_path", local_path)
    with caplog.at_level(logging.DEBUG, logger="mergekit_transplant.adapter"):
        assert download_plan.install_download_hook() is False
    assert "not the signature the download planner knows" in caplog.text
    assert common.ModelReference.local_path is local_path
    monkeypatch.undo()
    assert download_plan.install_download_hook() is True and download_plan.download_hook_installed()


# ----------------------------------------------------------------------------- 3. organs straight from the Hub


def test_organ_extract_from_hub_fetches_only_transplanted_ranges(hub, cache, tmp_path):
    from mergekit_transplant.organ import extract_organ, verify_organ

    strengths = {DOWN1: 1.0, "model.layers.2.self_attn.q_proj.weight": 0.5}
    (tmp_path / "hub.yml").write_text(recipe("org/target", "org/donor", strengths))
    result = extract_organ(tmp_path / "hub.yml", tmp_path / "organ")
    donor = load_state(hub.local["donor"])
    transplanted = sum(donor[n].numel() * donor[n].element_size() for n in strengths)
    data = [(f, n, r) for f, n, r in weight_gets(hub, "org/donor") if not r.startswith(("bytes=0-7", "bytes=8-"))]
    assert sum(n for _f, n, _r in data) == transplanted and len(data) == 2
    assert hub.bytes_sent("/org/donor/resolve/") <= 1.1 * transplanted + hub.header_bytes("org/donor") \
        + hub.repo_bytes("org/donor", weights=False)
    # the same organ, byte for byte, as one cut from the local donor
    local = tmp_path / "local.yml"
    local.write_text(recipe(str(hub.local["target"]), str(hub.local["donor"]), strengths))
    twin = extract_organ(local, tmp_path / "organ-local")
    assert [t.sha256 for t in result.manifest.donors[0].tensors] == [t.sha256 for t in twin.manifest.donors[0].tensors]
    assert verify_organ(tmp_path / "organ").ok


# ----------------------------------------------------------------------------- bad input


def test_nonexistent_hub_id_is_one_line_exit_2(hub, cache, tmp_path):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/nope", {DOWN1: 1.0}))
    result = cli(["organ", "extract", tmp_path / "r.yml", "-o", tmp_path / "organ"], hub, cache, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") <= 3 and "org/nope" in result.stderr and "no such model" in result.stderr
    assert not (tmp_path / "organ").exists()


def test_nonexistent_revision_is_one_line_exit_2(hub, cache, tmp_path):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor@v9", {DOWN1: 1.0}))
    result = cli(["merge", tmp_path / "r.yml", tmp_path / "out"], hub, cache, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "org/donor@v9" in result.stderr and "revision does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_server_failing_halfway_is_a_network_fault_exit_1_and_no_partial_organ(hub, cache, tmp_path):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor", {DOWN1: 1.0}))
    hub.fail_halfway(hub.down1_shard, min_bytes=10_000)  # the tensor data, after its header
    try:
        result = cli(["organ", "extract", tmp_path / "r.yml", "-o", tmp_path / "organ"], hub, cache, tmp_path)
    finally:
        hub.clear_faults()
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model org/donor@") and "network fault" in lines[0]
    assert not (tmp_path / "organ").exists() and not list(tmp_path.glob(".organ*"))


def test_short_range_is_refused_exit_2_and_no_output_folder(hub, cache, tmp_path):
    (tmp_path / "r.yml").write_text(recipe("org/target", "org/donor", {DOWN1: 1.0}))
    hub.short_range(hub.down1_shard, min_bytes=10_000)
    try:
        result = cli(["merge", tmp_path / "r.yml", tmp_path / "out"], hub, cache, tmp_path)
    finally:
        hub.clear_faults()
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "org/donor@" in lines[0] and "short read" in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
