"""``mergekit-transplant eval``: lm-eval scores of target, donor and merged model.

Also holds the option types ``sweep`` shares (batch size, limit).
"""

from __future__ import annotations

import click

from mergekit_transplant.cli.verbosity import info
from mergekit_transplant.options import options_from, settings_from
from mergekit_transplant.evaluation.compare import EvalSettings


class _BatchSize(click.ParamType):
    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value in ("auto",) or str(value).startswith("auto:"):
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a positive integer or 'auto'", param, ctx)
        if n < 1:
            self.fail(f"{value!r} must be at least 1", param, ctx)
        return n


class _Limit(click.ParamType):
    name = "N"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if x <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return int(x) if x.is_integer() else x


batch_size_type = _BatchSize()
limit_type = _Limit()


def prompt_options(command):
    """lm-eval's instruct-formatting options, with lm-eval's names; the command gets ``prompt`` (a PromptOptions)."""
    import functools

    @click.option("--apply-chat-template", is_flag=False, flag_value="true", default=None, metavar="[TEMPLATE]",
                  help="Format prompts with the tokenizer's chat template (or the named one), as lm-eval's "
                       "--apply_chat_template; for instruct models.")
    @click.option("--fewshot-as-multiturn/--no-fewshot-as-multiturn", default=None,
                  help="Few-shot examples as alternating chat turns (lm-eval's --fewshot_as_multiturn; "
                       "default: on with --apply-chat-template).")
    @click.option("--system-instruction", default=None, metavar="TEXT",
                  help="System message put before every prompt (lm-eval's --system_instruction).")
    @click.option("--gen-kwargs", default=None, metavar="K=V,...",
                  help="Generation arguments for generate_until tasks, e.g. 'temperature=0,max_gen_toks=256' "
                       "(lm-eval's --gen_kwargs).")
    @functools.wraps(command)
    def wrapper(*args, apply_chat_template, fewshot_as_multiturn, system_instruction, gen_kwargs, **kwargs):
        from mergekit_transplant.evaluation.runner import PromptOptions

        template = apply_chat_template if apply_chat_template not in (None, "true") else apply_chat_template == "true"
        prompt = PromptOptions(apply_chat_template=template, fewshot_as_multiturn=fewshot_as_multiturn,
                               system_instruction=system_instruction, gen_kwargs=gen_kwargs)
        return command(*args, prompt=prompt, **kwargs)

    return wrapper


@click.command("eval")
@click.option("--target", required=True, help="The target (base) model: folder or Hub id[@revision].")
@click.option("--donor", required=True, help="The donor model: folder or Hub id[@revision].")
@click.option("--merged", required=True, help="The merged model (mergekit-yaml's output folder).")
@options_from(EvalSettings, exclude=("prompt",), types={
    "batch_size": batch_size_type, "limit": limit_type,
    "include_path": click.Path(file_okay=False), "cache_dir": click.Path(file_okay=False)})
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write results.json here (the command's main artefact).")
@prompt_options
def evaluate(target, donor, merged, output, prompt, **values):
    """Score TARGET, DONOR and MERGED on the same lm-eval tasks with the same settings.

    \b
    Per task: each model's score ± lm-eval's stderr,
      TIR      = S_merged / S_target          (S_target / S_merged for lower-is-better metrics)
      Recovery = (S_merged − S_target) / (S_donor − S_target)
    TIR > 1 and Recovery > 0 mean improvement over the target; a zero
    denominator gives null with a reason. Results are cached per model
    fingerprint and task configuration, so re-running re-scores only models
    that changed. Prints a markdown table; --output writes results.json.
    """
    from mergekit_transplant.evaluation import evaluate_models

    settings = settings_from(EvalSettings, values, prompt=prompt)
    report = evaluate_models(target, donor, merged, settings, progress=info)
    if output:
        report.write(output)
    click.echo(report.markdown(), nl=False)
    if output:
        info(f"wrote {output}")
