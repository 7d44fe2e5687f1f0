"""``make mutation``: how many planted bugs the tests catch, module by module (mutmut).

A benchmark of the suite, not a CI step: for each module the product stands
on, mutmut (https://github.com/boxed/mutmut) plants one small bug at a time
(a flipped comparison, a changed constant, a dropped argument) and runs that
module's test files against it. A mutant the tests fail on is *killed*; one
they pass on *survived* and is either a missing test or a change that cannot
be observed (an equivalent mutant). docs/testing.md gives the figures and a
reason or a new test for every survivor.

Each group runs in its own scratch copy of the working tree (build/mutation/),
so the checkout and its ``mutants/`` never mix. Only in-process tests can kill
a mutant: a test that runs the console script in a subprocess imports the
unmutated package. Mutants count as killed when a test failed or timed out;
"no tests" (no test reached the mutated function) counts as survived.

The goal (issue 18): no surviving mutant in the blend, the planner hook or the
sweep's selection rule, and at least 85% killed overall on these modules. The
verdict printed at the end is computed from the figures, not typed.

    python benchmarks/mutation.py [--group NAME ...] [--max-children N] [--work build/mutation]
                                  [--out docs/results/mutation.json] [--report-only]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import goal_verdict, machine, write_json  # noqa: E402

KILLED = {"killed", "timeout"}
#: mutants a run stopped before reaching: reported, and left out of the score
NOT_RUN = {"not checked"}
GOAL_OVERALL = 0.85


_REG, _HINTS = "mergekit_transplant.adapter.registration", "mergekit_transplant.adapter.read_hints"
_POLICY, _PLANNING = "mergekit_transplant.adapter.policy", "mergekit_transplant.adapter.planning"
_RECIPE, _SWEEP = "mergekit_transplant.recipe", "mergekit_transplant.sweep.result"
_PREFLIGHT = "mergekit_transplant.preflight"
#: the planner hook: the wrapper's body and the decision of which inputs mergekit reads
#: (``read_all_requested``, the switch that turns read planning off, lives in the adapter's policy module)
PLANNER_HOOK = ("_hooked_plan_tensor", "reads_needed", "per_input_parameters", "_is_zero", "_present")
POLICY = ("read_all_requested",)
#: read planning: which donor bytes the hints prefetch, and how
READ_PLANNING = ("note_donor_reads", "tensor_ranges", "prefetch_range", "_shard_path", "_before_get_tensor",
                 "_hint_tensor", "_enabled")
#: recipe strength resolution: the strength checks on the recipe's numbers (recipe.py) and mergekit's planner
#: run dry (adapter/planning.py)
STRENGTH_RESOLUTION = ("x__check_strength_values", "x__numbers", "xǁPlannedTensorǁdonor_strengths")
STRENGTH_PLANNING = ("x_resolve_strengths", "x_plan_config")
#: the pre-flight check: every finding of ``check`` (not ``CheckReport.format_table``, the table's layout)
PREFLIGHT = ("x_run_check", "x_check_filters", "x_is_clean_match", "x_suggest_exact", "x_filter_matches", "x__find",
             "xǁCheckReportǁok", "xǁCheckReportǁtransplanted_parameters")
#: the sweep's selection rule
SELECTION_RULE = ("x_oriented", "x_choose_best", "xǁSweepResultǁbest", "xǁSweepResultǁoriented")


@dataclass(frozen=True)
class Group:
    name: str
    modules: Sequence[str]
    tests: Sequence[str]
    #: (label, mutant-name prefix) pairs whose survivors must be zero
    zero_survivors: Sequence[tuple] = ()
    #: a pytest -k expression leaving out tests that run only in subprocesses (they cannot kill a mutant)
    deselect: str = ""
    #: fnmatch patterns of the mutant names in scope (module.x_function*); empty: every function of the modules.
    #: docs/testing.md says what each group leaves out and why.
    functions: Sequence[str] = ()


GROUPS = [
    Group("blend and strength checks", ["mergekit_transplant/method.py", "mergekit_transplant/strength.py"],
          ["tests/test_blend.py", "tests/test_method.py", "tests/test_checkpoint_layer.py"],
          [("the blend", "mergekit_transplant.method.x_blend__")]),
    Group("planner hook and read planning",
          ["mergekit_transplant/adapter/registration.py", "mergekit_transplant/adapter/read_hints.py",
           "mergekit_transplant/adapter/policy.py"],
          ["tests/test_planner_hook.py"],
          [("the planner hook", f"{_REG}.x_{name}__") for name in PLANNER_HOOK]
          + [("the planner hook", f"{_POLICY}.x_{name}__") for name in POLICY],
          functions=[f"{_REG}.x_{name}*" for name in PLANNER_HOOK + ("_note_donor_reads",)]
          + [f"{_POLICY}.x_{name}*" for name in POLICY]
          + [f"{_HINTS}.x_{name}*" for name in READ_PLANNING]),
    Group("recipe strength resolution", ["mergekit_transplant/recipe.py", "mergekit_transplant/adapter/planning.py"],
          ["tests/test_strength_resolution.py", "tests/test_check.py", "tests/test_properties.py"],
          functions=[f"{_RECIPE}.{name}*" for name in STRENGTH_RESOLUTION]
          + [f"{_PLANNING}.{name}*" for name in STRENGTH_PLANNING]),
    Group("sweep selection and reporting", ["mergekit_transplant/sweep/result.py"],
          ["tests/test_sweep_selection.py"],
          [("the sweep's selection rule", f"{_SWEEP}.{name}__") for name in SELECTION_RULE]),
    Group("pre-flight check", ["mergekit_transplant/preflight.py"], ["tests/test_preflight.py", "tests/test_check.py::test_clean_match_rule"],
          functions=[f"{_PREFLIGHT}.{name}*" for name in PREFLIGHT]),
]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def scratch_copy(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored files), nothing else."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("demo/models/", "docs/results/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def setup_cfg(group: Group) -> str:
    lines = ["[mutmut]", "source_paths=mergekit_transplant", "only_mutate=" + "\n    ".join(group.modules),
             "pytest_add_cli_args_test_selection=" + "\n    ".join(group.tests),
             "pytest_add_cli_args=-p no:cacheprovider\n    -q\n    -m\n    not slow"
             + (f"\n    -k\n    {group.deselect}" if group.deselect else "")]
    return "\n".join(lines) + "\n"


def mutmut(args: List[str], cwd: Path, log) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def statuses(cwd: Path) -> Dict[str, str]:
    exe = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(exe), "results", "--all", "true"], cwd=cwd, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("mergekit_transplant."):
            found[name] = status.strip()
    return found


def diff_of(cwd: Path, name: str) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(exe), "show", name], cwd=cwd, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def run_group(group: Group, root: Path, max_children: int, report_only: bool = False) -> dict:
    work = root / slug(group.name)
    start = time.perf_counter()
    if not report_only:
        scratch_copy(work)
        (work / "setup.cfg").write_text(setup_cfg(group))
        with open(root / f"{slug(group.name)}.log", "w") as log:
            mutmut(["run", "--max-children", str(max_children), *group.functions], work, log)
    wall = time.perf_counter() - start
    if not report_only:
        (root / f"{slug(group.name)}.wall_s").write_text(f"{wall:.1f}\n")
    elif (root / f"{slug(group.name)}.wall_s").exists():  # the run that left these results
        wall = float((root / f"{slug(group.name)}.wall_s").read_text())
    found = statuses(work) if work.exists() else {}
    if group.functions:  # the rest of the module is out of this group's scope (never run)
        found = {n: s for n, s in found.items() if any(fnmatch.fnmatchcase(n, p) for p in group.functions)}
    if not found:
        raise SystemExit(f"no mutmut results for {group.name}; see {root / (slug(group.name) + '.log')}")
    counts: Dict[str, int] = {}
    for status in found.values():
        counts[status] = counts.get(status, 0) + 1
    killed = sum(1 for s in found.values() if s in KILLED)
    not_run = sum(1 for s in found.values() if s in NOT_RUN)
    checked = len(found) - not_run
    survivors = sorted(n for n, s in found.items() if s not in KILLED | NOT_RUN)
    zero = {}
    for label, prefix in group.zero_survivors:
        zero.setdefault(label, [])
        zero[label] += [n for n in survivors if n.startswith(prefix)]
    return {
        "group": group.name, "modules": list(group.modules), "tests": list(group.tests),
        "functions": list(group.functions) or ["every function of the modules"],
        "mutants": len(found), "checked": checked, "not_run": not_run, "killed": killed,
        "score": killed / checked if checked else None,
        "statuses": counts, "wall_s": round(wall, 1) if wall >= 1 else None,
        "survivors": [{"name": n, "status": found[n], "diff": diff_of(work, n)} for n in survivors],
        "must_have_no_survivors": zero,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--group", action="append", help="run only these groups (by name or slug)")
    ap.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--work", default=str(REPO / "build" / "mutation"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "mutation.json"))
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: collect the results an earlier run left in --work")
    args = ap.parse_args(argv)
    wanted = set(args.group or [])
    groups = [g for g in GROUPS if not wanted or g.name in wanted or slug(g.name) in wanted]
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    previous = {}
    if wanted and Path(args.out).exists():  # a partial run updates its groups, keeps the others
        previous = {r["group"]: r for r in json.loads(Path(args.out).read_text())["groups"]}
    results = dict(previous)
    for group in groups:
        print(f"mutating {', '.join(group.modules)} against {', '.join(group.tests)} ...", flush=True)
        r = run_group(group, root, args.max_children, args.report_only)
        if r["wall_s"] is None and group.name in previous:
            r["wall_s"] = previous[group.name].get("wall_s")
        results[group.name] = r
        print(f"  {r['killed']}/{r['checked']} checked mutants killed ({100 * r['score']:.1f}%; {r['not_run']} not run) "
              f"in {r['wall_s'] or 0:.0f} s; "
              f"statuses {r['statuses']}", flush=True)
    ordered = [results[g.name] for g in GROUPS if g.name in results]
    total = sum(r.get("checked", r["mutants"]) for r in ordered)
    killed = sum(r["killed"] for r in ordered)
    zero_fail = {label: names for r in ordered for label, names in r["must_have_no_survivors"].items() if names}
    verdicts = [
        goal_verdict("no surviving mutant in the blend, the planner hook or the sweep's selection rule",
                     sum(len(v) for v in zero_fail.values()), "== 0", unit=" survivors"),
        goal_verdict("at least 85% of mutants killed overall on these modules",
                     killed / total if total else 0.0, f">= {GOAL_OVERALL}", unit=" killed"),
    ]
    print("\n| module group | modules | mutants | checked | killed | survived | score |\n|---|---|---:|---:|---:|---:|---:|")
    for r in ordered:
        checked = r.get("checked", r["mutants"])
        print(f"| {r['group']} | {', '.join(m.split('/')[-1] for m in r['modules'])} | {r['mutants']} | {checked} | "
              f"{r['killed']} | {checked - r['killed']} | {100 * r['score']:.1f}% |")
    print(f"| overall | | {sum(r['mutants'] for r in ordered)} | {total} | {killed} | {total - killed} | "
          f"{100 * killed / max(total, 1):.1f}% |\n")
    for r in ordered:
        for s in r["survivors"]:
            print(f"survived ({s['status']}): {s['name']}\n    " + s["diff"].replace("\n", "\n    "))
    for v in verdicts:
        print(v["line"])
    write_json(args.out, {"groups": ordered, "overall": {"mutants": total, "killed": killed,
                                                         "score": killed / total if total else None},
                          "verdicts": verdicts, "machine": machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
