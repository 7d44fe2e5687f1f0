"""``analyze``'s settings and report are typed: one dataclass each, the CLI generated from the settings,
old report files still load, and ``to_cli()`` reproduces a run."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mergekit_transplant.analysis import SCORES, AnalysisReport, AnalyzeSettings
from mergekit_transplant.analysis.report import SCHEMA_VERSION
from mergekit_transplant.cli import main
from mergekit_transplant.options import cli_fields, default_of, flags_of, settings_from
from mergekit_transplant.errors import TransplantError

FIXTURE = Path(__file__).parent / "fixtures" / "analysis_report_schema1.json"


def _parse(command: str) -> AnalyzeSettings:
    """The settings click builds from a command line (without running it)."""
    args = shlex.split(command)
    assert args[:2] == ["mergekit-transplant", "analyze"]
    cmd = main.get_command(None, "analyze")
    ctx = cmd.make_context("analyze", args[2:])
    return settings_from(AnalyzeSettings, ctx.params)


def test_a_schema_1_report_loads_typed_and_keeps_every_section():
    data = json.loads(FIXTURE.read_text())
    assert data["schema"] == 1
    report = AnalysisReport.load(FIXTURE)
    assert isinstance(report.settings, AnalyzeSettings)
    assert report.score == "attribution" and report.settings.select == "greedy" and report.settings.top_k == 2
    assert report.settings.workload == "work.jsonl" and report.settings.also == ["local"]
    assert report.units == data["selected"]["units"] and report.ranking == data["ranking"]
    assert report.greedy == data["greedy"] and report.controls == data["controls"]
    again = report.to_json()
    assert again["schema"] == SCHEMA_VERSION
    for key in data:
        if key not in ("schema", "settings"):
            assert again[key] == data[key], key
    for key, value in data["settings"].items():  # every schema-1 setting is written back unchanged
        assert again["settings"][key] == value, key
    # the dict view reads like the file did
    assert report["ranking"] == data["ranking"] and "layers" not in report and "greedy" in report


def test_the_reproduce_command_of_an_old_report_parses_back_to_its_settings():
    report = AnalysisReport.load(FIXTURE)
    command = report.reproduce(output="recipe.yml")
    assert command.startswith("mergekit-transplant analyze --target models/target --donor models/donor "
                              "--workload work.jsonl")
    parsed = _parse(command)
    assert parsed.record() == report.settings.record()


def test_reports_of_a_newer_schema_or_the_wrong_shape_are_refused_by_name():
    data = json.loads(FIXTURE.read_text())
    data["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(TransplantError, match=f"schema {SCHEMA_VERSION + 1}"):
        AnalysisReport.from_json(data, "r.json")
    with pytest.raises(TransplantError, match="r.json: not the report.json of .*no 'ranking' section"):
        AnalysisReport.from_json({"settings": {}}, "r.json")
    with pytest.raises(TransplantError, match="pass it with --eval"):
        AnalysisReport.from_json({"tasks": {}}, "r.json")


def test_unknown_keys_survive_a_read_and_write():
    data = json.loads(FIXTURE.read_text())
    data["settings"]["plot"] = "heat.png"
    data["note"] = {"by": "hand"}
    again = AnalysisReport.from_json(data).to_json()
    assert again["settings"]["plot"] == "heat.png" and again["note"] == {"by": "hand"}


def test_analyze_options_are_generated_from_the_settings_fields():
    cmd = main.get_command(None, "analyze")
    params = {p.name: p for p in cmd.params if p.name not in ("debug", "verbose", "quiet") and not p.hidden}  # the group adds these
    fields = {f.name: f for f in cli_fields(AnalyzeSettings)}
    assert sorted(params) == sorted(fields)
    for name, f in fields.items():
        p = params[name]
        assert p.help == f.metadata["help"], name
        assert list(p.opts) + list(p.secondary_opts) == [o for fl in flags_of(f) for o in fl.split("/")], name
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert p.required, name
            continue
        default = default_of(f)
        assert p.default == (tuple(default) if isinstance(default, list) else default), name
    # the score names come from analysis.scores, not a copy in the CLI
    assert list(params["score"].type.choices) == list(SCORES) == list(params["also"].type.choices)


def test_to_cli_round_trips_every_kind_of_field():
    settings = AnalyzeSettings(
        target="t", donor="d@rev", lm_eval_task="arith", include_path=["tasks dir"], score="local",
        also=["activation", "gain"], top_k=3, select="top", strength=0.5, modules=["*mlp*", "*o_proj*"],
        include_embeddings=True, granularity="module", recompute=True, min_gain=0.25, output="r.yml",
        report_out="rep.json", device="cpu")
    command = settings.to_cli()
    assert "--recompute" in command and "--no-recompute" not in command and "--report-out rep.json" in command
    assert _parse(command) == settings


def test_the_old_report_spelling_still_works_and_is_hidden(tmp_path):
    cmd = main.get_command(None, "analyze")
    ctx = cmd.make_context("analyze", ["--target", "t", "--donor", "d", "--workload", "w.jsonl", "-o", "r.yml",
                                       "--report", "old.json"])
    assert settings_from(AnalyzeSettings, ctx.params).report_out == "old.json"
    help_text = CliRunner().invoke(main, ["analyze", "--help"]).output
    assert "--report-out" in help_text
    assert "--report " not in help_text and "--report\n" not in help_text
    hidden = [p for p in cmd.params if isinstance(p, click.Option) and p.hidden]
    assert [p.opts for p in hidden] == [["--report"]]


def test_analyze_accepts_the_settings_object_or_its_fields():
    from mergekit_transplant.analysis import analyze

    names = {f.name for f in dataclasses.fields(AnalyzeSettings)}
    with pytest.raises(TypeError):
        analyze("t", "d", "w.jsonl", not_a_setting=1)
    assert {"score", "also", "top_k", "select", "recompute", "force"} <= names


def test_sweep_names_its_outputs_by_what_they_are_and_keeps_the_old_spelling_hidden(tmp_path):
    cmd = main.get_command(None, "sweep")
    ctx = cmd.make_context("sweep", ["--report", "r.json", "--tasks", "t", "-o", "s.json",
                                     "--output-recipe", "best.yml"])
    assert ctx.params["output"] == "s.json" and ctx.params["old_output_recipe"] == "best.yml"
    help_text = CliRunner().invoke(main, ["sweep", "--help"]).output
    assert "-o, --output" in help_text and "--recipe-out" in help_text and "--output-recipe" not in help_text
    # -o used to name the recipe: a .yml there is refused before anything runs, not overwritten with JSON
    result = CliRunner().invoke(main, ["sweep", "--report", str(tmp_path / "r.json"), "--tasks", "t",
                                       "-o", str(tmp_path / "best.yml")])
    assert result.exit_code == 2 and "--recipe-out" in result.output and not (tmp_path / "best.yml").exists()


def test_sweep_options_are_generated_from_sweep_settings():
    """Every SweepSettings field with help is a sweep option with that help; --k/--strength parse to lists."""
    from mergekit_transplant.sweep.runner import SweepSettings

    cmd = main.get_command(None, "sweep")
    params = {p.name: p for p in cmd.params}
    for f in cli_fields(SweepSettings):
        assert params[f.name].help == f.metadata["help"], f.name
        assert list(params[f.name].opts) + list(params[f.name].secondary_opts) == [
            o for flag in flags_of(f) for o in flag.split("/")], f.name
    ctx = cmd.make_context("sweep", ["--report", "r.json", "--tasks", "t", "--k", "2,1", "--strength", "0.5,1",
                                     "--no-whole-model"])
    settings = settings_from(SweepSettings, ctx.params, select_tasks="t", report_tasks="t")
    assert (settings.ks, settings.strengths, settings.whole_model) == ([1, 2], [0.5, 1.0], False)
    with pytest.raises(TransplantError, match="--k 'x'"):
        cmd.make_context("sweep", ["--k", "x"])


def test_reproduce_command_names_the_score_even_at_its_default():
    """The default score was changed by a benchmark once; an old command must keep reproducing its run."""
    from mergekit_transplant.analysis import DEFAULT_SCORE

    command = AnalyzeSettings(target="t", donor="d", workload="w.jsonl").to_cli()
    assert f"--score {DEFAULT_SCORE}" in command
