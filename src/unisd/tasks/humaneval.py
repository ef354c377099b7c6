"""HumanEval (164 problems, split "test" only): an out-of-distribution code eval, scored by running
the published `check(candidate)` tests in `unisd.sandbox`.

Reads `<data_dir>/humaneval/HumanEval.jsonl` (or the published `.jsonl.gz`), or the hub's
`openai/openai_humaneval` without a data_dir. Answers may hold the whole function or only its body:
the program is always the published prompt (its imports and helper functions) followed by the
answer, so a full function simply redefines the prompt's stub. Executes model code only when built
with execute=True (--execute-code). It is not a training set and has no other split.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from unisd.tasks import _datafiles as files
from unisd.tasks._code import defines, extract_code, python_block, score_program
from unisd.tasks.base import DataError, Example, Score

HUB = "openai/openai_humaneval"

INSTRUCTION = ("Complete the following Python function. Answer with the complete function (its signature, "
               "body and any imports it needs) in a single ```python code block.")


def build_program(code: str, meta: dict[str, Any]) -> str:
    """prompt + answer + tests + check(entry_point); a body-only answer is indented under the stub."""
    prompt, entry_point = meta["code_prompt"], meta["entry_point"]
    if defines(code, entry_point):
        solution = prompt.rstrip() + "\n\n\n" + code
    else:
        first = next((line for line in code.split("\n") if line.strip()), "")
        if first and not first[0].isspace():
            code = "\n".join("    " + line if line.strip() else line for line in code.split("\n"))
        solution = prompt + code
    return f"{solution}\n\n{meta['test']}\n\ncheck({entry_point})\n"


class HumanEvalTask:
    """HumanEval, split "test" (164). Ids are the published task_ids ("HumanEval/0").

    Args:
        execute: allow `score` to run model code in the sandbox; without it `score` raises
            ExecutionDisabledError naming --execute-code. Loading never needs it.
        timeout_s: wall-clock limit per program.
    """

    name = "humaneval"
    splits = ("test",)

    def __init__(self, execute: bool = False, timeout_s: float = 10.0):
        self.execute = bool(execute)
        self.timeout_s = float(timeout_s)

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        # seed is unused: nothing is shuffled.
        split = files.check_split(self.name, split, self.splits)
        examples = [self._example(row, where) for where, row in self._rows(data_dir)]
        if not examples:
            raise DataError("HumanEval is empty")
        return files.take(examples, limit)

    def _rows(self, data_dir: str | None) -> list[tuple[str, dict]]:
        if data_dir is None:
            hub = files.load_hub(HUB, None, "test", local_hint="humaneval/HumanEval.jsonl")
            return [(f"hub {HUB} test row {i}", row) for i, row in enumerate(hub)]
        folder = Path(data_dir) / "humaneval"
        plain, packed = folder / "HumanEval.jsonl", folder / "HumanEval.jsonl.gz"
        if plain.is_file():
            return [(f"{plain}:{lineno}", row) for lineno, row in files.read_jsonl(plain)]
        files.require_file(packed, "HumanEval file", f"nor {plain}")
        rows = []
        with gzip.open(packed, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((f"{packed}:{lineno}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{packed}:{lineno}: malformed JSON ({e.msg})") from None
        return rows

    def _example(self, row: dict, where: str) -> Example:
        prompt = str(files.get_field(row, "prompt", where))
        solution = str(files.get_field(row, "canonical_solution", where))
        meta = {"task_id": str(files.get_field(row, "task_id", where)), "code_prompt": prompt,
                "entry_point": str(files.get_field(row, "entry_point", where)),
                "test": str(files.get_field(row, "test", where))}
        full = (prompt + solution).rstrip()
        return Example(id=meta["task_id"], prompt=f"{INSTRUCTION}\n\n{python_block(prompt.rstrip())}",
                       answer=full, demonstration=python_block(full), meta=meta)

    def score(self, example: Example, completion: str) -> Score:
        """Pass/fail of the published check() on the extracted code."""
        code, fenced = extract_code(completion, example.meta["entry_point"])
        return score_program(build_program(code, example.meta), code, fenced, execute=self.execute,
                             task=self.name, timeout_s=self.timeout_s)
