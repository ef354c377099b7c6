"""GSM8K (grade-school maths): prompts, worked demonstrations and '####' answer scoring.

Reads `<data_dir>/gsm8k/{train,test}.jsonl` (fields `question`, `answer`), or the hub's
`gsm8k`/`main` when no data_dir is given. The published solutions carry calculator annotations
(`<<48/2=24>>`), which are removed from the demonstration; the final line is rewritten as
'#### <canonical number>'. The socratic variant is not supported.
"""

from __future__ import annotations

import re
from pathlib import Path

from unisd.tasks import _datafiles as files
from unisd.tasks.base import DataError, Example, Score
from unisd.tasks.extract import (extract_number_flexible, extract_number_strict, normalize_number,
                                 numbers_equal)

INSTRUCTION = ("Solve the problem step by step. Finish with a final line of the form '#### <number>', "
               "where <number> is the final numeric answer only.")

_CALC_RE = re.compile(r"<<[^>]*>>")


def parse_solution(solution: str, where: str) -> tuple[str, str]:
    """(demonstration, canonical answer) from a published solution 'steps ... #### 1,080'."""
    if "####" not in solution:
        raise DataError(f"{where}: the answer has no '#### <number>' line")
    steps, final = solution.rsplit("####", 1)
    answer = normalize_number(final)
    if answer is None:
        raise DataError(f"{where}: the text after '####' is not a number: {final.strip()!r}")
    steps = _CALC_RE.sub("", steps).rstrip()
    return f"{steps}\n#### {answer}", answer


class GSM8KTask:
    """GSM8K, splits "train" (7,473) and "test" (1,319). Example.answer is the canonical number
    ("1080" for a published "1,080"); ids are "<split>-<row index>"."""

    name = "gsm8k"
    splits = ("train", "test")

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        # seed is unused: GSM8K has no options to shuffle.
        split = files.check_split(self.name, split, self.splits)
        if data_dir is not None:
            path = files.require_file(Path(data_dir) / "gsm8k" / f"{split}.jsonl", "GSM8K file")
            rows = [(f"{path}:{lineno}", row) for lineno, row in files.read_jsonl(path)]
        else:
            hub = files.load_hub("gsm8k", "main", split, local_hint=f"gsm8k/{split}.jsonl")
            rows = [(f"hub gsm8k/main {split} row {i}", row) for i, row in enumerate(hub)]
        examples = []
        for index, (where, row) in enumerate(rows):
            question = str(files.get_field(row, "question", where)).strip()
            demonstration, answer = parse_solution(str(files.get_field(row, "answer", where)), where)
            examples.append(Example(id=f"{split}-{index}", prompt=f"{question}\n\n{INSTRUCTION}",
                                    answer=answer, demonstration=demonstration))
        if not examples:
            raise DataError(f"GSM8K split {split!r} is empty")
        return files.take(examples, limit)

    def score(self, example: Example, completion: str) -> Score:
        """Headline = strict ('####' or 'the answer is N') numeric match within 1e-4."""
        strict = extract_number_strict(completion)
        flexible = extract_number_flexible(completion)
        s = float(numbers_equal(strict, example.answer))
        return Score(correct=s, extracted=strict,
                     details={"strict": s, "flexible": float(numbers_equal(flexible, example.answer))})
