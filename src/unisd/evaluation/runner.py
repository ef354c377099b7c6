"""Score any model (base or tuned) on a task split: greedy generation, per-item scores, a CI.

The base model and every checkpoint go through this one path, so before/after numbers differ
only in the weights. It renders prompts with the tokenizer's chat template, generates greedily
in batches with a progress bar, scores each completion with the task, and returns per-item rows
plus an aggregate (mean with a 95% bootstrap CI for the headline metric and every detail
metric). Multiple choice is also scored by option log-likelihood (`loglik`); on request,
retention against the base model is computed on the same completions (`retention`); resource
use is measured (`resources`). It does not train, and it never imports `training`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from unisd.errors import ResourceError
from unisd.fileio import write_json
from unisd.evaluation.loglik import score_options
from unisd.evaluation.resources import ResourceMeter
from unisd.evaluation.retention import retention_metrics
from unisd.evaluation.stats import mean_ci
from unisd.generation import get_generator
from unisd.generation.base import SamplingParams
from unisd.prompting import chat_prompt_ids, completion_ids
from unisd.tasks.base import Example, Task
from unisd.tasks.mcqa import score_option_logprobs


def eos_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS plus the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return sorted(ids)


def _progress(description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True), description, total


def evaluate(model: torch.nn.Module, tokenizer, task: Task, examples: Sequence[Example], *,
             max_new_tokens: int = 256, batch_size: int = 16, backend: str = "auto",
             description: str = "eval", show_progress: bool = True, cloze: bool | None = None,
             retention: bool = False, base_model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Greedy-generate and score `examples`; returns {"aggregate": ..., "items": [...]}.

    Args:
        model, tokenizer: what is evaluated (a plain model or a peft LoRA model).
        task, examples: the task that scores completions, and the items.
        max_new_tokens, batch_size, backend: generation settings (batch_size also batches the
            cloze and retention forwards).
        cloze: also score multiple choice by option log-likelihood (`loglik`); None (default)
            does it whenever some example has `choices`. Adds details["cloze"] (per-token mean
            normalisation) and details["cloze_sum"] to those items and, to the aggregate, "cloze"
            and "cloze_sum" (means with CIs over those items) and "cloze_norm": "mean_token".
        retention: also compute retention metrics (`retention.retention_metrics`) on the same
            prompts and greedy completions: aggregate["retention"] and item["retention"].
        base_model: the base for retention when `model` is fully fine-tuned. None: a LoRA
            model's adapter-disabled weights, or, for a plain model, the model itself (the base
            model's own row: JSD 0; aggregate["retention"]["base"] says which).

    The aggregate also gets "resources" (`ResourceMeter`: wall and CPU time, generated tokens and
    tokens/s, peak memory, NVML energy or None) for the whole call, generation plus cloze and
    retention, with the seconds of each part. On CUDA the peak-memory counter is reset on entry;
    "process_peak_memory_gb" keeps the maximum with the peak before the call.

    Raises:
        ResourceError: out of GPU memory; the message names eval.batch_size and eval.max_new_tokens.
    """
    device = next(model.parameters()).device
    generator = get_generator(backend, device)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    stops = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    items: list[dict[str, Any]] = []
    prompts_all: list[list[int]] = []
    completions_all: list[list[int]] = []
    was_training = model.training
    model.eval()
    generated_tokens = 0
    meter = ResourceMeter(device)
    progress, desc, total = _progress(description, len(examples))
    try:
        with meter:
            start = time.perf_counter()
            with progress if show_progress else contextlib.nullcontext():
                bar = progress.add_task(desc, total=total) if show_progress else None
                for lo in range(0, len(examples), batch_size):
                    chunk = list(examples[lo:lo + batch_size])
                    prompts = [chat_prompt_ids(tokenizer, ex.prompt, ex.system) for ex in chunk]
                    with torch.no_grad():
                        outs = generator.generate(model, prompts, params, eos_token_ids=stops,
                                                  pad_token_id=pad)
                    for ex, prompt, ids in zip(chunk, prompts, outs):
                        ids = list(ids)
                        generated_tokens += len(ids)
                        prompts_all.append(prompt)
                        completions_all.append(ids)
                        text = tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
                        score = task.score(ex, text)
                        items.append({"id": ex.id, "correct": score.correct, "extracted": score.extracted,
                                      "details": dict(score.details), "completion": text, "answer": ex.answer,
                                      "completion_tokens": len(ids), "hit_limit": len(ids) >= max_new_tokens
                                      and (not ids or ids[-1] not in stops)})
                    if show_progress:
                        progress.update(bar, advance=len(chunk))
            seconds = time.perf_counter() - start
            meter.add_tokens(generated_tokens)
            t0 = time.perf_counter()
            mc = [i for i, ex in enumerate(examples) if ex.choices]
            do_cloze = bool(mc) if cloze is None else (cloze and bool(mc))
            if do_cloze:
                _add_cloze(model, tokenizer, [examples[i] for i in mc], [items[i] for i in mc], batch_size)
            cloze_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ret = None
            if retention:
                gold = [completion_ids(tokenizer, ex.demonstration, stops[0]) if ex.demonstration else []
                        for ex in examples]
                ret = retention_metrics(model, base_model, tokenizer, prompts_all, completions_all, gold,
                                        batch_size=batch_size, max_length=_max_length(model))
                for it, row in zip(items, ret.pop("per_example")):
                    it["retention"] = row
            retention_s = time.perf_counter() - t0
    except torch.OutOfMemoryError as err:
        # batch_size and max_new_tokens are eval.batch_size / eval.max_new_tokens in the run config.
        raise ResourceError(f"out of GPU memory during {description}; lower eval.batch_size (now {batch_size}) "
                            f"or eval.max_new_tokens (now {max_new_tokens})") from err
    finally:
        if was_training:
            model.train()
    aggregate: dict[str, Any] = {"task": getattr(task, "name", "?"), "n": len(items),
                                 "accuracy": mean_ci([it["correct"] for it in items])}
    detail_keys = sorted({k for it in items for k in it["details"]} - set(CLOZE_KEYS))
    for key in detail_keys:
        aggregate[key] = mean_ci([it["details"].get(key, 0.0) for it in items])
    if do_cloze:
        for key in CLOZE_KEYS:  # over the multiple-choice items only
            aggregate[key] = mean_ci([it["details"][key] for it in items if key in it["details"]])
        aggregate["cloze_norm"] = "mean_token"
    n = max(len(items), 1)
    aggregate["mean_completion_tokens"] = sum(it["completion_tokens"] for it in items) / n
    aggregate["hit_limit_rate"] = sum(it["hit_limit"] for it in items) / n
    aggregate["seconds"] = seconds
    aggregate["generated_tokens_per_s"] = generated_tokens / seconds if seconds > 0 else 0.0
    if ret is not None:
        aggregate["retention"] = ret
    aggregate["resources"] = {**meter.as_dict(), "generation_s": seconds, "cloze_s": cloze_s,
                              "retention_s": retention_s}
    return {"aggregate": aggregate, "items": items}


