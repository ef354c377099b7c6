"""The data a task hands to training and evaluation, and the contract every task meets.

A task owns its data and its scoring (as in nanochat): it loads rows from a data directory
(the published file layout) or the hub, turns each into an `Example`, renders the student
prompt as chat messages, extracts an answer from a completion and scores it.

It does not tokenize, apply chat templates or batch: that is `training`/`evaluation`'s job,
so the same Example can be rendered for any tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


class DataError(ValueError):
    """A data file is missing, malformed, or lacks a field. The message says what and where."""


@dataclass(frozen=True)
class Example:
    """One task item, independent of any tokenizer.

    Attributes:
        id: stable identifier, unique within a split (used for caches, per-item results, resume).
        prompt: the user turn the student sees (plain text, no chat template).
        answer: the gold answer in canonical form ("72", "B", the reference code, ...).
        demonstration: the privileged worked solution the teacher sees (gold reasoning + answer);
            also the SFT target. "" when the task has none.
        choices: option texts for multiple choice, in the displayed (shuffled) order; the gold
            letter is `answer`.
        system: optional system message; None keeps the tokenizer's default.
        meta: task-specific extras (tests for code, tool docs, ...). Must be JSON-serialisable.
    """

    id: str
    prompt: str
    answer: str
    demonstration: str = ""
    choices: tuple[str, ...] = ()
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Example":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion.

    `correct` is the headline metric (strict extraction for letter/number tasks, pass for code,
    full match for tool calls). `extracted` is what was read from the completion (None when
    nothing could be), `details` holds the other variants (e.g. {"flexible": 1.0,
    "action": 1.0, "argument": 0.5}), each in [0, 1].
    """

    correct: float
    extracted: str | None = None
    details: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    """What every benchmark provides. Implementations are plain classes listed in `tasks.TASKS`."""

    name: str
    """Registry key, e.g. "gsm8k"."""

    splits: tuple[str, ...]
    """Splits `load` accepts, e.g. ("train", "test")."""

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        """Rows of `split` as Examples. `data_dir` holds the published files; when None the task
        may try the hub. A missing file raises DataError naming the path that was tried; a
        malformed row raises DataError naming file and line. `limit` keeps the first N rows
        (after any deterministic per-item shuffling of options, never of the row order)."""
        ...

    def score(self, example: Example, completion: str) -> Score:
        """Extract the answer from `completion` and score it against `example`."""
        ...


def render_messages(example: Example, user_text: str | None = None) -> list[dict[str, str]]:
    """Chat messages for a prompt: optional system turn, then one user turn."""
    messages: list[dict[str, str]] = []
    if example.system is not None:
        messages.append({"role": "system", "content": example.system})
    messages.append({"role": "user", "content": example.prompt if user_text is None else user_text})
    return messages


def runs_code(task: Task) -> bool:
    """Does `task` score by running the model's code (MBPP, HumanEval)? Such tasks carry the
    sandbox opt-in as their `execute` attribute."""
    return hasattr(task, "execute")


def letters(n: int) -> Sequence[str]:
    """Option labels A, B, C, ... for n options."""
    return [chr(ord("A") + i) for i in range(n)]
