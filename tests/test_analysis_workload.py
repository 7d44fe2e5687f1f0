"""Workloads: .jsonl, .txt and lm-eval tasks read right; bad files named precisely."""

from __future__ import annotations

import hashlib
import json

import pytest

from mergekit_transplant.analysis import load_workload
from mergekit_transplant.analysis.tokens import TokenSequence, fit
from mergekit_transplant.errors import TransplantError


def test_jsonl_with_and_without_continuations(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"text": "one plus two", "continuation": " three"}\n\n{"text": "red", "id": 4}\n')
    w = load_workload(path)
    assert [(s.text, s.continuation) for s in w.samples] == [("one plus two", " three"), ("red", None)]
    assert w.kind == "jsonl" and w.n == 2
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert w.describe()["path"] == str(path)


def test_txt_one_prompt_per_line(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("the cat\n\n  a dog  \n")
    w = load_workload(path)
    assert [s.text for s in w.samples] == ["the cat", "a dog"]
    assert all(s.continuation is None for s in w.samples)


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n{"text": "broken"\n', r"line 2: not valid JSON"),
    ('{"text": "ok"}\n["a list"]\n', r"line 2: expected a JSON object"),
    ('{"prompt": "no text field"}\n', r'line 1: field "text" is missing'),
    ('{"text": 3}\n', r'line 1: field "text" is a int, not a string'),
    ('{"text": "  "}\n', r'line 1: field "text" is empty'),
    ('{"text": "a"}\n\n{"text": "b", "continuation": 5}\n', r'line 3: field "continuation" is a int'),
    ("\n\n", r"no prompts in it"),
])
def test_malformed_jsonl_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TransplantError, match=message):
        load_workload(path)


def test_other_bad_workloads(tmp_path):
    with pytest.raises(TransplantError, match="no such file"):
        load_workload(tmp_path / "missing.jsonl")
    (tmp_path / "w.csv").write_text("a,b\n")
    with pytest.raises(TransplantError, match="unknown format .csv"):
        load_workload(tmp_path / "w.csv")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TransplantError, match="no prompts"):
        load_workload(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(TransplantError, match="not UTF-8"):
        load_workload(tmp_path / "latin.txt")
    with pytest.raises(TransplantError, match="exactly one workload"):
        load_workload(tmp_path / "empty.txt", lm_eval_task="x")
    with pytest.raises(TransplantError, match="at least 1"):
        load_workload(tmp_path / "latin.txt", limit=0)


def test_limit_keeps_a_seeded_subset_in_order(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("\n".join(f"prompt {i}" for i in range(50)))
    a = load_workload(path, limit=10, seed=3)
    b = load_workload(path, limit=10, seed=3)
    c = load_workload(path, limit=10, seed=4)
    assert a.samples == b.samples and a.samples != c.samples
    numbers = [int(s.text.split()[1]) for s in a.samples]
    assert numbers == sorted(numbers) and len(set(numbers)) == 10
    assert a.total == 50 and a.n == 10


def test_overlong_sequences_keep_their_scored_end():
    seq = fit(list(range(10)), [100, 101], 6)
    assert seq.truncated and seq.ids == [6, 7, 8, 9, 100, 101] and seq.prompt_len == 4
    assert seq.scored == [3, 4] and seq.labels == [100, 101]
    long_cont = fit([1, 2, 3], list(range(10, 20)), 5)
    assert long_cont.ids == [3, 10, 11, 12, 13] and long_cont.prompt_len == 1
    assert TokenSequence([5, 6, 7], 3).scored == [2] and TokenSequence([5, 6, 7], 3).labels == [None]


TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{prompt}}}} equals"
{extra}
metric_list:
  - metric: acc
"""


def _task(tmp_path, name, output_type, extra):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "one plus two", "answer": "three", "label": 0},
        {"prompt": "two plus two", "answer": "four", "label": 1},
    ]) + "\n")
    (tmp_path / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, output_type=output_type,
                                                            extra=extra))


@pytest.mark.slow
def test_lm_eval_task_prompts_and_gold_continuations(tmp_path, monkeypatch):
    import lm_eval  # noqa: F401 - in the test extra
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    _task(tmp_path, "tiny_gen", "loglikelihood", 'doc_to_target: "{{answer}}"')
    _task(tmp_path, "tiny_mc", "multiple_choice", 'doc_to_choice: ["three", "four"]\ndoc_to_target: label')
    gen = load_workload(lm_eval_task="tiny_gen", include_path=tmp_path)
    assert [(s.text, s.continuation) for s in gen.samples] == [
        ("one plus two equals", " three"), ("two plus two equals", " four")]
    assert gen.kind == "lm-eval" and gen.source == "lm-eval:tiny_gen" and len(gen.sha256) == 64
    assert load_workload("lm-eval:tiny_gen", include_path=tmp_path).samples == gen.samples
    mc = load_workload(lm_eval_task="tiny_mc", include_path=str(tmp_path))
    assert [s.continuation for s in mc.samples] == [" three", " four"]  # index -> the gold choice
    with pytest.raises(TransplantError, match="not found"):
        load_workload(lm_eval_task="no_such_task_anywhere", include_path=tmp_path)
