"""`publish` and the card against the local Hub: branch guard, stale shards, inherited license, model-index.

The local server answers what huggingface_hub reads (model info, files); it
does not implement the commit API, so the writes are recorded by an HfApi
subclass whose reads still go over HTTP to the server. Tests that assert the
arguments handed to HfApi say so in their names.
"""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import HfApi, ModelCard

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.testing import make_model, perturbed_copy
from mergekit_transplant.testing_hub import LocalHub

DOWN1 = "model.layers.1.mlp.down_proj.weight"


class WritesRecordedApi(HfApi):
    """The real HfApi for reads (repo_info goes to the local server); create/upload calls recorded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes = []

    def create_repo(self, repo_id, **kwargs):
        self.writes.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.writes.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.writes.append(("upload_folder", kwargs["repo_id"], kwargs))
        return type("Info", (), {"commit_url": "c", "pr_url": "pr" if kwargs.get("create_pr") else None})()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mergekit_transplant.flows import run_transplant

    root = tmp_path_factory.mktemp("hubpub")
    target = make_model(root / "target", "llama", seed=0)
    (target / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# target\n")
    donor = perturbed_copy(target, root / "donor", [DOWN1])
    (donor / "README.md").write_text("---\nlicense: mit\n---\n")  # the donor's license is not the merge's
    bare = make_model(root / "bare", "llama", seed=0)  # states no license anywhere
    (root / "recipe.yml").write_text(
        f"merge_method: transplant\nbase_model: {target}\nmodels:\n  - model: {donor}\n    parameters:\n"
        f"      strength:\n        - filter: {DOWN1}\n          value: 1.0\n        - value: 0\n")
    run_transplant(root / "recipe.yml", root / "out")
    hub = LocalHub().start()
    hub.add_model("org/target", target)
    hub.add_model("org/donor", donor)
    hub.add_model("org/bare", bare)
    hub.add_model("acme/merged", root / "out")  # a previous upload
    yield root, hub
    hub.stop()


@pytest.fixture
def on_hub(world, tmp_path):
    root, hub = world
    with hub.in_process(tmp_path / "cache"):
        yield root, hub


def test_publish_guards_the_branch_head_read_from_the_hub_and_hands_hfapi_exact_arguments(on_hub, tmp_path):
    from mergekit_transplant.publish import STALE_PATTERNS, publish

    root, hub = on_hub
    api = WritesRecordedApi(endpoint=hub.url)
    _check, plan, url = publish(root / "out", "acme/merged", load=False, api=api, revision="main", create_pr=True)
    assert url == "pr"
    (_c, _r, create), (upload, repo, kw) = api.writes  # an existing branch is not created again
    assert (upload, repo) == ("upload_folder", "acme/merged")
    assert kw["parent_commit"] == hub.head("acme/merged")  # read over HTTP before the checks
    assert kw["revision"] == "main" and kw["create_pr"] is True
    assert kw["delete_patterns"] == STALE_PATTERNS == ["*.safetensors", "*.safetensors.index.json"]
    assert sorted(kw["allow_patterns"]) == sorted(name for name, _ in plan.files)


def test_publish_to_a_new_branch_creates_it_without_a_parent_guard__hfapi_arguments(on_hub):
    from mergekit_transplant.publish import publish

    root, hub = on_hub
    api = WritesRecordedApi(endpoint=hub.url)
    publish(root / "out", "acme/merged", load=False, api=api, revision="experiment")
    names = [w[0] for w in api.writes]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert api.writes[1][2]["branch"] == "experiment" and api.writes[2][2]["parent_commit"] is None


def test_publish_refuses_when_the_branch_moved_since_the_check(on_hub, monkeypatch):
    from mergekit_transplant import publish as publish_module

    root, hub = on_hub
    before = hub.head("acme/merged")
    real = publish_module.verify_folder

    def check_while_someone_pushes(*args, **kwargs):
        result = real(*args, **kwargs)
        hub.add_model("acme/merged", root / "target")  # another upload lands during our checks
        return result

    monkeypatch.setattr(publish_module, "verify_folder", check_while_someone_pushes)
    api = WritesRecordedApi(endpoint=hub.url)
    with pytest.raises(TransplantError, match=f"moved since the check \\(was {before[:12]}"):
        publish_module.publish(root / "out", "acme/merged", load=False, api=api)
    assert [w for w in api.writes if w[0] == "upload_folder"] == []


def test_stale_shards_are_what_the_delete_patterns_remove(on_hub, tmp_path):
    """A previous upload had two shards; the new folder has one file: the patterns select exactly the stale ones."""
    import fnmatch

    from mergekit_transplant.publish import STALE_PATTERNS, plan_upload

    root, hub = on_hub
    previous = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                "model.safetensors.index.json", "README.md", "config.json", "notes.txt"]
    plan = plan_upload(root / "out", "acme/merged")
    uploaded = {name for name, _ in plan.files}
    deleted = [f for f in previous if f not in uploaded and any(fnmatch.fnmatch(f, p) for p in STALE_PATTERNS)]
    assert deleted == previous[:3]  # the old shards and their index; a user's notes.txt stays


def card_for_hub_target(root, tmp_path, target_repo):
    """A fresh card for the merged folder, its recipe naming ``target_repo`` and org/donor on the Hub."""
    from mergekit_transplant.card import write_card
    from mergekit_transplant.recipe import parse_recipe

    out = tmp_path / "m"
    shutil.copytree(root / "out", out)
    (out / "README.md").unlink()
    recipe = parse_recipe((root / "recipe.yml").read_text().replace(str(root / "target"), target_repo)
                          .replace(str(root / "donor"), "org/donor"))
    result = write_card(out, recipe=recipe)
    return ModelCard.load(out / "README.md"), result


def test_card_inherits_the_targets_license_from_its_hub_card(on_hub, tmp_path):
    card, _result = card_for_hub_target(on_hub[0], tmp_path, "org/target")
    assert card.data.license == "apache-2.0"  # the target's, not the donor's mit


def test_card_states_no_license_when_the_target_states_none(on_hub, tmp_path):
    card, result = card_for_hub_target(on_hub[0], tmp_path, "org/bare")
    assert card.data.license is None
    assert any("states no license" in w for w in result.warnings)


def test_card_license_from_a_local_targets_config(world, tmp_path):
    from mergekit_transplant.card.license import target_license

    root, _hub = world
    local = tmp_path / "t"
    shutil.copytree(root / "bare", local)
    config = json.loads((local / "config.json").read_text())
    (local / "config.json").write_text(json.dumps({**config, "license": "llama3.1"}))
    assert target_license(str(local)) == ({"license": "llama3.1"}, f"{local}'s config.json")
    assert target_license(str(root / "bare")) == ({}, None)


def test_eval_results_go_into_the_model_index(world, tmp_path):
    from mergekit_transplant.card import write_card

    root, _hub = world
    out = tmp_path / "m"
    shutil.copytree(root / "out", out)
    write_card(out, eval_results={"tasks": {"arith": {"metric": "acc", "target": 0.2, "donor": 0.8, "merged": 0.7},
                                             "skipped": {"metric": "acc", "target": 0.2, "donor": 0.8, "merged": None}}})
    data = ModelCard.load(out / "README.md").data
    (result,) = data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("arith", "acc", 0.7)
    assert data.model_name == "m" and data.license == "apache-2.0"
