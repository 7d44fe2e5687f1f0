"""Report files of earlier versions still load, today's read back exactly, and a newer schema is refused.

The old files in ``tests/data/old_reports`` are real outputs of the commands
before ``sweep.json`` had a schema (README there). Each reader is the class's
own ``from_json``/``load`` (through ``versioned.py``), so what is checked here
is what ``card``, the demo and the benchmarks read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.sweep.result import SweepResult
from mergekit_transplant.unplug.report import UnplugReport
from mergekit_transplant.unplug.sweep import UnplugSweepResult

OLD = Path(__file__).parent / "data" / "old_reports"


def _v1_sweep() -> dict:
    return json.loads((OLD / "sweep.v1.json").read_text())


def test_a_schema_1_sweep_json_loads_with_the_same_content():
    old = _v1_sweep()
    result = SweepResult.load(OLD / "sweep.v1.json")
    assert result.schema == 1
    assert result.split_labels == {"select": "sel_ppl", "report": "test_ppl"}
    assert result.splits == {"select": ["sel_ppl"], "report": ["test_ppl"]}
    assert result.settings.ks == [1, 2, 4] and result.settings.seed == 7 and result.settings.random_controls == 2
    assert (result.ranking.target, result.ranking.donor, result.ranking.score) == (
        old["settings"]["target"], old["settings"]["donor"], "local")
    # one point per pair of rows (one row per split label), in the file's order
    assert len(result.points) == len(old["points"]) // 2
    view = result.to_dict()
    for row, again in zip(old["points"], view["points"]):
        if row["selection"] == "whole-model":  # schema 1 kept only the count of a whole-model point's tensors
            row, again = dict(row, tensors=None), dict(again, tensors=None)
        assert again == row
    assert view["references"] == old["references"]
    assert view["random_bands"] == old["random_bands"]
    assert view["best"] == old["best"]  # recomputed from the points: the same choice and figures
    settings = dict(view["settings"], pool_size=None)  # schema 1 recorded the pool's size, not the pool
    assert settings == dict(old["settings"], pool_size=None)
    assert (view["warnings"], view["timing"], view["optimistic"]) == (old["warnings"], old["timing"], False)
    # the analysis points' tensors are their units (module units), so they come back by name
    assert all(p.tensors == p.units for p in result.of("analysis"))
    assert result.ranking.order == result.of("analysis", 4)[0].units


def test_sweep_json_round_trip_is_exact_and_deterministic():
    result = SweepResult.load(OLD / "sweep.v1.json")
    text = json.dumps(result.to_json(), indent=2)
    again = SweepResult.from_json(text, "sweep.json")
    assert again.schema == 2
    result.schema = 2
    assert again == result
    assert json.dumps(again.to_json(), indent=2) == text
    assert again.to_json()["schema"] == 2


def test_a_sweep_json_written_by_the_writer_reads_back(tmp_path):
    result = SweepResult.load(OLD / "sweep.v1.json")
    path = tmp_path / "sweep.json"
    result.write(path)
    assert json.loads(path.read_text()) == result.to_json()
    assert SweepResult.load(path).to_dict() == result.to_dict()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema=3), "sweep.json: sweep schema 3 is not one this version reads (1, 2); upgrade"),
    (lambda d: d.update(points={}), "'points' is a dict, not a list"),
    (lambda d: d.pop("settings"), "'settings' is missing, not an object"),
    (lambda d: d["settings"].pop("select_split"), "'settings.select_split' is missing, not a string"),
    (lambda d: d["settings"].update(ks=[0]), "--k values must be positive integers"),
    (lambda d: d["points"].pop(), "rows do not split into one per label"),
    (lambda d: d["points"][0].pop("tasks"), "'points[0].tasks' is missing, not an object"),
])
def test_a_malformed_or_newer_sweep_json_is_one_line_naming_the_file(change, message):
    data = _v1_sweep()
    change(data)
    with pytest.raises(TransplantError) as caught:
        SweepResult.from_json(json.dumps(data), "sweep.json")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("sweep.json: ")


def test_a_newer_schema_2_file_is_checked_too():
    data = SweepResult.load(OLD / "sweep.v1.json").to_json()
    data["points"][0]["colour"] = "red"
    with pytest.raises(TransplantError, match=r"s.json: not the sweep.json .*points\[0\] has unknown field\(s\) colour"):
        SweepResult.from_json(data, "s.json")
    data = SweepResult.load(OLD / "sweep.v1.json").to_json()
    del data["ranking"]["pool"]
    with pytest.raises(TransplantError, match="'ranking.pool' is missing, not a list"):
        SweepResult.from_json(data, "s.json")
    del data["ranking"]
    with pytest.raises(TransplantError, match="'ranking' is missing, not an object"):
        SweepResult.from_json(data, "s.json")


def test_missing_or_unreadable_sweep_json(tmp_path):
    with pytest.raises(TransplantError, match="sweep results not found"):
        SweepResult.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TransplantError, match="bad.json: not valid JSON"):
        SweepResult.load(tmp_path / "bad.json")


def test_old_unplug_files_load_and_write_back_byte_for_byte():
    report = UnplugReport.load(OLD / "unplug.v1.json")
    assert report.to_json() == (OLD / "unplug.v1.json").read_text()
    assert UnplugReport.from_json(report.to_json()) == report
    sweep = UnplugSweepResult.load(OLD / "unplug-sweep.v1.json")
    assert sweep.to_json() == (OLD / "unplug-sweep.v1.json").read_text()
    assert UnplugSweepResult.from_json(sweep.to_json()) == sweep


@pytest.mark.parametrize("cls, name, what", [
    (UnplugReport, "unplug.v1.json", "unplug report"), (UnplugSweepResult, "unplug-sweep.v1.json", "unplug sweep"),
])
def test_a_newer_unplug_schema_is_refused_in_one_line(tmp_path, cls, name, what):
    data = json.loads((OLD / name).read_text())
    data["schema"] = 2
    path = tmp_path / name
    path.write_text(json.dumps(data))
    with pytest.raises(TransplantError) as caught:
        cls.load(path)
    assert f"{what} schema 2 is not one this version reads (1); upgrade mergekit-transplant" in str(caught.value)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
