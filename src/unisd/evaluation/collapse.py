"""The collapse rule: when a run's on-policy samples count as collapsing.

One rule for the training loop's live warnings (`unisd.training.collapse.CollapseWatch`) and for
`unisd report`'s collapse table, so the two never disagree. It compares the mean of the first
`window` on-policy steps with the mean of the last `window`; callers choose the windows and the
wording. It only compares numbers: it reads no files and never stops a run.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("length", "repetition", "entropy", "answers")
"""What is watched: mean completion length, share of repeated 4-grams, the student's mean entropy
on the tokens it learns from, and the share of samples with an answer the task can read (not
logged for code tasks): samples can stop answering at unchanged length, entropy and repetition.
It does not see every content failure: the CPU ablation's EMA run (docs/results.md) answered in the
task's format as rarely at its start (~0.2) as at its end (~0.3), and collapsed only in what greedy
decoding said after training."""
METRICS = {"length": "rollout/completion_len", "repetition": "rollout/repetition",
           "entropy": "student/entropy", "answers": "rollout/answered_rate"}
"""The `metrics.jsonl` key each kind is read from."""


@dataclass(frozen=True)
class CollapseRule:
    window: int = 5
    """On-policy steps averaged at the start (the reference) and at the end."""
    length_drop: float = 0.5
    """Length collapses when its end mean falls below this share of the reference."""
    entropy_drop: float = 0.3
    """Entropy collapses when its end mean falls below this share of the reference."""
    repetition_max: float = 0.3
    """Repetition collapses when its end mean exceeds this ..."""
    repetition_rise: float = 0.1
    """... and the reference by at least this much (JSON tool calls start above 0.3 and stay)."""
    answers_drop: float = 0.5
    """The answer rate collapses when its end mean falls below this share of the reference."""

    def collapsed(self, kind: str, first: float | None, last: float | None) -> bool:
        """Does `kind` (one of `KINDS`) count as collapsed, going from mean `first` to mean `last`?"""
        if first is None or last is None:
            return False
        if kind == "length":
            return first > 0 and last < self.length_drop * first
        if kind == "entropy":
            return first > 0 and last < self.entropy_drop * first
        if kind == "answers":
            return first > 0 and last < self.answers_drop * first
        if kind == "repetition":
            return last > self.repetition_max and last - first >= self.repetition_rise
        raise ValueError(f"unknown collapse kind {kind!r}; one of {KINDS}")


RULE = CollapseRule()
