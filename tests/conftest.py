"""Shared fixtures: tiny models built once per session, in temp folders."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from mergekit_transplant.testing_cli import DOWN0, invoke, recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_mergekit_loaders():
    """mergekit caches loaders per process by model path as written; tests reuse
    relative paths such as ``models/donor`` for different folders."""
    from mergekit_transplant.adapter.loader_cache import fresh_loaders

    fresh_loaders()


@pytest.fixture(scope="session", autouse=True)
def _lm_eval_reads_its_builtin_tasks_once():
    """lm-eval re-reads its ~15k built-in task YAMLs (15-20 s on 2 cores) for every ``TaskManager`` that
    includes them: in this suite, each in-process test of an unknown task name. That folder is lm-eval's
    own installed package and does not change during a session, so its part of the index is read once per
    test process and each later build gets fresh ``Entry`` copies of it (lm-eval deep-copies an entry's
    config before using it); the tests' own task folders are read afresh every time, merged in the order
    ``TaskIndex.build`` merges them. Subprocesses are not affected."""
    from lm_eval.tasks import __file__ as tasks_init
    from lm_eval.tasks._index import Entry, TaskIndex

    original = TaskIndex.__dict__["build"]
    builtin = Path(tasks_init).resolve().parent
    cached = {}

    def build(paths, *, resolve_includes=True):
        index = {}
        for root in paths:
            if Path(root).resolve() != builtin:
                index.update(original.__func__([root], resolve_includes=resolve_includes))
                continue
            if resolve_includes not in cached:
                cached[resolve_includes] = original.__func__([root], resolve_includes=resolve_includes)
            index.update({name: Entry(e.name, e.kind, e.yaml_path, e.cfg, set(e.tags))
                          for name, e in cached[resolve_includes].items()})
        return index

    TaskIndex.build = staticmethod(build)
    yield
    TaskIndex.build = original


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """``model_factory(name, arch, **kwargs)`` builds (once) and returns a model folder."""
    from mergekit_transplant.testing import make_model

    root = tmp_path_factory.mktemp("models")
    cache = {}

    def build(name: str, arch: str = "llama", **kwargs) -> Path:
        if name not in cache:
            cache[name] = make_model(root / name, arch, **kwargs)
        return cache[name]

    return build



@pytest.fixture(scope="session")
def cold_pair(tmp_path_factory):
    """(target, donor, [their safetensors files]): 6-layer models (hidden 256, ~25 MB each, no tokenizer), big
    enough for a disk's read-ahead not to hide which pages were read; for the tests that count bytes read in
    the page cache (tests/pagecache.py). Skipped where the cache cannot be evicted (tmpfs)."""
    from mergekit_transplant.testing import make_model
    from tests import pagecache

    root = tmp_path_factory.mktemp("cold")
    size = dict(hidden=256, intermediate=1024, layers=6)
    target = make_model(root / "t", seed=0, tokenizer=False, **size)
    donor = make_model(root / "d", seed=1, tokenizer=False, **size)
    files = [target / "model.safetensors", donor / "model.safetensors"]
    if not pagecache.eviction_works(files[1]):
        pytest.skip(f"the page cache of {root} cannot be evicted here (tmpfs?), so reads cannot be counted")
    return target, donor, files

def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the reliability zoo (tests/test_reliability*.py,
# test_exit_codes, test_interrupts, test_determinism): module-scoped, so each test module builds its own


#: the tensors the zoo's donor differs in (layer 11 beside layer 1: what an unanchored filter also matches)
PICKED = [DOWN0, "model.layers.1.mlp.up_proj.weight", "model.layers.11.self_attn.q_proj.weight"]


@pytest.fixture(scope="module")
def zoo(model_factory, tmp_path_factory):
    """A 12-layer target and every kind of broken or mismatched donor."""
    from safetensors.torch import load_file, save_file

    from mergekit_transplant.testing import perturbed_copy

    root = tmp_path_factory.mktemp("zoo")
    small = dict(layers=12, hidden=32, intermediate=64)
    t = model_factory("rel-t", seed=0, **small)
    z = {"t": t, "d": perturbed_copy(t, root / "d", PICKED, seed=3)}
    z["wide"] = model_factory("rel-wide", seed=1, layers=12, hidden=32, intermediate=96)
    z["qwen"] = model_factory("rel-qwen", "qwen2", seed=2, **small)
    z["vocab"] = model_factory("rel-vocab", seed=3, vocab_size=128, **small)

    z["trunc"] = root / "trunc"
    shutil.copytree(z["d"], z["trunc"])
    f = z["trunc"] / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)

    z["corrupt"] = root / "corrupt"
    shutil.copytree(z["d"], z["corrupt"])
    f = z["corrupt"] / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[20:40] = b"#" * 20  # inside the JSON header
    f.write_bytes(bytes(data))

    z["garbage"] = root / "garbage"
    shutil.copytree(z["d"], z["garbage"])
    (z["garbage"] / "model.safetensors").write_bytes(os.urandom(4096))

    z["nan"] = root / "nan"
    shutil.copytree(z["d"], z["nan"])
    state = load_file(z["nan"] / "model.safetensors")
    state[DOWN0][0, 0] = math.nan
    state["model.layers.1.mlp.up_proj.weight"][1, 1] = math.inf
    save_file(state, z["nan"] / "model.safetensors", metadata={"format": "pt"})

    z["nojson"] = root / "nojson"
    shutil.copytree(z["d"], z["nojson"])
    (z["nojson"] / "config.json").write_text("{not json")

    z["noweights"] = root / "noweights"
    z["noweights"].mkdir()
    shutil.copy(z["d"] / "config.json", z["noweights"] / "config.json")
    return z


@pytest.fixture(scope="module")
def files(zoo, tmp_path_factory):
    """Workloads good and broken, tiny lm-eval tasks, a pickled donor and a clean merge (with its card) of
    the zoo's pair: the inputs of the analyze/eval/sweep/card/organ/publish reliability tests."""
    import torch
    from safetensors.torch import load_file

    from mergekit_transplant.testing import SAMPLE_WORDS, write_tiny_tasks

    root = tmp_path_factory.mktemp("cmd")
    f = {"root": root}
    f["work"] = root / "w.jsonl"
    f["work"].write_text("".join(json.dumps({"text": " ".join(SAMPLE_WORDS[i:i + 5])}) + "\n" for i in range(6)))
    for name, text in {"empty.jsonl": "", "blank.jsonl": "\n \n\n", "notext.jsonl": '{"prompt": "a b"}\n',
                       "badline.jsonl": '{"text": "a b"}\n{not json\n', "nonstr.jsonl": '{"text": 5}\n',
                       "w.csv": "text\na b\n"}.items():
        (root / name).write_text(text)
        f[name] = root / name
    f["long.txt"] = root / "long.txt"
    f["long.txt"].write_text(" ".join(["the cat"] * 300) + "\na dog\n")  # 600 tokens; context is 256
    f["tasks"] = write_tiny_tasks(root / "tasks")
    (root / "tasks" / "empty_docs.jsonl").write_text("")
    (root / "tasks" / "tiny_empty.yaml").write_text(
        f"task: tiny_empty\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'tasks' / 'empty_docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n    higher_is_better: true\n")
    pick = root / "pick"
    pick.mkdir()
    shutil.copy(zoo["d"] / "config.json", pick / "config.json")
    torch.save(load_file(zoo["d"] / "model.safetensors"), pick / "pytorch_model.bin")
    f["pick"] = pick
    # a clean merge with its card, for card/publish/eval
    (root / "r.yml").write_text(recipe(zoo["t"], zoo["d"]))
    code, output = invoke(["merge", root / "r.yml", root / "merged"])
    assert code == 0, output
    f["merged"] = root / "merged"
    return f


@pytest.fixture(scope="module")
def analysis_report(zoo, files):
    """An analysis report of the zoo's pair on ``files``' workload (for sweep, card and interrupt tests)."""
    out = files["root"] / "an"
    out.mkdir()
    code, output = invoke(["analyze", "--quiet", "--target", zoo["t"], "--donor", zoo["d"], "--workload",
                           files["work"], "-o", out / "recipe.yml", "--report", out / "report.json"])
    assert code == 0, output
    return out / "report.json"
