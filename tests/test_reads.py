"""A transplant merge reads donor tensors only where their strength is nonzero.

mergekit gathers every model's tensor for every output tensor; the plugin's
planner hook (adapter.registration.install_planner_hook) drops donors at strength 0
before reads are planned. These tests count mergekit's own tensor reads, strip
the donor down to the transplanted tensors (an organ-like folder), measure
bytes read from a cold page cache, and check the output is bit-identical to
mergekit's default planning (``MERGEKIT_TRANSPLANT_READ_ALL=1``) and to a hand
computation. They also simulate incompatible planners: the hook must then step
aside, never break the merge.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from mergekit_transplant.adapter import registration
from mergekit_transplant.checkpoint import read_index
from mergekit_transplant.recipe import Selection, render_recipe
from mergekit_transplant.testing import load_state, make_model
from tests import pagecache

BIN = Path(sys.executable).parent
MLP_DOWN_1 = "model.layers.1.mlp.down_proj.weight"
Q_PROJ_0 = "model.layers.0.self_attn.q_proj.weight"
UP_PROJ_0 = "model.layers.0.mlp.up_proj.weight"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A target and two unrelated donors: every donor tensor differs from the target's."""
    root = tmp_path_factory.mktemp("reads")
    return {
        "target": make_model(root / "target", seed=0),
        "donor": make_model(root / "donor", seed=1),
        "donor2": make_model(root / "donor2", seed=2),
        "root": root,
    }


def selections(models):
    return [
        Selection(MLP_DOWN_1, str(models["donor"]), 1.0),
        Selection(Q_PROJ_0, str(models["donor"]), 0.5),
        Selection(UP_PROJ_0, str(models["donor2"]), 1.0),
    ]


def analyze_style_recipe(target, sels) -> str:
    """The format ``analyze`` writes: exact-name filters, then a catch-all ``value: 0``."""
    return render_recipe(str(target), sels, header=["written by test_reads"])


def by_hand(target: Path, sels) -> dict:
    """target with each selected tensor replaced (s=1) or lerped in fp32 (0<s<1)."""
    state = load_state(target)
    for sel in sels:
        donor = load_state(Path(sel.donor))[sel.tensor]
        state[sel.tensor] = donor if sel.strength == 1.0 else torch.lerp(state[sel.tensor], donor, sel.strength)
    return state


def assert_bit_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), f"{name} differs"


def merge_in_process(recipe_text: str, out: Path) -> dict:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    import mergekit_transplant

    mergekit_transplant.register()
    config = MergeConfiguration.model_validate(yaml.safe_load(recipe_text))
    run_merge(config, str(out), MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False))
    return load_state(out)


@pytest.fixture
def reads(monkeypatch):
    """{model folder: [tensor names mergekit's loader was asked for]} during the test."""
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader

    calls = defaultdict(list)
    original = LazyTensorLoader.get_tensor

    def counting(self, key, *args, **kwargs):
        calls[Path(self.index.base_path).resolve()].append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(LazyTensorLoader, "get_tensor", counting)
    return calls


@pytest.fixture
def pristine_planner():
    """Restore mergekit's planner (with our hook) whatever the test did to it."""
    from mergekit import plan

    saved = plan.MergePlanner.plan_tensor
    yield plan.MergePlanner
    plan.MergePlanner.plan_tensor = saved
    registration.install_planner_hook()


def tensor_names(model: Path) -> list:
    return sorted(load_state(model))


def organ_like(donor: Path, tensors, out: Path) -> Path:
    """A folder mergekit can load as the donor: its config.json and only ``tensors``."""
    out.mkdir()
    (out / "config.json").write_bytes((donor / "config.json").read_bytes())
    state = load_state(donor)
    save_file({n: state[n] for n in tensors}, out / "model.safetensors", metadata={"format": "pt"})
    return out


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


# --------------------------------------------------------------------------- reads


def test_donors_are_read_only_where_strength_is_nonzero(models, tmp_path, reads, monkeypatch):
    sels = selections(models)
    text = analyze_style_recipe(models["target"], sels)
    merged = merge_in_process(text, tmp_path / "hooked")
    assert sorted(reads[models["donor"].resolve()]) == sorted([MLP_DOWN_1, Q_PROJ_0])
    assert reads[models["donor2"].resolve()] == [UP_PROJ_0]
    assert sorted(reads[models["target"].resolve()]) == tensor_names(models["target"])
    assert_bit_identical(merged, by_hand(models["target"], sels))

    # mergekit's default planning reads every donor tensor, for the same bits
    reads.clear()
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    default = merge_in_process(text, tmp_path / "default")
    assert sorted(reads[models["donor"].resolve()]) == tensor_names(models["donor"])
    assert sorted(reads[models["donor2"].resolve()]) == tensor_names(models["donor2"])
    assert_bit_identical(merged, default)


