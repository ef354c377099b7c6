"""MBPP and HumanEval: loaders on hand-written fixtures, code extraction goldens, the execution
opt-in, sandboxed scoring, and (when present) the real files under UNISD_DATA_DIR."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from unisd.sandbox import ExecutionDisabledError
from unisd.tasks import get_task
from unisd.tasks._code import extract_code, normalize_code
from unisd.tasks.base import DataError
from unisd.tasks.humaneval import HumanEvalTask
from unisd.tasks.mbpp import MBPPTask, find_signature

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "data"
REAL = Path(os.environ.get("UNISD_DATA_DIR", REPO.parent / "shared" / "data"))
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="sandboxed scoring needs Linux")


# ------------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("completion, expected, fenced", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1", True),
    ("Sure!\n```py\nx = 1\n```\nDone.", "x = 1", True),
    ("```\ny = 2\n```", "y = 2", True),
    ("```python\nprint(f())\n```\n```python\ndef f():\n    return 1\n```", "def f():\n    return 1", True),
    ("```python\ndef f():\n    return 1", "def f():\n    return 1", True),  # truncated generation
    ('{"code": "def f():\\n    return 1"}', "def f():\n    return 1", False),
    ("def f():\n    return 1\n", "def f():\n    return 1", False),
    ("\n    return 1\n", "    return 1", False),  # a bare body keeps its indentation
    ("```text\nnot code\n```\n```python\ndef f():\n    pass\n```", "def f():\n    pass", True),
])
def test_extract_code(completion, expected, fenced):
    assert extract_code(completion, "f") == (expected, fenced)


def test_normalize_code_and_signature():
    assert normalize_code("def f(a,\r\n      b): \r\n\treturn a\r\n\r\n") == "def f(a,\n      b):\n\treturn a"
    code = "import math\ndef helper(x):\n  return x\ndef area(r,\n         pi=3):\n  return helper(r)"
    assert find_signature(code, ["assert math.isclose(area(2), 6)"]) == ("area", "area(r, pi=3)")
    assert find_signature("class Pair: pass", ["assert Pair(1) is not None"]) == ("Pair", None)


# ------------------------------------------------------------------------------------------ MBPP

def test_mbpp_splits_on_fixtures():
    task = MBPPTask()
    ids = {split: [ex.id for ex in task.load(split, data_dir=str(FIX))] for split in task.splits}
    assert ids == {"train": ["mbpp/601", "mbpp/974"], "validation": ["mbpp/511"],
                   "test": ["mbpp/11", "mbpp/12"], "test_full": ["mbpp/11", "mbpp/12"]}
    assert not set(ids["train"]) & set(ids["test"])
    assert [ex.id for ex in task.load("train", data_dir=str(FIX), limit=1)] == ["mbpp/601"]
    with pytest.raises(ValueError, match="valid splits"):
        task.load("dev", data_dir=str(FIX))


def test_mbpp_prompt_and_demonstration():
    task = MBPPTask()
    test_ex = task.load("test", data_dir=str(FIX))[1]  # sanitized row: clarified text, test_imports
    assert test_ex.meta["config"] == "sanitized" and test_ex.meta["entry_point"] == "isqrt_floor"
    assert test_ex.prompt.startswith("Write a python function that returns the floor")
    assert "The required function signature is: isqrt_floor(n)" in test_ex.prompt
    assert "```python" in test_ex.prompt
    assert "import math\nassert math.isclose(isqrt_floor(17), 4)" in test_ex.prompt
    train_ex = task.load("train", data_dir=str(FIX))
    last = train_ex[1]
    assert "max_of_three(a, b, c)" in last.prompt  # a multi-line def collapses to one signature
    assert "\r" not in last.demonstration
    assert last.demonstration == ("```python\ndef max_of_three(a,\n                 b, c):\n"
                                  "  return max(a, b, c)\n```")
    assert "The tests run after this setup code:\nhead = Node(1" in train_ex[0].prompt


def test_mbpp_score_requires_opt_in():
    ex = MBPPTask().load("test", data_dir=str(FIX))[0]
    with pytest.raises(ExecutionDisabledError, match="--execute-code"):
        MBPPTask().score(ex, ex.demonstration)
    assert get_task("mbpp", execute=True).execute


@linux_only
def test_mbpp_scoring_in_the_sandbox():
    task = MBPPTask(execute=True, timeout_s=2.0)
    examples = task.load("train", data_dir=str(FIX)) + task.load("test", data_dir=str(FIX))
    for ex in examples:  # the references pass, including setup code that uses the solution's class
        assert task.score(ex, ex.demonstration).correct == 1.0, ex.id
    ex = examples[-1]
    wrong = task.score(ex, "```python\nimport math\ndef isqrt_floor(n):\n    return n\n```")
    assert wrong.correct == 0.0 and wrong.details == {"timeout": 0.0, "code_block": 1.0}
    hang = MBPPTask(execute=True, timeout_s=1.0).score(
        ex, "```python\ndef isqrt_floor(n):\n    while 1:\n        pass\n```")
    assert hang.correct == 0.0 and hang.details["timeout"] == 1.0
    assert task.score(ex, "import math\ndef isqrt_floor(n):\n    return math.isqrt(n)").correct == 1.0
    assert task.score(ex, "I cannot solve this.").correct == 0.0


def test_mbpp_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "mbpp" / "sanitized-mbpp.json")):
        MBPPTask().load("test", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------- HumanEval

def test_humaneval_loads_fixture():
    examples = HumanEvalTask().load("test", data_dir=str(FIX))
    assert [ex.id for ex in examples] == ["HumanEval/0", "HumanEval/1"]
    ex = examples[0]
    assert ex.meta["entry_point"] == "total_length"
    assert "```python\nfrom typing import List" in ex.prompt
    assert ex.demonstration.startswith("```python\nfrom typing import List")
    assert ex.demonstration.endswith("```")
    with pytest.raises(ValueError):
        HumanEvalTask().load("train", data_dir=str(FIX))
    with pytest.raises(ExecutionDisabledError):
        HumanEvalTask().score(ex, ex.demonstration)


@linux_only
def test_humaneval_full_function_or_body_only():
    task = HumanEvalTask(execute=True, timeout_s=2.0)
    total, count = task.load("test", data_dir=str(FIX))
    for ex in (total, count):
        assert task.score(ex, ex.demonstration).correct == 1.0
    # full function without the prompt's import: the prompt is prepended, so List resolves
    full = "```python\ndef total_length(words: List[str]) -> int:\n    return sum(map(len, words))\n```"
    assert task.score(total, full).correct == 1.0
    # body only, as a completion model would write it, indented or not
    assert task.score(total, "    return sum(len(w) for w in words)\n").correct == 1.0
    assert task.score(total, "```python\nreturn sum(len(w) for w in words)\n```").correct == 1.0
    # the helper defined in the prompt stays available to a full-function answer
    helper = "```python\ndef count_even(numbers):\n    return len([n for n in numbers if is_even(n)])\n```"
    assert task.score(count, helper).correct == 1.0
    assert task.score(count, "```python\ndef count_even(numbers):\n    return 1\n```").correct == 0.0


def test_humaneval_reads_the_gz_file(tmp_path):
    import gzip
    (tmp_path / "humaneval").mkdir()
    data = (FIX / "humaneval" / "HumanEval.jsonl").read_bytes()
    (tmp_path / "humaneval" / "HumanEval.jsonl.gz").write_bytes(gzip.compress(data))
    assert len(HumanEvalTask().load("test", data_dir=str(tmp_path))) == 2
    with pytest.raises(DataError, match="HumanEval.jsonl"):
        HumanEvalTask().load("test", data_dir=str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------ real data

real = pytest.mark.skipif(not (REAL / "mbpp" / "mbpp.jsonl").is_file(), reason=f"no real data at {REAL}")


@real
def test_real_mbpp_split_sizes():
    task = MBPPTask()
    sizes = {split: len(task.load(split, data_dir=str(REAL))) for split in task.splits}
    assert sizes == {"train": 374, "validation": 90, "test": 257, "test_full": 500}
    train_ids = {ex.id for ex in task.load("train", data_dir=str(REAL))}
    assert not train_ids & {ex.id for ex in task.load("test", data_dir=str(REAL))}
    assert all(ex.meta["signature"] for split in task.splits for ex in task.load(split, data_dir=str(REAL)))


@real
@linux_only
def test_real_mbpp_references_pass_their_tests():
    task = MBPPTask(execute=True)
    rng = random.Random(0)
    for split, k in (("train", 5), ("test", 5)):
        examples = task.load(split, data_dir=str(REAL))
        picked = rng.sample(examples, k)
        if split == "train":  # task 927 needs test_setup_code that uses the solution's Node class
            picked.append(next(ex for ex in examples if ex.id == "mbpp/927"))
        for ex in picked:
            assert task.score(ex, ex.demonstration).correct == 1.0, ex.id


@real
@linux_only
def test_real_humaneval_canonical_solutions_pass():
    task = HumanEvalTask(execute=True)
    examples = task.load("test", data_dir=str(REAL))
    assert len(examples) == 164
    for ex in random.Random(0).sample(examples, 10):
        assert task.score(ex, ex.demonstration).correct == 1.0, ex.id
