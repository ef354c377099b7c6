"""Shared multiple-choice machinery: option shuffling, prompt and demonstration text, scoring.

Options are shuffled per item with a seed derived from (seed, item id), so an item's order is the
same in every run and does not depend on row order or `limit`. Scoring reads a letter (strict and
flexible, see `extract`). For models that answer letters at chance (shared/docs/models.md §5)
it also gives what log-likelihood ("cloze") scoring needs: `cloze_prompt` and
`option_continuations`; the evaluation code runs the model and hands the numbers to
`score_option_logprobs`. Nothing here loads files or touches a model.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from unisd.tasks.base import Example, Score, letters
from unisd.tasks.extract import extract_letter_flexible, extract_letter_strict


def shuffle_options(options: Sequence[str], gold_index: int, *, seed: int, item_id: str
                    ) -> tuple[list[str], int, list[int]]:
    """Options in a per-item random order. Returns (shuffled options, new gold index,
    permutation) where permutation[i] is the original index of displayed option i.

    random.Random seeded with a str is stable across processes (no hash randomisation), unlike
    the spec's Random(seed + row index), which changes when rows are filtered or reordered.
    """
    perm = list(range(len(options)))
    random.Random(f"{seed}:{item_id}").shuffle(perm)
    return [options[i] for i in perm], perm.index(gold_index), perm


def render_prompt(question: str, options: Sequence[str], context: str = "") -> str:
    """The student prompt: the spec's shared MCQA layout (question, optional context, lettered
    options, then the reasoning-then-'Answer: X' instruction, in the same format as
    `render_demonstration` so the teacher's gold text and the student's target agree)."""
    labels = letters(len(options))
    parts = ["Answer the following multiple-choice question.", f"Question: {question.strip()}"]
    if context.strip():
        parts.append(f"Context: {context.strip()}")
    parts.append("\n".join(f"{label}. {text.strip()}" for label, text in zip(labels, options)))
    parts.append(
        "Reason briefly (at most three sentences), then finish with a final line of the form "
        f"'Answer: <letter>', where <letter> is one of {', '.join(labels)}. Use this format:\n"
        "Reasoning: <at most three sentences>\n"
        "Answer: <letter>")
    return "\n\n".join(parts)


def render_demonstration(explanation: str, letter: str) -> str:
    """The gold worked answer: 'Reasoning: <explanation>\\nAnswer: <letter>' ('Answer: <letter>'
    alone when there is no explanation)."""
    explanation = explanation.strip()
    return f"Reasoning: {explanation}\nAnswer: {letter}" if explanation else f"Answer: {letter}"


def build_example(item_id: str, question: str, options: Sequence[str], gold_index: int, *,
                  seed: int, shuffle: bool = True, context: str = "", explanation: str = "",
                  system: str | None = None, meta: dict[str, Any] | None = None) -> Example:
    """One multiple-choice Example: options (shuffled when `shuffle`) in `choices`, the gold letter
    in `answer`, the explanation plus letter in `demonstration`.

    meta gets "question" and "context" (for `cloze_prompt`), "gold_index" (displayed index) and
    "permutation" (displayed -> original index), on top of the task's own `meta`.
    """
    options = [str(o).strip() for o in options]
    if not 0 <= gold_index < len(options):
        raise ValueError(f"item {item_id}: gold index {gold_index} outside {len(options)} options")
    if shuffle:
        options, gold_index, perm = shuffle_options(options, gold_index, seed=seed, item_id=item_id)
    else:
        perm = list(range(len(options)))
    letter = letters(len(options))[gold_index]
    return Example(
        id=item_id,
        prompt=render_prompt(question, options, context),
        answer=letter,
        demonstration=render_demonstration(explanation, letter),
        choices=tuple(options),
        system=system,
        meta={**(meta or {}), "question": question.strip(), "context": context.strip(),
              "gold_index": gold_index, "permutation": perm},
    )


def score_letter(example: Example, completion: str) -> Score:
    """Headline = strict letter match; details = {"strict", "flexible"}; extracted = the strict
    reading (None when the completion has no explicit answer line)."""
    n = len(example.choices)
    strict = extract_letter_strict(completion, n)
    flexible = extract_letter_flexible(completion, n)
    s = float(strict == example.answer)
    return Score(correct=s, extracted=strict,
                 details={"strict": s, "flexible": float(flexible == example.answer)})


# --- log-likelihood (cloze) scoring --------------------------------------------------------------

def cloze_prompt(example: Example) -> str:
    """The context the option continuations are scored after: 'Question: ...\\nAnswer:' (with a
    'Context: ...' line first when the item has one). It shows no options, so option order and
    letters play no part. Use it as raw text (no chat template) or as the user turn; either way
    use the same for every model compared."""
    question = example.meta.get("question")
    if question is None:  # an Example not built here: fall back to its full prompt
        return f"{example.prompt}\nAnswer:"
    context = example.meta.get("context") or ""
    head = f"Context: {context}\n" if context else ""
    return f"{head}Question: {question}\nAnswer:"


def option_continuations(example: Example) -> list[str]:
    """Per displayed option, the text whose log-likelihood is scored after `cloze_prompt`:
    ' ' + option text (the leading space belongs to the continuation, as tokenizers attach it to
    the next word). Order matches `example.choices`, so index i is letter i.

    The evaluation code computes, per option, sum of log p(continuation tokens | cloze prompt),
    normalised by the continuation's token count (or byte length: report which), and passes the
    list to `score_option_logprobs`.
    """
    if not example.choices:
        raise ValueError(f"example {example.id} has no choices; cloze scoring needs multiple choice")
    return [" " + text for text in example.choices]


def score_option_logprobs(example: Example, option_logprobs: Sequence[float]) -> Score:
    """Score from per-option (normalised) log-likelihoods: the argmax option's letter is the
    answer (ties go to the first). details = {"cloze"}."""
    if len(option_logprobs) != len(example.choices):
        raise ValueError(f"example {example.id}: {len(option_logprobs)} log-probs for "
                         f"{len(example.choices)} options")
    best = max(range(len(option_logprobs)), key=lambda i: option_logprobs[i])
    letter = letters(len(example.choices))[best]
    correct = float(letter == example.answer)
    return Score(correct=correct, extracted=letter, details={"cloze": correct})


class MultipleChoiceTask:
    """Shared scoring for letter-answer tasks; subclasses set name/splits and implement `load`."""

    name: str = ""
    splits: tuple[str, ...] = ()

    def score(self, example: Example, completion: str) -> Score:
        return score_letter(example, completion)