CLOZE_KEYS = ("cloze", "cloze_sum")
"""Item detail keys added by cloze scoring; averaged over multiple-choice items only."""


def _add_cloze(model, tokenizer, examples: Sequence[Example], items: list[dict[str, Any]],
               batch_size: int) -> None:
    """Option log-likelihoods for multiple-choice items: details["cloze"] (argmax of the per-token
    mean log-prob, the headline: it does not favour short options), details["cloze_sum"] (argmax
    of the summed log-prob) and item["cloze"] with the numbers behind them."""
    scores = score_options(model, tokenizer, examples, batch_size=batch_size)
    for ex, it, sums, lens, means in zip(examples, items, scores.sums, scores.lengths,
                                         scores.normalised("mean_token")):
        by_mean = score_option_logprobs(ex, means)
        by_sum = score_option_logprobs(ex, sums)
        it["details"]["cloze"] = by_mean.correct
        it["details"]["cloze_sum"] = by_sum.correct
        it["cloze"] = {"choice": by_mean.extracted, "choice_sum": by_sum.extracted, "logprob_sums": sums,
                       "tokens": lens}


def _max_length(model) -> int | None:
    """The longest sequence the model's positions allow (None when the config does not say)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def save_eval(result: dict[str, Any], path: str | Path) -> None:
    write_json(path, result)


def format_accuracy(agg: dict[str, Any], key: str = "accuracy") -> str:
    m = agg[key]
    return f"{100 * m['mean']:.1f}% [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}] (n={m['n']})"