def test_a_donor_at_zero_everywhere_is_never_read(models, tmp_path, reads):
    text = analyze_style_recipe(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)])
    data = yaml.safe_load(text)
    data["models"].append({"model": str(models["donor2"]), "parameters": {"strength": 0.0}})
    merged = merge_in_process(yaml.safe_dump(data), tmp_path / "out")
    assert models["donor2"].resolve() not in reads
    assert reads[models["donor"].resolve()] == [MLP_DOWN_1]
    assert_bit_identical(merged, by_hand(models["target"], [Selection(MLP_DOWN_1, str(models["donor"]))]))


def test_other_merge_methods_are_planned_as_usual(models, tmp_path, reads):
    text = yaml.safe_dump({
        "merge_method": "linear",
        "models": [{"model": str(models["target"]), "parameters": {"weight": 1.0}},
                   {"model": str(models["donor"]), "parameters": {"weight": 0.0}}],
    })
    merge_in_process(text, tmp_path / "out")
    assert sorted(reads[models["donor"].resolve()]) == tensor_names(models["donor"])


@pytest.mark.parametrize("tie_target,tie_donor", [(True, True), (True, False), (False, True)],
                         ids=["both-tied", "target-tied-donor-not", "donor-tied-target-not"])
def test_tied_embeddings_and_optional_lm_head(tmp_path, reads, monkeypatch, tie_target, tie_donor):
    target = make_model(tmp_path / "t", seed=0, tie=tie_target)
    donor = make_model(tmp_path / "d", seed=1, tie=tie_donor)
    sels = [Selection("model.embed_tokens.weight", str(donor), 1.0), Selection(MLP_DOWN_1, str(donor), 0.5)]
    text = analyze_style_recipe(target, sels)
    merged = merge_in_process(text, tmp_path / "hooked")
    donor_reads = set(reads[donor.resolve()])
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    default = merge_in_process(text, tmp_path / "default")
    assert_bit_identical(merged, default)
    assert "lm_head.weight" in merged or tie_target
    # at most the optional lm_head, which mergekit writes only because the donor has it
    assert donor_reads - {t.tensor for t in sels} <= ({"lm_head.weight"} if tie_target and not tie_donor else set())


def test_a_merged_tokenizer_still_gets_every_embedding(models, tmp_path, reads, monkeypatch):
    """tokenizer_source builds the vocabulary from every model: embeddings are not dropped."""
    sels = [Selection(MLP_DOWN_1, str(models["donor"]), 1.0)]
    data = yaml.safe_load(analyze_style_recipe(models["target"], sels))
    data["tokenizer_source"] = "union"
    text = yaml.safe_dump(data)
    merged = merge_in_process(text, tmp_path / "hooked")
    assert sorted(reads[models["donor"].resolve()]) == sorted(
        [MLP_DOWN_1, "model.embed_tokens.weight", "lm_head.weight"])
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    assert_bit_identical(merged, merge_in_process(text, tmp_path / "default"))


# --------------------------------------------------------------------------- through the real CLIs


