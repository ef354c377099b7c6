"""Helpers shared by the code tasks (MBPP, HumanEval): code extraction and sandboxed scoring.

Extraction reads the code out of a model's answer; scoring runs a finished program (solution plus
tests) through `unisd.sandbox` and turns the outcome into a Score. Nothing here runs code in this
process, and nothing runs at all unless the task was built with execute=True.
"""

from __future__ import annotations

import json
import re

from unisd.sandbox import ExecResult, require_execution, run_python
from unisd.tasks.base import Score

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def normalize_code(code: str) -> str:
    """LF line ends, no trailing whitespace on lines, no leading/trailing blank lines (MBPP's
    published code has CRLF line ends and trailing spaces)."""
    lines = [line.rstrip() for line in code.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def python_block(code: str) -> str:
    return f"```python\n{code}\n```"


def defines(code: str, name: str | None) -> bool:
    """Whether `code` defines function `name` at any indentation (a class method counts too)."""
    return bool(name) and re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def extract_code(completion: str, entry_point: str | None = None) -> tuple[str, bool]:
    """(code, came_from_a_fenced_block).

    Order: a JSON object {"code": ...}; a ```python block (the first that defines `entry_point`,
    else the first); any fenced block (same preference); else the raw text. An unclosed final
    fence (a truncated generation) still counts as a block.
    """
    text = completion.replace("\r\n", "\n")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("code"), str):
            return _trim_blank_lines(obj["code"]), False
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for candidates in ([b for tag, b in blocks if tag in _PYTHON_TAGS], [b for _, b in blocks]):
        if candidates:
            chosen = next((b for b in candidates if defines(b, entry_point)), candidates[0])
            return _trim_blank_lines(chosen), True
    return _trim_blank_lines(text), False


def _trim_blank_lines(code: str) -> str:
    # Keep the first line's indentation: a body-only answer must stay indented.
    lines = [line.rstrip() for line in code.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def score_program(program: str, code: str, fenced: bool, *, execute: bool, task: str,
                  timeout_s: float) -> Score:
    """Run `program` in the sandbox; correct = 1.0 when it exits cleanly after all its asserts."""
    require_execution(execute, task)
    result: ExecResult = run_python(program, timeout_s=timeout_s)
    return Score(correct=float(result.passed), extracted=code,
                 details={"timeout": float(result.status == "timeout"), "code_block": float(fenced)})
