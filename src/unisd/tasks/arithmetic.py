"""A small arithmetic task generated in code, so the quickstart needs no data files.

Each item asks for the sum (or difference) of two-digit numbers and requires the result on a
final line "#### <number>", the same strict format as GSM8K. The demonstration is the worked
line plus that final line. Items are a pure function of (split, index, seed): the train and test
splits draw from disjoint seeds, so no test item is ever trained on.

Why this task: SmolLM2-135M-Instruct gets about half of these sums right when any number counts
(flexible extraction) but almost never writes the required "####" line (strict extraction about
0%), so a teacher that sees a worked example has something real to teach the student in a few
CPU minutes. It does not measure reasoning beyond two-digit arithmetic.
"""

from __future__ import annotations

import random

from unisd.tasks.base import DataError, Example, Score
from unisd.tasks.extract import numbers_equal, extract_number_flexible, extract_number_strict

_SIZES = {"train": 2000, "test": 500}
_SPLIT_SEED = {"train": 1, "test": 2}


class ArithmeticTask:
    name = "arithmetic"
    splits = ("train", "test")

    def __init__(self, low: int = 10, high: int = 99, ops: str = "+-"):
        if not (0 <= low < high):
            raise ValueError(f"arithmetic: need 0 <= low < high, got low={low}, high={high}")
        if not ops or set(ops) - set("+-"):
            raise ValueError(f"arithmetic: ops must be a non-empty subset of '+-', got {ops!r}")
        self.low, self.high, self.ops = low, high, ops

    def _item(self, split: str, index: int, seed: int) -> Example:
        rng = random.Random(f"arithmetic:{split}:{seed}:{index}:{_SPLIT_SEED[split]}")
        a, b = rng.randint(self.low, self.high), rng.randint(self.low, self.high)
        op = rng.choice(self.ops)
        if op == "-" and b > a:
            a, b = b, a
        result = a + b if op == "+" else a - b
        prompt = (f"What is {a} {op} {b}? Write the calculation on one line, then finish with a final line "
                  f"of the form '#### <number>'.")
        demonstration = f"{a} {op} {b} = {result}\n#### {result}"
        return Example(id=f"{split}-{index}", prompt=prompt, answer=str(result), demonstration=demonstration)

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        if split not in _SIZES:
            raise DataError(f"arithmetic: unknown split {split!r}; valid splits: {', '.join(_SIZES)}")
        n = _SIZES[split] if limit is None else min(limit, _SIZES[split])
        return [self._item(split, i, seed) for i in range(n)]

    def score(self, example: Example, completion: str) -> Score:
        strict = extract_number_strict(completion)
        flexible = extract_number_flexible(completion)
        s = float(strict is not None and numbers_equal(strict, example.answer))
        f = float(flexible is not None and numbers_equal(flexible, example.answer))
        return Score(correct=s, extracted=strict, details={"strict": s, "flexible": f})
