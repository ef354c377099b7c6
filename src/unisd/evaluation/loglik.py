"""Multiple choice by log-likelihood ("cloze"): score each option's text, generate nothing.

Small models often know the content of an answer but not the 'Answer: X' letter format, so the
generative accuracy understates them. Here each option continuation (' ' + option text, from
`tasks.mcqa.option_continuations`) is scored after the cloze prompt ('Question: ...\\nAnswer:',
`tasks.mcqa.cloze_prompt`), and the most likely option is the model's answer.

The prompt is raw text, deliberately without the chat template: cloze scoring asks how likely
the option text is as the *continuation* of the question, so the option must follow 'Answer:'
directly. A chat template would put the option after an assistant header, where a short noun
phrase is an unlikely reply whatever its content, and would make the number depend on each
model's template. The tokenizer's own special tokens (BOS) are kept, as the model was trained
with them. Every model compared is scored the same way (lm-evaluation-harness does the same).

Rows (one per option) are batched through `unisd.scoring.build_view` and `completion_outputs`,
so the vocabulary projection runs only at continuation positions. This module does not pick the
answer: `tasks.mcqa.score_option_logprobs` does, from the numbers returned here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from unisd.objectives import sampled_token_logp
from unisd.scoring import build_view, completion_outputs
from unisd.tasks.base import Example
from unisd.tasks.mcqa import cloze_prompt, option_continuations

NORMALISATIONS = ("sum", "mean_token")


@dataclass
class OptionLogprobs:
    """Per example, per displayed option: summed log-probability and continuation length."""

    sums: list[list[float]]
    """sum_t log p(continuation token t | cloze prompt, earlier tokens), float32 math, in nats."""
    lengths: list[list[int]]
    """Continuation token counts (>= 1)."""

    def normalised(self, normalise: str) -> list[list[float]]:
        """"sum": the raw sums; "mean_token": each sum divided by its token count."""
        if normalise == "sum":
            return [list(row) for row in self.sums]
        if normalise == "mean_token":
            return [[s / n for s, n in zip(row, lens)] for row, lens in zip(self.sums, self.lengths)]
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")


def cloze_rows(tokenizer, example: Example) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per option of `example`.

    The continuation ids are the tail of tokenize(context + continuation) after tokenize(context),
    as in lm-evaluation-harness, so a tokenizer that would merge across the boundary still gives
    the ids the model actually sees for the whole string. When the context's ids are not a prefix
    of the whole string's (a merge across the boundary), the continuation is tokenized on its own.
    """
    context = cloze_prompt(example)
    context_ids = list(tokenizer(context, add_special_tokens=True)["input_ids"])
    rows = []
    for continuation in option_continuations(example):
        whole = list(tokenizer(context + continuation, add_special_tokens=True)["input_ids"])
        if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
            rows.append((context_ids, whole[len(context_ids):]))
        else:
            rows.append((context_ids, list(tokenizer(continuation, add_special_tokens=False)["input_ids"])))
        if not rows[-1][1]:
            raise ValueError(f"example {example.id}: an option tokenizes to no tokens")
    return rows


def score_options(model: torch.nn.Module, tokenizer, examples: Sequence[Example], *,
                  batch_size: int = 16) -> OptionLogprobs:
    """Summed log-probabilities and token counts of every option of every example.

    Args:
        model: a causal LM (plain or peft); run in no-grad mode, its train/eval state untouched.
        tokenizer: the model's tokenizer.
        examples: multiple-choice Examples (non-empty `choices`).
        batch_size: option rows per forward pass.

    Returns:
        OptionLogprobs with one list per example, in `example.choices` order.
    """
    rows, owner = [], []
    for i, ex in enumerate(examples):
        for context, continuation in cloze_rows(tokenizer, ex):
            rows.append((context, continuation))
            owner.append(i)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    row_sums: list[float] = []
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            view = build_view([c for c, _ in chunk], [t for _, t in chunk], pad).to(device)
            logits, _ = completion_outputs(model, view)
            token_logp = sampled_token_logp(logits, view.targets)  # [N] float32
            sums = torch.zeros(len(chunk), dtype=torch.float64, device=device)
            sums.index_add_(0, view.example_of_token, token_logp.double())
            row_sums.extend(sums.tolist())
    out_sums: list[list[float]] = [[] for _ in examples]
    out_lens: list[list[int]] = [[] for _ in examples]
    for (_, continuation), i, s in zip(rows, owner, row_sums):
        out_sums[i].append(float(s))
        out_lens[i].append(len(continuation))
    return OptionLogprobs(out_sums, out_lens)


def option_logprobs(model: torch.nn.Module, tokenizer, examples: Sequence[Example], *,
                    batch_size: int = 16, normalise: str = "sum") -> list[list[float]]:
    """Per example, per option: the log-likelihood of the option after the cloze prompt.

    normalise="sum" gives sum_t log p (nats); "mean_token" divides by the option's token count
    (the per-token mean, which does not favour short options as the sum does).
    """
    return score_options(model, tokenizer, examples, batch_size=batch_size).normalised(normalise)
