"""Task lookup and the task-configuration hash that keys the result cache."""

import pytest

from mergekit_transplant.errors import TransplantError
from mergekit_transplant.evaluation.tasks import find_tasks, split_names

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
tag: my_tag
"""


def write(root, name, data):
    (root / f"{name}.yaml").write_text(YAML.format(name=name, data=data))


def test_hash_follows_the_data_file_even_when_given_relative_to_the_yaml(tmp_path):
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "a.jsonl"
    data.write_text('{"q": "x", "choices": ["a", "b"], "label": 0}\n')
    write(tmp_path, "task_a", "data/a.jsonl")  # relative: resolved against the YAML's folder
    write(tmp_path, "task_b", str(tmp_path / "data" / "b.jsonl"))
    (tmp_path / "data" / "b.jsonl").write_text(data.read_text())
    first = find_tasks(["task_a", "task_b"], tmp_path)
    a, b = first.config_hash("task_a"), first.config_hash("task_b")
    assert a != b
    data.write_text('{"q": "y", "choices": ["a", "b"], "label": 1}\n')
    again = find_tasks(["task_a", "task_b"], tmp_path)
    assert again.config_hash("task_a") != a  # the data changed: re-score
    assert again.config_hash("task_b") == b  # untouched task: still cached


def test_tags_expand_and_names_split(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "x", "choices": ["a", "b"], "label": 0}\n')
    write(tmp_path, "task_a", tmp_path / "d.jsonl")
    write(tmp_path, "task_b", tmp_path / "d.jsonl")
    tasks = find_tasks("my_tag", tmp_path)
    assert tasks.names == ["task_a", "task_b"]
    assert split_names(["a,b", " c ", "a"]) == ["a", "b", "c"]


def test_missing_include_path_and_unknown_task_are_clear_errors(tmp_path):
    with pytest.raises(TransplantError, match="--include-path .*nope: no such folder"):
        find_tasks(["x"], tmp_path / "nope")
    with pytest.raises(TransplantError, match="no lm-eval task given"):
        find_tasks([], None)


def test_a_malformed_task_yaml_is_reported_as_malformed_not_unknown(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "x", "choices": ["a", "b"], "label": 0}\n')
    write(tmp_path, "task_a", tmp_path / "d.jsonl")
    (tmp_path / "broken.yaml").write_text("task: task_b\ndataset_path: json\ndoc_to_text: [\n")
    with pytest.raises(TransplantError) as info:
        find_tasks(["task_a", "task_b"], tmp_path)
    message = str(info.value)
    assert "task_b" in message and "broken.yaml" in message and "malformed" in message
    assert "line 4, column 1" in message and "unknown" not in message
    # named by its file name, whatever is inside
    (tmp_path / "task_c.yaml").write_text("task: [task_c\n")
    with pytest.raises(TransplantError, match=r"task_c.yaml names it but is malformed \(line 2"):
        find_tasks(["task_c"], tmp_path)
    # a parseable YAML that is not a task config
    (tmp_path / "task_d.yaml").write_text("- task: task_d\n")
    with pytest.raises(TransplantError, match=r"task_d.yaml names it but is malformed \(ValueError: Expected YAML dict"):
        find_tasks(["task_d"], tmp_path)
    assert find_tasks(["task_a"], tmp_path).names == ["task_a"]  # the good task still loads
