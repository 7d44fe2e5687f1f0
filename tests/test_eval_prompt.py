"""lm-eval's instruct options in `eval` and `sweep`: passed through, applied, recorded, and part of the cache key.

The model's tokenizer has a chat template, as an instruct model's does; the
prompts lm-eval logs show the template and the system instruction applied.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mergekit_transplant.cli import main
from mergekit_transplant.errors import TransplantError
from mergekit_transplant.testing import make_model, write_task

#: a chat template made of words the tests' word-level tokenizer knows, so the model sees real tokens
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] == 'system' and 'the' or 'a' }} : {{ m['content'] }} . "
                 "{% endfor %}{% if add_generation_prompt %}answer : {% endif %}")
ROWS = [{"q": f"one plus {w} equals", "choices": ["red", "green", "blue"], "label": i % 3}
        for i, w in enumerate("two three four five six".split())]


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    model = make_model(root / "model", "llama", seed=0)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    write_task(root / "tasks", "tiny_mc", ROWS,
               body='output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\n'
                    'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    return root, model


def _prompts(results, task="tiny_mc"):
    return [s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple)) else s["arguments"]["gen_args_0"]["arg_0"]
            for s in results["samples"][task]]


@pytest.mark.slow
def test_chat_template_and_system_instruction_reach_the_prompts(instruct):
    from lm_eval.tasks import TaskManager

    from mergekit_transplant.evaluation.runner import PromptOptions, run_lm_eval

    root, model = instruct
    manager = TaskManager(include_path=str(root / "tasks"))
    plain = run_lm_eval("hf", ["tiny_mc"], task_manager=manager, model_args=f"pretrained={model}", limit=2,
                        device="cpu", bootstrap_iters=0)
    chat = run_lm_eval("hf", ["tiny_mc"], task_manager=manager, model_args=f"pretrained={model}", limit=2,
                       device="cpu", bootstrap_iters=0,
                       prompt=PromptOptions(apply_chat_template=True, system_instruction="seven eight"))
    assert not any("seven eight" in p for p in _prompts(plain))
    for prompt in _prompts(chat):  # the template's turns, the system message first, the generation prompt last
        assert prompt.startswith("the : seven eight . a : one plus ") and prompt.endswith("answer : ")


def test_eval_records_the_options_and_keys_the_cache_on_them(instruct, tmp_path):
    root, model = instruct
    common = ["eval", "--target", str(model), "--donor", str(model), "--merged", str(model), "--tasks", "tiny_mc",
              "--include-path", str(root / "tasks"), "--limit", "2", "--bootstrap-iters", "0",
              "--cache-dir", str(tmp_path / "cache")]
    first = CliRunner().invoke(main, common + ["-o", str(tmp_path / "plain.json")])
    assert first.exit_code == 0, first.output
    chat = CliRunner().invoke(main, common + ["--apply-chat-template", "--system-instruction", "seven eight",
                                              "--gen-kwargs", "temperature=0", "-o", str(tmp_path / "chat.json")])
    assert chat.exit_code == 0, chat.output
    assert "scoring tiny_mc with lm-eval" in chat.stderr  # not served from the plain run's cache
    settings = json.loads((tmp_path / "chat.json").read_text())["settings"]
    assert settings["prompt"] == {"apply_chat_template": True, "fewshot_as_multiturn": None,
                                  "system_instruction": "seven eight", "gen_kwargs": "temperature=0"}
    assert json.loads((tmp_path / "plain.json").read_text())["settings"]["prompt"]["apply_chat_template"] is False


@pytest.mark.parametrize("args, message", [
    (["--fewshot-as-multiturn"], "--fewshot-as-multiturn needs --apply-chat-template"),
    (["--gen-kwargs", "temperature"], "--gen-kwargs 'temperature'"),
])
def test_bad_prompt_options_are_one_line_exit_2(instruct, args, message):
    root, model = instruct
    result = CliRunner().invoke(main, ["eval", "--target", str(model), "--donor", str(model), "--merged", str(model),
                                       "--tasks", "tiny_mc", "--include-path", str(root / "tasks"), *args])
    assert result.exit_code == 2 and result.stderr.startswith("error: " + message.split("'")[0])
    assert result.stderr.count("\n") == 1


def test_sweep_model_args_are_hflm_arguments_not_the_model(tmp_path):
    from mergekit_transplant.sweep import SweepSettings

    common = dict(ks=[1], strengths=[1.0], select_tasks=["t"], report_tasks=["t"])
    assert SweepSettings(**common, model_args="max_length=64").hflm_kwargs() == {"max_length": 64}
    with pytest.raises(TransplantError, match="must not set pretrained"):
        SweepSettings(**common, model_args="pretrained=x")
    with pytest.raises(TransplantError, match="needs --apply-chat-template"):
        SweepSettings(**common, prompt={"fewshot_as_multiturn": True})
