"""``mergekit-transplant eval``: lm-eval scores of target, donor and merged model.

Also holds the option types ``sweep`` shares (batch size, limit).
"""

from __future__ import annotations

import click


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
@click.option("--tasks", required=True, help="Comma-separated lm-eval task names (tags expand to their tasks).")
@click.option("--retain-tasks", default=None, help="Comma-separated tasks the target should not get worse at; "
              "scored on target and merged model only, reported as merged − target.")
@click.option("--include-path", type=click.Path(file_okay=False), default=None,
              help="Folder of local lm-eval task YAMLs.")
@click.option("--metric", default=None, help="Headline metric (e.g. acc_norm); default: each task's first metric.")
@click.option("--limit", type=limit_type, default=None, help="Documents per task (below 1: a fraction). For quick checks only.")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples (default: each task's own setting).")
@click.option("--batch-size", type=batch_size_type, default="8", show_default=True, help="lm-eval batch size, or 'auto'.")
@click.option("--device", default=None, help="Device for the hf backend (default: cuda if available, else cpu).")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True, help="lm-eval model backend.")
@click.option("--model-args", default=None,
              help="Extra lm-eval model_args for every model, e.g. 'dtype=bfloat16,parallelize=True' "
              "or 'tensor_parallel_size=4' (vllm).")
@click.option("--bootstrap-iters", type=int, default=100000, show_default=True,
              help="lm-eval bootstrap iterations for stderrs of non-mean metrics (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="lm-eval's random seeds (few-shot sampling).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Result cache folder (default ~/.cache/mergekit-transplant/eval, or $MERGEKIT_TRANSPLANT_EVAL_CACHE).")
@click.option("--no-cache", is_flag=True, help="Score every model again and do not store results.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the Hub.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept models whose only weights are pickle files (pytorch_model.bin); transformers loads "
              "them with torch's weights-only unpickler. Only for sources you trust.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write results.json here.")
@prompt_options
def evaluate(target, donor, merged, tasks, retain_tasks, include_path, metric, limit, num_fewshot, batch_size,
             device, backend, model_args, bootstrap_iters, seed, cache_dir, no_cache, trust_remote_code, allow_pickle,
             output, prompt):
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
    from mergekit_transplant.evaluation import EvalSettings, evaluate_models

    settings = EvalSettings(
        tasks=tasks, retain_tasks=retain_tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
        batch_size=batch_size, device=device, backend=backend, model_args=model_args, metric=metric,
        cache_dir=cache_dir, use_cache=not no_cache, bootstrap_iters=bootstrap_iters, seed=seed,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, prompt=prompt,
    )
    from mergekit_transplant.cli.verbosity import info

    report = evaluate_models(target, donor, merged, settings, progress=info)
    if output:
        report.write(output)
    click.echo(report.markdown(), nl=False)
    if output:
        info(f"wrote {output}")
