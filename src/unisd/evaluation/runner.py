"""Score any model (base or tuned) on a task split: greedy generation, per-item scores, a CI.

The base model and every checkpoint go through this one path, so before/after numbers differ
only in the weights. It renders prompts with the tokenizer's chat template, generates greedily
in batches with a progress bar, scores each completion with the task, and returns per-item rows
plus an aggregate (mean with a 95% bootstrap CI for the headline metric and every detail
metric). It does not train, and it never imports `training`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from unisd.evaluation.stats import mean_ci
from unisd.generation import get_generator
from unisd.generation.base import SamplingParams
from unisd.tasks.base import Example, Task
from unisd.prompting import chat_prompt_ids


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
             description: str = "eval", show_progress: bool = True) -> dict[str, Any]:
    """Greedy-generate and score `examples`; returns {"aggregate": ..., "items": [...]}"""
    device = next(model.parameters()).device
    generator = get_generator(backend, device)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    stops = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    items: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    generated_tokens = 0
    progress, desc, total = _progress(description, len(examples))
    with progress if show_progress else _nullcontext():
        bar = progress.add_task(desc, total=total) if show_progress else None
        for lo in range(0, len(examples), batch_size):
            chunk = list(examples[lo:lo + batch_size])
            prompts = [chat_prompt_ids(tokenizer, ex.prompt, ex.system) for ex in chunk]
            with torch.no_grad():
                outs = generator.generate(model, prompts, params, eos_token_ids=stops, pad_token_id=pad)
            for ex, ids in zip(chunk, outs):
                generated_tokens += len(ids)
                text = tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
                score = task.score(ex, text)
                items.append({"id": ex.id, "correct": score.correct, "extracted": score.extracted,
                              "details": score.details, "completion": text, "answer": ex.answer,
                              "completion_tokens": len(ids), "hit_limit": len(ids) >= max_new_tokens
                              and (not ids or ids[-1] not in stops)})
            if show_progress:
                progress.update(bar, advance=len(chunk))
    if was_training:
        model.train()
    seconds = time.perf_counter() - start
    aggregate: dict[str, Any] = {"task": getattr(task, "name", "?"), "n": len(items),
                                 "accuracy": mean_ci([it["correct"] for it in items])}
    detail_keys = sorted({k for it in items for k in it["details"]})
    for key in detail_keys:
        aggregate[key] = mean_ci([it["details"].get(key, 0.0) for it in items])
    aggregate["mean_completion_tokens"] = (sum(it["completion_tokens"] for it in items) / len(items)) if items else 0.0
    aggregate["hit_limit_rate"] = (sum(it["hit_limit"] for it in items) / len(items)) if items else 0.0
    aggregate["seconds"] = seconds
    aggregate["generated_tokens_per_s"] = generated_tokens / seconds if seconds > 0 else 0.0
    return {"aggregate": aggregate, "items": items}


def save_eval(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def format_accuracy(agg: dict[str, Any], key: str = "accuracy") -> str:
    m = agg[key]
    return f"{100 * m['mean']:.1f}% [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}] (n={m['n']})"


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
