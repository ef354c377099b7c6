"""MBPP (Mostly Basic Python Problems): prompts with the tests shown, reference-code demonstrations,
and pass/fail scoring by running the tests in `unisd.sandbox`.

Splits, fixed by task_id as in the official README and the hub configs, with one rule: training
splits come from the `full` config, the reported test from `sanitized` (the paper's eval set):
  train       full       601-974  (374)     validation  full  511-600  (90)
  test        sanitized   11-510  (257)     test_full   full   11-510  (500)
Train and test share no task_id, and ids ("mbpp/<task_id>") match across configs, so a cache keyed
by id never mixes the two (the reference code's full-vs-sanitized cache mismatch, spec §7.2 item 7).

Reads `<data_dir>/mbpp/mbpp.jsonl` and `<data_dir>/mbpp/sanitized-mbpp.json`, or the hub's
`google-research-datasets/mbpp` without a data_dir. Scoring executes model code only when the task
was built with execute=True (--execute-code); the tests run in a separate sandboxed process, never
with in-process exec (spec §7.2 item 20). Challenge tests are not used.
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any

from unisd.tasks import _datafiles as files
from unisd.tasks._code import extract_code, normalize_code, python_block, score_program
from unisd.tasks.base import DataError, Example, Score

HUB = "google-research-datasets/mbpp"

# split -> (config, lowest task_id, highest task_id, hub split name)
SPLITS: dict[str, tuple[str, int, int, str]] = {
    "train": ("full", 601, 974, "train"),
    "validation": ("full", 511, 600, "validation"),
    "test": ("sanitized", 11, 510, "test"),
    "test_full": ("full", 11, 510, "test"),
}
FILES = {"full": "mbpp.jsonl", "sanitized": "sanitized-mbpp.json"}

INSTRUCTION = ("Write the solution as Python code in a single ```python code block. Use exactly the "
               "function name and signature given above, include any imports the code needs, and do not "
               "repeat the tests.")

_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\(")


def find_signature(code: str, tests: list[str]) -> tuple[str | None, str | None]:
    """(entry point, "name(args)") of the function the first test calls, read from the reference
    code's `def` line. (None, None) when no called name is defined in the code."""
    defs = {m.group(1): m for m in re.finditer(r"^def\s+([A-Za-z_]\w*)\s*\((.*?)\)\s*(?:->[^:]*)?:",
                                                  code, re.M | re.S)}
    for test in tests:  # the first test first
        for name in _CALL.findall(test):
            if name in defs:
                args = " ".join(defs[name].group(2).split())
                return name, f"{name}({args})"
    for test in tests:  # fall back to the first non-builtin name called (e.g. a class)
        for name in _CALL.findall(test):
            if not hasattr(builtins, name) and name != "assert":
                return name, None
    return None, None


def build_prompt(text: str, signature: str | None, tests: list[str], imports: list[str], setup: str) -> str:
    parts = [text.strip()]
    if signature:
        parts.append(f"The required function signature is: {signature}")
    parts.append(INSTRUCTION)
    test_lines = "\n".join([*imports, *tests])
    parts.append(f"Your code should pass these tests:\n{test_lines}")
    if setup:
        parts.append(f"The tests run after this setup code:\n{setup}")
    return "\n\n".join(parts)


def build_program(code: str, meta: dict[str, Any]) -> str:
    """Test imports, then the solution, then the setup code (it uses classes the solution defines,
    e.g. task 367's Node), then the asserts."""
    parts = ["\n".join(meta.get("test_imports", [])), code, meta.get("test_setup_code", ""),
             "\n".join(meta["tests"])]
    return "\n\n".join(p for p in parts if p) + "\n"


class MBPPTask:
    """MBPP: splits "train" / "validation" / "test_full" (config full) and "test" (sanitized).

    Args:
        execute: allow `score` to run model code in the sandbox; without it `score` raises
            ExecutionDisabledError naming --execute-code. Loading never needs it.
        timeout_s: wall-clock limit per program.
    """

    name = "mbpp"
    splits = tuple(SPLITS)

    def __init__(self, execute: bool = False, timeout_s: float = 10.0):
        self.execute = bool(execute)
        self.timeout_s = float(timeout_s)

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        # seed is unused: nothing is shuffled.
        split = files.check_split(self.name, split, self.splits)
        config, lo, hi, hub_split = SPLITS[split]
        rows = self._rows(config, hub_split, data_dir)
        examples = []
        for where, row in rows:
            task_id = files.get_field(row, "task_id", where)
            if not isinstance(task_id, int) or not lo <= task_id <= hi:
                continue
            examples.append(self._example(row, config, where))
        if not examples:
            raise DataError(f"MBPP split {split!r} (config {config}, task_id {lo}-{hi}) is empty")
        examples.sort(key=lambda ex: ex.meta["task_id"])
        return files.take(examples, limit)

    def _rows(self, config: str, hub_split: str, data_dir: str | None) -> list[tuple[str, dict]]:
        if data_dir is None:
            hub = files.load_hub(HUB, config, hub_split, local_hint=f"mbpp/{FILES[config]}")
            return [(f"hub {HUB}/{config} {hub_split} row {i}", row) for i, row in enumerate(hub)]
        path = files.require_file(Path(data_dir) / "mbpp" / FILES[config], f"MBPP {config} file")
        if config == "full":
            return [(f"{path}:{lineno}", row) for lineno, row in files.read_jsonl(path)]
        data = files.read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of problems, got {type(data).__name__}")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]

    def _example(self, row: dict, config: str, where: str) -> Example:
        text = files.get_field(row, "text" if config == "full" else "prompt", where)
        code = normalize_code(str(files.get_field(row, "code", where)))
        tests = [str(t) for t in files.get_field(row, "test_list", where)]
        if not tests:
            raise DataError(f"{where}: empty test_list")
        imports = [str(i) for i in row.get("test_imports") or []]
        setup = normalize_code(str(row.get("test_setup_code") or ""))
        entry_point, signature = find_signature(code, tests)
        task_id = int(row["task_id"])
        meta = {"task_id": task_id, "config": config, "entry_point": entry_point, "signature": signature,
                "tests": tests, "test_imports": imports, "test_setup_code": setup}
        return Example(id=f"mbpp/{task_id}", prompt=build_prompt(str(text), signature, tests, imports, setup),
                       answer=code, demonstration=python_block(code), meta=meta)

    def score(self, example: Example, completion: str) -> Score:
        """Pass/fail of the example's asserts on the extracted code (pass@1 for one greedy sample)."""
        code, fenced = extract_code(completion, example.meta.get("entry_point"))
        return score_program(build_program(code, example.meta), code, fenced, execute=self.execute,
                             task=self.name, timeout_s=self.timeout_s)
