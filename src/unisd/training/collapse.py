"""Collapse watch: warn when on-policy samples shrink, loop or lose their uncertainty.

Self-distillation from a teacher that sees the solution can teach the student to skip its
reasoning: completions get short (TRL's SDFT trainer took Qwen2.5-Coder-0.5B on GSM8K from about
14 to about 5 tokens in two steps), repeat themselves, the student's entropy on its own tokens
falls towards zero, or the samples stop containing an answer the task can read. `CollapseWatch.update(record)` takes a step's metrics record, compares it with
the mean of the first `window` steps that sampled on-policy (`unisd.evaluation.collapse.RULE`, the
rule `unisd report` also applies), and returns the warnings that are new
(each kind is reported once per run; the record gets "collapse/flags" on every flagged step).
It only reads metrics; it never stops a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unisd.evaluation.collapse import KINDS, METRICS, RULE, CollapseRule


@dataclass
class CollapseWatch:
    rule: CollapseRule = RULE
    """Thresholds and window (`unisd.evaluation.collapse`, shared with `unisd report`)."""
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    warned: set[str] = field(default_factory=set)

    def update(self, record: dict) -> list[str]:
        if record.get("rollout/on_policy_rows", 0) <= 0:  # SFT or a gold-only GKD step: nothing sampled
            return []
        for kind, name in METRICS.items():
            if record.get(name) is not None:
                self.history[kind].append(float(record[name]))
        flags = self.flags()
        if flags:
            record["collapse/flags"] = "; ".join(flags)
        new = [f for f in flags if f.split(":")[0] not in self.warned]
        self.warned.update(f.split(":")[0] for f in new)
        return new

    def flags(self) -> list[str]:
        """One message per collapsed kind, once a full window follows the reference window."""
        r, w = self.rule, self.rule.window
        out = []
        for kind, label in (("length", "completion length"), ("entropy", "student entropy"),
                            ("repetition", "repetition"), ("answers", "answer rate")):
            values = self.history[kind]
            if len(values) < 2 * w:
                continue
            ref, now = float(np.mean(values[:w])), float(np.mean(values[-w:]))
            if not r.collapsed(kind, ref, now):
                continue
            if kind == "repetition":
                out.append(f"repetition: {now:.2f} of 4-grams repeated over the last {w} steps "
                           f"(above {r.repetition_max}, up from {ref:.2f})")
            else:
                drop = {"length": r.length_drop, "entropy": r.entropy_drop, "answers": r.answers_drop}[kind]
                out.append(f"{label}: {now:.3g} over the last {w} steps, "
                           f"below {drop:.0%} of the first {w} steps' {ref:.3g}")
        return out
