"""Prepare training rows once: tokenized prompts for every view, length checks, and a report.

For each Example this builds the student prompt ids, the primary teacher prompt ids, the K
auxiliary prompt ids and the negative-teacher prompt ids (when those mechanisms are on), and
applies `data.overlong` to prompts over `data.max_prompt_tokens`. Every dropped or truncated
example is counted with its reason; nothing disappears silently. The same filter applies to
every recipe only through the views that recipe uses, and the report says how many were used.

It does not sample or compute losses; `loop.py` does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from unisd.config.schema import RunConfig
from unisd.prompting import chat_prompt_ids, completion_ids
from unisd.tasks.base import DataError, Example

# Negative demonstrations are written differently per kind of answer.
NEGATIVE_KIND = {"arithmetic": "numeric", "gsm8k": "numeric", "cose": "mcqa", "gpqa": "mcqa",
                 "scienceqa": "mcqa", "mbpp": "code", "humaneval": "code", "toolalpaca": "tool"}


@dataclass
class PreparedRow:
    example: Example
    student: list[int]
    teacher: list[int]
    gold: list[int]                       # demonstration + EOS (SFT target, GKD off-policy completion)
    aux: list[list[int]] | None = None
    negative: list[int] | None = None


@dataclass
class DataReport:
    loaded: int = 0
    used: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)
    without_negative: int = 0
    negative_reasons: Counter = field(default_factory=Counter)
    dropped_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"loaded": self.loaded, "used": self.used, "dropped": dict(self.dropped),
                "truncated": dict(self.truncated), "without_negative": self.without_negative,
                "negative_reasons": dict(self.negative_reasons), "dropped_ids_head": self.dropped_ids[:20]}


def teacher_user_text(example: Example, cfg: RunConfig, demonstration: str | None = None) -> str:
    from unisd.contexts import teacher_prompt

    return teacher_prompt(example, cfg.teacher.template, context=cfg.teacher.context, demonstration=demonstration)


def prepare_rows(examples: list[Example], tokenizer, cfg: RunConfig, *, eos_id: int,
                 aux_texts: dict[str, list[str]] | None = None,
                 negative_texts: dict[str, str] | None = None) -> tuple[list[PreparedRow], DataReport]:
    """Tokenize every view of every example and enforce the prompt-length limit."""
    limit = cfg.data.max_prompt_tokens
    policy = cfg.data.overlong
    report = DataReport(loaded=len(examples))
    rows: list[PreparedRow] = []
    for ex in examples:
        if cfg.objective.loss == "nll" and cfg.rollout.source == "gold" and not ex.demonstration:
            raise DataError(f"example {ex.id}: SFT needs a demonstration, and this task row has none")
        views: dict[str, list[int]] = {"student": chat_prompt_ids(tokenizer, ex.prompt, ex.system),
                                       "teacher": chat_prompt_ids(tokenizer, teacher_user_text(ex, cfg), ex.system)}
        aux = None
        if aux_texts is not None:
            aux = [chat_prompt_ids(tokenizer, text, ex.system) for text in aux_texts[ex.id]]
            views.update({f"aux{k}": ids for k, ids in enumerate(aux)})
        negative = None
        if negative_texts is not None:
            if ex.id in negative_texts:
                negative = chat_prompt_ids(tokenizer, teacher_user_text(ex, cfg, negative_texts[ex.id]), ex.system)
                views["negative"] = negative
            else:
                report.without_negative += 1
        over = [name for name, ids in views.items() if len(ids) > limit]
        if over:
            if policy == "error":
                raise DataError(f"example {ex.id}: the {', '.join(over)} prompt is longer than "
                                f"data.max_prompt_tokens={limit} ({max(len(views[n]) for n in over)} tokens); "
                                "raise the limit or set data.overlong to 'drop' or 'truncate'")
            if policy == "drop":
                for name in over:
                    report.dropped[f"{name} prompt over {limit} tokens"] += 1
                report.dropped_ids.append(ex.id)
                continue
            for name in over:  # truncate: keep the end, where the question and the answer header are
                report.truncated[f"{name} prompt over {limit} tokens"] += 1
                views[name] = views[name][-limit:]
            if aux is not None:
                aux = [views[f"aux{k}"] for k in range(len(aux))]
            if negative is not None:
                negative = views["negative"]
        gold = completion_ids(tokenizer, ex.demonstration, eos_id) if ex.demonstration else [eos_id]
        rows.append(PreparedRow(ex, views["student"], views["teacher"], gold, aux, negative))
    report.used = len(rows)
    if not rows:
        raise DataError(f"no training example is left after the prompt-length filter "
                        f"({report.loaded} loaded, reasons: {dict(report.dropped)})")
    return rows, report
