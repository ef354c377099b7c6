"""Retention (forgetting): how far the tuned model's outputs drift from the base model.

On the eval set's prompts paired with the tuned model's greedy completions (the generated ids
themselves, EOS included when one was emitted; the reference instead re-tokenizes decoded text,
which can change the ids), spec §5:

- PPL_ret: the base model's perplexity of those completions. `ppl_ret_mean` is the published
  number, the mean over examples of exp(-mean token log p_base); it is dominated by the worst
  examples, so `ppl_ret_corpus` = exp(-sum log p / token count) is reported beside it, with the
  mean, std and quantiles of the per-example mean log-prob.
- JSD: per token, JSD(p_base, p_tuned) = 1/2 KL(p_base || m) + 1/2 KL(p_tuned || m), m the
  average, in float32 and nats (`objectives.token_divergence`, kind="jsd", beta=0.5: the
  generalized JSD is symmetric there); averaged over an example's tokens, then over examples.
- Gold-completion fit: the tuned model's perplexity of the gold demonstrations + EOS (corpus
  and per-example mean). The paper names it but the reference releases no implementation.

The base distribution needs no second copy of a LoRA model: the adapter is switched off
(`model.disable_adapter()`). A fully fine-tuned model needs a separately loaded base. Scoring
the base against itself gives JSD 0 and PPL_ret equal to its own perplexity, by construction.
Empty completions are skipped and counted. Nothing here generates or trains.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

from unisd.evaluation.stats import mean_ci
from unisd.models.lora import is_lora
from unisd.objectives import chunked_token_divergence, sampled_token_logp
from unisd.scoring import build_view, completion_outputs

QUANTILES = (10, 25, 50, 75, 90)


def _base_source(tuned_model: torch.nn.Module, base) -> tuple[str, torch.nn.Module | None,
                                                             Callable[[], ContextManager] | None]:
    """(label, separate base model or None, context under which tuned_model is the base or None)."""
    if base is None or base is tuned_model:
        if is_lora(tuned_model):
            return "adapter_disabled", None, tuned_model.disable_adapter
        return "self", None, None
    if isinstance(base, torch.nn.Module):
        return "separate", base, None
    if callable(base):
        return "context", None, base
    raise TypeError(f"base must be None, a model, or a callable returning a context manager; "
                    f"got {type(base).__name__}")


def _fit(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], max_length: int | None
         ) -> tuple[list[list[int]], list[list[int]], int]:
    """Cut prompts from the front so prompt + completion <= max_length (the completion is kept
    whole, as in the reference, unless it alone is too long: then its tail is cut)."""
    out_p, out_c, cut = [], [], 0
    for p, c in zip(prompts, completions):
        p, c = list(p), list(c)
        if max_length is not None and len(p) + len(c) > max_length:
            cut += 1
            c = c[:max_length - 1]
            p = p[-(max_length - len(c)):]
        out_p.append(p)
        out_c.append(c)
    return out_p, out_c, cut


def _per_example(values: torch.Tensor, owner: torch.Tensor, rows: int) -> list[float]:
    sums = torch.zeros(rows, dtype=torch.float64, device=values.device)
    sums.index_add_(0, owner, values.double())
    return sums.tolist()


def _score(model, prompts, completions, pad_id, batch_size, *, base_model=None, base_ctx=None,
           with_jsd: bool) -> tuple[list[float], list[float], list[float]]:
    """Per row: sum log p_base(completion), sum log p_model(completion) and sum of token JSD.
    When neither a base model nor a base context is given, the model is its own base."""
    device = next(model.parameters()).device
    sum_base, sum_model, sum_jsd = [], [], []
    with torch.no_grad():
        for lo in range(0, len(prompts), batch_size):
            view = build_view(prompts[lo:lo + batch_size], completions[lo:lo + batch_size], pad_id)
            rows = view.input_ids.shape[0]
            logits = completion_outputs(model, view.to(device))[0]
            if base_model is not None:
                base_device = next(base_model.parameters()).device
                base_logits = completion_outputs(base_model, view.to(base_device))[0].to(device)
            elif base_ctx is not None:
                with base_ctx():
                    base_logits = completion_outputs(model, view.to(device))[0]
            else:
                base_logits = logits
            targets, owner = view.targets.to(device), view.example_of_token.to(device)
            lp_model = sampled_token_logp(logits, targets)
            lp_base = lp_model if base_logits is logits else sampled_token_logp(base_logits, targets)
            sum_model.extend(_per_example(lp_model, owner, rows))
            sum_base.extend(_per_example(lp_base, owner, rows))
            if with_jsd:
                if base_logits is logits:  # the model against itself: 0 by construction
                    sum_jsd.extend([0.0] * rows)
                else:
                    jsd = chunked_token_divergence(logits, base_logits, kind="jsd", beta=0.5)
                    sum_jsd.extend(_per_example(jsd, owner, rows))
    return sum_base, sum_model, sum_jsd


def _ppl_summary(sums: Sequence[float], counts: Sequence[int], prefix: str) -> dict[str, Any]:
    """Per-example mean and corpus perplexity from per-example log-prob sums and token counts."""
    if not counts:
        return {f"{prefix}_mean": None, f"{prefix}_corpus": None}
    per_example = [math.exp(-s / n) for s, n in zip(sums, counts)]
    return {f"{prefix}_mean": float(np.mean(per_example)),
            f"{prefix}_corpus": math.exp(-sum(sums) / sum(counts)),
            f"{prefix}_mean_ci": mean_ci(per_example)}


def retention_metrics(tuned_model: torch.nn.Module, base, tokenizer, prompts_ids: Sequence[Sequence[int]],
                      completions_ids: Sequence[Sequence[int]],
                      gold_ids: Sequence[Sequence[int]] | None = None, *, batch_size: int = 8,
                      max_length: int | None = None) -> dict[str, Any]:
    """Retention of `tuned_model` relative to its base, on its own greedy completions.

    Args:
        tuned_model: the model whose completions these are (plain or peft LoRA).
        base: where the base distribution comes from.
            None (or `tuned_model` itself): a LoRA model's adapter-disabled weights
            (`disable_adapter()`); for a plain model, the model itself (the base model's own
            row: JSD 0, PPL_ret = its own perplexity; reported as base "self").
            A model: a separately loaded base (full fine-tuning), same tokenizer.
            A zero-argument callable returning a context manager: inside it `tuned_model`
            computes the base distribution (e.g. `model.disable_adapter`).
        tokenizer: shared tokenizer (for the pad id).
        prompts_ids: per example, the prompt ids the completion was generated from.
        completions_ids: per example, the generated ids (EOS included when emitted). Empty
            completions are skipped and counted in "skipped_empty".
        gold_ids: per example, gold demonstration + EOS ids for the gold fit ([] or None skips
            that example; None for all skips the metric).
        batch_size: rows per forward.
        max_length: longest prompt + completion; longer rows lose prompt tokens from the front.

    Returns:
        A dict of floats (None where nothing was scored): "base", "n", "skipped_empty",
        "tokens", "ppl_ret_mean", "ppl_ret_corpus", "ppl_ret_mean_ci", "lp_mean", "lp_std",
        "lp_p10".."lp_p90", "jsd_mean", "jsd_mean_ci", "ppl_tuned_corpus", "gold_n",
        "gold_tokens", "gold_fit_ppl_mean", "gold_fit_ppl_corpus", "truncated", and
        "per_example": per input row a dict {"tokens", "lp", "ppl_ret", "jsd"} or None (skipped).
    """
    if len(prompts_ids) != len(completions_ids):
        raise ValueError(f"{len(prompts_ids)} prompts but {len(completions_ids)} completions")
    label, base_model, base_ctx = _base_source(tuned_model, base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = [i for i, c in enumerate(completions_ids) if len(c) > 0]
    prompts, completions, truncated = _fit([prompts_ids[i] for i in keep], [completions_ids[i] for i in keep],
                                           max_length)
    models = [m for m in (tuned_model, base_model) if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        s_base, s_tuned, s_jsd = _score(tuned_model, prompts, completions, pad, batch_size,
                                        base_model=base_model, base_ctx=base_ctx,
                                        with_jsd=True) if keep else ([], [], [])
        gold_rows = [i for i, g in enumerate(gold_ids or []) if g]
        g_prompts, g_completions, g_cut = _fit([prompts_ids[i] for i in gold_rows],
                                               [gold_ids[i] for i in gold_rows], max_length)
        # The gold fit is under the tuned model only: no base, so no second forward.
        s_gold = _score(tuned_model, g_prompts, g_completions, pad, batch_size, with_jsd=False)[1] \
            if gold_rows else []
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)

    counts = [len(c) for c in completions]
    lp = [s / n for s, n in zip(s_base, counts)]
    jsd = [s / n for s, n in zip(s_jsd, counts)]
    out: dict[str, Any] = {"base": label, "n": len(keep), "skipped_empty": len(completions_ids) - len(keep),
                           "tokens": sum(counts), "truncated": truncated + g_cut}
    ppl = _ppl_summary(s_base, counts, "ppl_ret")
    out.update(ppl)
    out["lp_mean"] = float(np.mean(lp)) if lp else None
    out["lp_std"] = float(np.std(lp)) if lp else None
    for q in QUANTILES:
        out[f"lp_p{q}"] = float(np.percentile(lp, q)) if lp else None
    out["jsd_mean"] = float(np.mean(jsd)) if jsd else None
    out["jsd_mean_ci"] = mean_ci(jsd)
    out["ppl_tuned_corpus"] = math.exp(-sum(s_tuned) / sum(counts)) if counts else None
    gold_counts = [len(c) for c in g_completions]
    gold = _ppl_summary(s_gold, gold_counts, "gold_fit_ppl")
    out.update({"gold_n": len(gold_rows), "gold_tokens": sum(gold_counts), **gold})
    per_example: list[dict[str, float] | None] = [None] * len(completions_ids)
    for j, i in enumerate(keep):
        per_example[i] = {"tokens": counts[j], "lp": lp[j], "ppl_ret": math.exp(-lp[j]), "jsd": jsd[j]}
    for j, i in enumerate(gold_rows):
        row = per_example[i] if per_example[i] is not None else {}
        row["gold_fit_ppl"] = math.exp(-s_gold[j] / gold_counts[j])
        per_example[i] = row
    out["per_example"] = per_example
    return out
