"""Where a step's completions and teacher contexts come from.

`rollout` samples the student's own completions (or takes the gold demonstrations for SFT/GKD,
or a seeded mix of both) for one optimizer batch and returns the token rows every view shares,
with additive counts for the collapse signals logged each step (`rollout_stats`).
`build_contexts` builds the auxiliary teacher contexts and the self-written negatives once,
before training, through `text_generator` (the model writing text on its current weights).

It does not compute losses (`step.py`) or drive the loop (`loop.py`).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch

from unisd.config.schema import RunConfig
from unisd.tasks.base import Example, Score, runs_code
from unisd.training.data import NEGATIVE_KIND, PreparedRow
from unisd.training.step import RolloutRows


def text_generator(model, tokenizer, generator, *, max_new_tokens: int, temperature: float, stops, pad_id):
    """A `list[user_text] -> list[str]` callable on the current weights (negatives, induction)."""
    from unisd.generation.base import SamplingParams
    from unisd.prompting import chat_prompt_ids

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)

    def generate(texts: list[str]) -> list[str]:
        out: list[str] = []
        model.eval()
        for lo in range(0, len(texts), 16):
            prompts = [chat_prompt_ids(tokenizer, t) for t in texts[lo:lo + 16]]
            with torch.no_grad():
                ids = generator.generate(model, prompts, params, eos_token_ids=stops, pad_token_id=pad_id)
            out.extend(tokenizer.decode([t for t in row if t not in stops], skip_special_tokens=True) for row in ids)
        return out

    return generate


def build_contexts(cfg: RunConfig, examples, generate, model_key: str, console) -> tuple[dict | None, dict | None, Any]:
    """Auxiliary contexts and negative demonstrations (None when their mechanisms are off)."""
    from unisd.contexts import build_aux_contexts, build_negatives
    from unisd.models.loading import cache_dir

    aux_texts = negatives = neg_set = None
    cache_dir = cache_dir().parent / "contexts"
    if cfg.teacher.aux.kind != "none":
        console.print(f"building {cfg.teacher.aux.k} {cfg.teacher.aux.kind} auxiliary contexts per example")
        aux_texts = build_aux_contexts(examples, kind=cfg.teacher.aux.kind, k=cfg.teacher.aux.k, seed=cfg.optim.seed,
                                       embedder=cfg.teacher.aux.embedder, cache_dir=cache_dir, generate=generate,
                                       group_size=cfg.teacher.aux.induced_group_size,
                                       count=cfg.teacher.aux.induced_count,
                                       cache_key_extra=f"{model_key}|T={cfg.teacher.negative.temperature}")
    if cfg.teacher.negative.enabled:
        kind = NEGATIVE_KIND.get(cfg.data.task, "mcqa" if examples and examples[0].choices else "free")
        console.print(f"writing negative demonstrations ({kind}) with the model itself")
        neg_cfg = cfg.teacher.negative
        neg_set = build_negatives(examples, generate=generate, task_kind=kind, seed=cfg.optim.seed,
                                  cache_path=cache_dir / f"negatives-{cfg.data.task}.json",
                                  cache_key_extra=f"{model_key}|T={neg_cfg.temperature}|max={neg_cfg.max_new_tokens}")
        console.print(neg_set.summary())
        # Under the "answer" context the slot holds a final answer, so the negative is the wrong answer.
        negatives = neg_set.answers if cfg.teacher.context == "answer" else neg_set.by_id
    return aux_texts, negatives, neg_set


def rollout(model, rows: list[PreparedRow], cfg: RunConfig, generator, *, stops, pad_id, step: int,
            sampling_rng: torch.Generator | None, positions: list[int] | None = None,
            score: Callable[[Example, list[int]], Score] | None = None
            ) -> tuple[RolloutRows, dict[str, float]]:
    """Completions for (this rank's share of) one optimizer batch: student samples, gold, or a
    seeded mix (GKD). `positions` are the rows' places in the global batch (default 0, 1, ...), so
    the GKD coin of a row does not depend on how the batch is split across ranks. `score` (see
    `sample_scorer`) also scores the samples, for the answer rate and sample accuracy. Returns the
    rows and additive counts for `rollout_stats`."""
    from unisd.generation.base import SamplingParams

    src = cfg.rollout.source
    coin = random.Random(f"{cfg.optim.seed}:mix:{step}")
    flips = [coin.random() for _ in range(cfg.optim.batch_size)]
    positions = list(range(len(rows))) if positions is None else positions
    on_policy = [src == "student" or (src == "mixed" and flips[p] < cfg.rollout.on_policy_fraction)
                 for p in positions]
    completions: list[list[int]] = [r.gold for r in rows]
    sample_idx = [i for i, flag in enumerate(on_policy) if flag]
    if sample_idx:
        params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                top_p=cfg.rollout.top_p)
        model.eval()
        with torch.no_grad():
            sampled = generator.generate(model, [rows[i].student for i in sample_idx], params,
                                         eos_token_ids=stops, pad_token_id=pad_id, rng=sampling_rng)
        model.train()
        for i, ids in zip(sample_idx, sampled):
            completions[i] = list(ids) if ids else [stops[0]]
    truncated = [bool(c) and c[-1] not in stops for c in completions]
    keep = [not (t and cfg.rollout.mask_truncated) for t in truncated]
    repeated, grams = _repeated_4grams(completions, sample_idx)
    counts = {"on_policy_rows": float(len(sample_idx)),
              "completion_tokens": float(sum(len(completions[i]) for i in sample_idx)),
              "truncated_rows": float(sum(truncated[i] for i in sample_idx)),
              "repeated_4grams": float(repeated), "4grams": float(grams)}
    if score is not None:
        verdicts = [score(rows[i].example, completions[i]) for i in sample_idx]
        counts.update(scored_rows=float(len(verdicts)),
                      answered_rows=float(sum(v.extracted is not None for v in verdicts)),
                      correct_rows=float(sum(v.correct for v in verdicts)))
    return RolloutRows(ids=[r.example.id for r in rows], student_prompts=[r.student for r in rows],
                       completions=completions, teacher_prompts=[r.teacher for r in rows],
                       aux_prompts=[r.aux for r in rows] if rows and rows[0].aux is not None else None,
                       negative_prompts=[r.negative for r in rows] if cfg.teacher.negative.enabled else None,
                       loss_mask=keep), counts


def rollout_stats(counts: dict[str, float]) -> dict[str, float]:
    """The logged rollout metrics from `rollout`'s counts (summed over ranks first): mean sampled
    length, truncation rate, the share of repeated 4-grams (1.0 = pure loops; a collapse signal),
    and where the samples were scored the share with an answer the task can read and the share
    right (the student's accuracy on its own training samples)."""
    n = counts["on_policy_rows"]
    stats = {"rollout/on_policy_rows": n,
             "rollout/completion_len": counts["completion_tokens"] / n if n else 0.0,
             "rollout/truncated_rate": counts["truncated_rows"] / n if n else 0.0,
             "rollout/repetition": counts["repeated_4grams"] / counts["4grams"] if counts["4grams"] else 0.0}
    if counts.get("scored_rows"):
        stats["rollout/answered_rate"] = counts["answered_rows"] / counts["scored_rows"]
        stats["rollout/sample_accuracy"] = counts["correct_rows"] / counts["scored_rows"]
    return stats


def sample_scorer(task, tokenizer) -> Callable[[Example, list[int]], Score] | None:
    """`task.score` on decoded completion ids, for tasks that score by reading the answer; None for
    code tasks (they score by running the code, which training never does)."""
    if runs_code(task):
        return None

    def score(example: Example, ids: list[int]) -> Score:
        return task.score(example, tokenizer.decode(ids, skip_special_tokens=True))

    return score


def _repeated_4grams(completions, idx) -> tuple[int, int]:
    """(repeated, total) 4-gram counts over the sampled completions."""
    total = repeated = 0
    for i in idx:
        grams = [tuple(completions[i][j:j + 4]) for j in range(max(0, len(completions[i]) - 3))]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated, total