@pytest.mark.slow
def test_mergekit_yaml_needs_only_the_transplanted_tensors(models, tmp_path, monkeypatch):
    """The strongest check: the donor folder holds nothing but the transplanted tensors."""
    sels = [Selection(MLP_DOWN_1, str(models["donor"]), 1.0), Selection(Q_PROJ_0, str(models["donor"]), 0.5)]
    expected = by_hand(models["target"], sels)
    organ = organ_like(models["donor"], [MLP_DOWN_1, Q_PROJ_0], tmp_path / "organ")
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(analyze_style_recipe(models["target"],
                                          [Selection(s.tensor, str(organ), s.strength) for s in sels]))

    proc = cli("mergekit-yaml", recipe, tmp_path / "yaml", "--no-copy-tokenizer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bit_identical(load_state(tmp_path / "yaml"), expected)

    proc = cli("mergekit-transplant", "merge", recipe, tmp_path / "plugin")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bit_identical(load_state(tmp_path / "plugin"), expected)

    # without the hook mergekit asks the stripped donor for tensors it does not have (mergekit's own
    # run_merge, what mergekit-yaml runs, in process: the hook reads the variable at each merge)
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    with pytest.raises(Exception, match="not present"):
        merge_in_process(recipe.read_text(), tmp_path / "read-all")


def test_organ_extract_then_merge_is_bit_identical(models, tmp_path):
    from mergekit_transplant import organ as organ_module
    sels = [Selection(MLP_DOWN_1, str(models["donor"]), 1.0), Selection(Q_PROJ_0, str(models["donor"]), 0.5)]
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(analyze_style_recipe(models["target"], sels))
    result = organ_module.extract_organ(recipe, tmp_path / "organ")
    organ_files = {p.name for p in (tmp_path / "organ").iterdir() if p.suffix == ".safetensors"}
    assert organ_files, "the organ holds safetensors"
    # mergekit's own run_merge (what mergekit-yaml runs), in process: plain mergekit-yaml on an organ's recipe
    # runs as a console script in test_organ.py and on an organ-like donor in the test above
    merged = merge_in_process((result.organ_dir / "recipe.yml").read_text(), tmp_path / "out")
    assert_bit_identical(merged, by_hand(models["target"], sels))


# --------------------------------------------------------------------------- bytes read from disk

CHILD = r"""
import sys
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
import mergekit_transplant
from mergekit_transplant.flows import run_transplant
mergekit_transplant.register()

how, recipe, out = sys.argv[1:]
config = MergeConfiguration.model_validate(yaml.safe_load(open(recipe)))
options = MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False)
if how == "run_merge":  # what mergekit-yaml runs
    run_merge(config, out, options)
else:  # what mergekit-transplant merge runs: check, non-finite guard, merge
    run_transplant(recipe, out, options, write_card=False)
"""


def cold_merge_donor_bytes(how: str, recipe: Path, out: Path, files, env=None) -> int:
    """Evict the models, merge in a fresh process, return how much of the donor file came from disk."""
    pagecache.evict(files)
    assert all(pagecache.resident_bytes(f) == 0 for f in files)
    proc = subprocess.run([sys.executable, "-c", CHILD, how, str(recipe), str(out)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pagecache.resident_bytes(files[1])


@pytest.mark.slow
def test_cold_cache_merge_reads_only_the_transplanted_donor_bytes(cold_pair, tmp_path):
    """Bytes read from the donor file, counted in the page cache (tests/pagecache.py says why and how).

    The budget: the transplanted tensors, each rounded out to whole pages
    (one page either side), plus the safetensors header and one read-ahead
    window of the disk holding the files, for the header read (``read`` on a
    fresh descriptor may read ahead that far; the tensors themselves are
    prefetched with read-ahead off). Anything the planner hook or the read
    hints stop doing -- reading an untransplanted tensor, or a page fault's
    read-around on the mapping -- costs megabytes more.
    """
    target, donor, files = cold_pair
    # far from the header and from each other: a read-around of one cannot cover the other
    transplanted = ["model.layers.3.mlp.down_proj.weight", "model.layers.5.self_attn.o_proj.weight"]
    header = read_index(str(donor)).tensors
    transplanted_bytes = sum(header[n].nbytes for n in transplanted)
    header_bytes = min(info.begin for info in header.values())
    donor_bytes = files[1].stat().st_size
    window = pagecache.read_ahead_bytes(files[1])
    budget = transplanted_bytes + len(transplanted) * 2 * pagecache.PAGE + header_bytes + window
    assert budget < 0.6 * donor_bytes, "the test model is too small for this disk's read-ahead to tell"
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(analyze_style_recipe(target, [Selection(n, str(donor)) for n in transplanted]))

    everything = cold_merge_donor_bytes("run_merge", recipe, tmp_path / "all", files,
                                        env={registration.READ_ALL_ENV: "1"})
    assert everything >= 0.9 * donor_bytes, (everything, donor_bytes)  # the measurement sees a full read
    for how in ("run_merge", "run_transplant"):
        read = cold_merge_donor_bytes(how, recipe, tmp_path / how, files)
        assert transplanted_bytes <= read <= budget, (how, read, budget, transplanted_bytes, window)
        assert_bit_identical(load_state(tmp_path / how), load_state(tmp_path / "all"))


def test_read_hints_bring_in_a_planned_tensor_without_read_around(tmp_path, monkeypatch):
    """The read hints at work, in process: mergekit's own loader reads one transplanted tensor from a cold donor.

    A page fault on mergekit's memory map of the donor makes the kernel read a
    whole read-ahead window around the faulting page (megabytes here); the
    hints prefetch the planned tensor's exact bytes first, so the fault finds
    them cached and nothing around them is read. Counted in the page cache
    (tests/pagecache.py), outside the first read-ahead window (the header,
    which mergekit maps and reads itself). The same read with the hints off
    (``MERGEKIT_TRANSPLANT_READ_ALL=1``) is the test's own proof that the
    read-around shows. Catches the hints not installed, which the cold-cache
    merge above cannot tell on a disk with a large read-ahead.
    """
    import shutil

    from mergekit_transplant.adapter import read_hints
    from tests.mergekit_plans import loader, plan, transplant_recipe

    size = dict(hidden=256, intermediate=1024, layers=6)
    target = make_model(tmp_path / "t", seed=0, tokenizer=False, **size)
    donor = make_model(tmp_path / "d", seed=1, tokenizer=False, **size)
    path = donor / "model.safetensors"
    if not pagecache.eviction_works(path):
        pytest.skip(f"the page cache of {tmp_path} cannot be evicted here (tmpfs?), so reads cannot be counted")
    window = pagecache.read_ahead_bytes(path)
    slack = 8  # pages: the hinted read shows up to 4 pages just before the tensor on our 8 MiB disk
    if window < 4 * slack * pagecache.PAGE:
        pytest.skip(f"read-ahead of {window} bytes: a read-around cannot be told from {slack} pages of slack")
    name = "model.layers.5.mlp.down_proj.weight"  # 4 MiB past the header's read-ahead, 1 MiB
    begin, end = read_hints.tensor_ranges(str(path))[name]
    header_region = (min(b for b, _ in read_hints.tensor_ranges(str(path)).values()) + window) // pagecache.PAGE + 1
    assert begin // pagecache.PAGE > header_region + slack, "the tensor must lie beyond the header's read-ahead"

    def read_cold(donor: Path) -> int:
        """Plan, evict, let mergekit's loader read the tensor; pages read outside it and the header region."""
        path = donor / "model.safetensors"
        plan(transplant_recipe(target, [Selection(name, str(donor), 1.0)]))
        for _ in range(50):  # the header read's read-ahead may still be landing: evict until nothing is left
            pagecache.evict([path])
            if pagecache.resident_bytes(path) == 0:
                break
            time.sleep(0.1)
        assert pagecache.resident_bytes(path) == 0
        read.append(loader(donor).get_tensor(name).clone())
        first, last = begin // pagecache.PAGE, (end + pagecache.PAGE - 1) // pagecache.PAGE
        return sum(r for i, r in enumerate(pagecache.resident_pages(path)) if i >= header_region and not first <= i < last)

    read = []
    hinted = read_cold(donor)
    monkeypatch.setenv(registration.READ_ALL_ENV, "1")
    # the same bytes in another file (mergekit's mapping of the first keeps its pages in the cache)
    unhinted = read_cold(Path(shutil.copytree(donor, tmp_path / "d-copy")))
    assert unhinted > 4 * slack, f"no read-around seen without the hints ({unhinted} pages): the test cannot tell"
    assert hinted <= slack, f"{hinted} pages read around the planned tensor (without the hints: {unhinted})"
    expected = load_state(donor)[name]  # loaded last: its own mapping would keep pages cached
    assert all(torch.equal(t, expected) for t in read)


# --------------------------------------------------------------------------- fallbacks


def test_incompatible_planner_signature_falls_back_to_reading_everything(
        models, tmp_path, reads, pristine_planner):
    registration.uninstall_planner_hook()
    mergekits_own = pristine_planner.plan_tensor

    def plan_tensor(self, *args, **kwargs):  # a future mergekit with another signature
        return mergekits_own(self, *args, **kwargs)

    pristine_planner.plan_tensor = plan_tensor
    assert registration.install_planner_hook() is False
    assert pristine_planner.plan_tensor is plan_tensor
    sels = selections(models)
    merged = merge_in_process(analyze_style_recipe(models["target"], sels), tmp_path / "out")
    assert sorted(reads[models["donor"].resolve()]) == tensor_names(models["donor"])
    assert_bit_identical(merged, by_hand(models["target"], sels))


def test_planner_internals_that_break_the_hook_fall_back_per_tensor(models, tmp_path, reads, monkeypatch):
    """A resolver with another signature (say): the hook steps aside, the merge still runs."""
    import mergekit.parameter_resolver

    assert registration.planner_hook_installed()

    def resolve_parameters(spec, weight_info, models):  # noqa: ARG001
        raise RuntimeError("a resolver the hook was not written for")

    monkeypatch.setattr(mergekit.parameter_resolver, "resolve_parameters", resolve_parameters)
    sels = selections(models)
    merged = merge_in_process(analyze_style_recipe(models["target"], sels), tmp_path / "out")
    assert sorted(reads[models["donor"].resolve()]) == tensor_names(models["donor"])
    assert_bit_identical(merged, by_hand(models["target"], sels))


def test_planner_called_in_an_unknown_way_is_passed_through(pristine_planner, monkeypatch):
    """Extra arguments a newer mergekit might pass reach the original unchanged."""
    seen = {}

    def plan_tensor(self, weight, weights_in, models, cfg_reader, extra=None):
        seen.update(weight=weight, weights_in=weights_in, models=models, extra=extra)

    registration.uninstall_planner_hook()
    pristine_planner.plan_tensor = plan_tensor
    assert registration.install_planner_hook() is True
    pristine_planner.plan_tensor(object(), "w", ["a"], ["m"], object(), extra=7)  # no _method: steps aside
    assert seen == {"weight": "w", "weights_in": ["a"], "models": ["m"], "extra": 7}
    assert registration.uninstall_planner_hook() is True
    assert pristine_planner.plan_tensor is plan_tensor


# --------------------------------------------------------------------------- the GPU check script


@pytest.mark.slow
def test_gpu_check_dry_run_compares_and_fails_on_a_flipped_bit(tmp_path):
    """benchmarks/gpu_check.sh --device cpu: its comparison passes on real outputs and catches one bit."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(["bash", str(script), "--device", "cpu", "--merge-only", "--inject-mismatch",
                           "--work", str(tmp_path / "work"), "--python", sys.executable, "--hidden", "64",
                           "--layers", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "injected a one-bit mismatch" in proc.stdout
    mismatches = [line for line in proc.stdout.splitlines() if "is not bit-identical" in line]
    assert len(mismatches) == 1, proc.stdout  # only the flipped tensor; every real output matched
    assert proc.stdout.count("bit-identical to the CPU output") == 3 + 1


def test_uninstall_restores_mergekits_own_planner_and_loader(pristine_planner):
    """MERGEKIT_TRANSPLANT_READ_ALL's in-process twin: every wrapper off, then back on."""
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex

    from mergekit_transplant.adapter import read_hints

    assert registration.planner_hook_installed()
    assert getattr(LazyTensorLoader.get_tensor, read_hints.HINT_MARK, False)
    assert getattr(ShardedTensorIndex.__dict__["from_file"].__func__, read_hints.HINT_MARK, False)
    assert registration.uninstall_planner_hook() is True
    assert registration.planner_hook_installed() is False
    assert not hasattr(pristine_planner.plan_tensor, registration.HOOK_MARK)
    assert not hasattr(LazyTensorLoader.get_tensor, read_hints.HINT_MARK)
    assert not hasattr(LazyTensorLoader.get_tensor, "__wrapped__")  # mergekit's own function, not a wrapper
    from_file = ShardedTensorIndex.__dict__["from_file"]
    assert isinstance(from_file, classmethod) and not hasattr(from_file.__func__, read_hints.HINT_MARK)
    assert registration.uninstall_planner_hook() is False  # nothing left to remove
    assert registration.install_planner_hook() is True
    assert registration.planner_hook_installed() is True
    assert getattr(LazyTensorLoader.get_tensor, read_hints.HINT_MARK, False)


def test_a_call_the_signature_cannot_bind_still_reaches_mergekit_with_its_planner(pristine_planner):
    """A planner wrapped by someone else (its signature says less than it accepts): the hook passes the call on."""
    import functools

    seen = {}

    def strict(self, weight, weights_in, models, cfg_reader):
        raise AssertionError("not called")

    @functools.wraps(strict)  # inspect.signature now reports strict's signature
    def lenient(self, *args, **kwargs):
        seen.update(self=self, args=args, kwargs=kwargs)

    registration.uninstall_planner_hook()
    pristine_planner.plan_tensor = lenient
    assert registration.install_planner_hook() is True
    planner = object()
    pristine_planner.plan_tensor(planner, "w", surprise=1)  # cannot bind: the hook steps aside
    assert seen == {"self": planner, "args": ("w",), "kwargs": {"surprise": 1}}
