"""Collapse watch: warn when on-policy samples shrink, loop or lose their uncertainty.

Self-distillation from a teacher that sees the solution can teach the student to skip its
reasoning: completions get short (TRL's SDFT trainer took Qwen2.5-Coder-0.5B on GSM8K from about
14 to about 5 tokens in two steps), repeat themselves, or the student's entropy on its own tokens
falls towards zero. `CollapseWatch.update(record)` takes a step's metrics record, compares it with
the mean of the first `window` steps that sampled on-policy, and returns the warnings that are new
(each kind is reported once per run; the record gets "collapse/flags" on every flagged step).
It only reads metrics; it never stops a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CollapseWatch:
    window: int = 5
    """On-policy steps that form the reference (and the recent average compared with it)."""
    length_drop: float = 0.5
    """Flag when the recent mean completion length falls below this share of the reference."""
    entropy_drop: float = 0.3
    """Flag when the recent mean student entropy falls below this share of the reference."""
    repetition_max: float = 0.3
    """Flag when the recent mean share of repeated 4-grams exceeds this ...
    (structured outputs such as ToolAlpaca's JSON calls start above 0.3 and stay there)"""
    repetition_rise: float = 0.1
    """... and exceeds the reference mean by at least this much."""
    history: dict[str, list[float]] = field(default_factory=lambda: {"len": [], "ent": [], "rep": []})
    warned: set[str] = field(default_factory=set)

    def update(self, record: dict) -> list[str]:
        if record.get("rollout/on_policy_rows", 0) <= 0:  # SFT or a gold-only GKD step: nothing sampled
            return []
        for key, name in (("len", "rollout/completion_len"), ("ent", "student/entropy"),
                          ("rep", "rollout/repetition")):
            if record.get(name) is not None:
                self.history[key].append(float(record[name]))
        flags = self.flags()
        if flags:
            record["collapse/flags"] = "; ".join(flags)
        new = [f for f in flags if f.split(":")[0] not in self.warned]
        self.warned.update(f.split(":")[0] for f in new)
        return new

    def flags(self) -> list[str]:
        out = []
        for key, label, drop in (("len", "completion length", self.length_drop),
                                 ("ent", "student entropy", self.entropy_drop)):
            values = self.history[key]
            if len(values) >= 2 * self.window:
                ref, now = np.mean(values[:self.window]), np.mean(values[-self.window:])
                if ref > 0 and now < drop * ref:
                    out.append(f"{label}: {now:.3g} over the last {self.window} steps, "
                               f"below {drop:.0%} of the first {self.window} steps' {ref:.3g}")
        rep = self.history["rep"]
        if len(rep) >= 2 * self.window:
            ref, now = np.mean(rep[:self.window]), np.mean(rep[-self.window:])
            if now > self.repetition_max and now - ref >= self.repetition_rise:
                out.append(f"repetition: {now:.2f} of 4-grams repeated over the last {self.window} steps "
                           f"(above {self.repetition_max}, up from {ref:.2f})")
        return out
