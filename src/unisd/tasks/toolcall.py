"""Tool-call parsing, rendering and scoring for ToolAlpaca-style answers (pure functions).

Parses either ReAct text ("Action: <name>" / "Action Input: <JSON>", code fences, single quotes and
trailing prose tolerated) or JSON ({"tool_calls": [...]}, a list, or one object; the input as a JSON
string or an object). Scoring follows the reference metrics (spec §4): action accuracy, argument
accuracy over non-empty gold keys, and full accuracy when both are perfect. It does not call APIs.
Gold placeholders for earlier results ("${id from searchX}") match any non-empty value.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

_LABEL = re.compile(r"^[ \t>*_#-]*(thought|action[ _]input|action|observation|final[ _]answer)"
                    r"[ \t*_]*:[ \t*_]*", re.M | re.I)
_FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*$", re.M)
_PLACEHOLDER = re.compile(r"\$?\{[^{}]*\}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAME_KEYS = ("Action", "action", "name", "tool", "tool_name", "function")
_INPUT_KEYS = ("Action_Input", "Action Input", "action_input", "ActionInput", "arguments", "args",
               "parameters", "input")


@dataclass(frozen=True)
class ToolCall:
    """One call. `arguments` is None when an input was given but could not be parsed."""

    action: str
    arguments: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {"Action": self.action, "Action_Input": self.arguments}


# ----------------------------------------------------------------------------------------- parsing

def _balanced(text: str, start: int) -> str | None:
    """The bracketed span opening at text[start], respecting single and double quoted strings."""
    pairs = {"{": "}", "[": "]"}
    stack, quote, escaped = [], None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if not stack or ch != stack.pop():
                return None
            if not stack:
                return text[start:i + 1]
    return None


def _repair(text: str) -> str:
    """Fix the JSON defects seen in ToolAlpaca's gold and in model output: unquoted placeholders
    (`${id from searchX}`, sometimes unclosed or followed by a stray quote), a key written twice
    (`"symbols": "symbols": [...]`) and trailing commas."""
    text = re.sub(r'(?<!")\$\{([^{}",]*)\}?"?',
                  lambda m: json.dumps("${" + m.group(1).strip() + "}", ensure_ascii=False), text)
    text = re.sub(r'"([^"]+)"\s*:\s*"\1"\s*:', r'"\1":', text)
    return re.sub(r",\s*([}\]])", r"\1", text)


def loads_lenient(text: str, opener: str = "{[") -> Any:
    """The first JSON (or Python-literal) value in `text` that starts with a char in `opener`;
    None when there is none. Trailing text after the value is ignored."""
    text = _FENCE_LINE.sub("", text)
    starts = [i for i in (text.find(ch) for ch in opener) if i >= 0]
    if not starts:
        return None
    candidate = text[min(starts):]
    decoder = json.JSONDecoder()
    for attempt in (candidate, _repair(candidate)):
        try:
            return decoder.raw_decode(attempt)[0]
        except json.JSONDecodeError:
            pass
    block = _balanced(candidate, 0)
    if block is not None:
        pythonic = block
        for json_word, python_word in (("true", "True"), ("false", "False"), ("null", "None")):
            pythonic = re.sub(rf"\b{json_word}\b", python_word, pythonic)
        for attempt in (block, _repair(block), pythonic):
            try:
                return ast.literal_eval(attempt)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                pass
    return None


def parse_arguments(value: Any) -> dict[str, Any] | None:
    """An action input given as an object or as (possibly sloppy) JSON text; {} for empty input."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    if not isinstance(value, str):
        return None
    if not value.strip() or value.strip().lower() in ("none", "null", "{}"):
        return {}
    obj = loads_lenient(value, "{")
    return obj if isinstance(obj, dict) else None


def _clean_name(text: str) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    line = line.strip("`*\"'[] ").rstrip(".,;:")
    if "(" in line:
        line = line.split("(", 1)[0]
    return line.split()[0].strip("`*\"'[]") if line.split() else ""


def parse_react(text: str) -> list[ToolCall]:
    """Calls from ReAct text; stops at "Final Answer". Observation text is ignored."""
    marks = list(_LABEL.finditer(text))
    calls: list[list[Any]] = []  # [name, raw input or None]
    for i, m in enumerate(marks):
        label = m.group(1).lower().replace("_", " ")
        content = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        if label == "final answer":
            break
        if label == "action":
            name = _clean_name(content)
            if name:
                calls.append([name, None])
        elif label == "action input" and calls and calls[-1][1] is None:
            calls[-1][1] = content
    return [ToolCall(name, parse_arguments(raw)) for name, raw in calls]


def _call_from_object(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    name = next((obj[k] for k in _NAME_KEYS if k in obj), None)
    raw_input = next((obj[k] for k in _INPUT_KEYS if k in obj), None)
    if isinstance(name, dict):  # OpenAI style {"function": {"name": ..., "arguments": "..."}}
        raw_input = name.get("arguments", raw_input)
        name = name.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    return ToolCall(_clean_name(name), parse_arguments(raw_input))


def parse_json_calls(text: str) -> list[ToolCall]:
    """Calls from JSON output: {"tool_calls": [...]}, a list of calls, or a single call object."""
    obj = loads_lenient(text)
    if isinstance(obj, dict):
        lists = [obj[k] for k in ("tool_calls", "calls", "actions") if isinstance(obj.get(k), list)]
        items = lists[0] if lists else [obj]
    elif isinstance(obj, list):
        items = obj
    else:
        return []
    calls = [_call_from_object(item) for item in items]
    return [c for c in calls if c is not None]


def parse_tool_calls(text: str) -> list[ToolCall]:
    """ReAct first (any "Action:" line), else JSON."""
    return parse_react(text) or parse_json_calls(text)


# --------------------------------------------------------------------------------------- rendering

def render_react(calls: list[ToolCall], thoughts: list[str]) -> str:
    """The ReAct text for `calls`, one Thought/Action/Action Input block each (no observations)."""
    lines = []
    for call, thought in zip(calls, thoughts):
        args = call.arguments if call.arguments is not None else {}
        lines += [f"Thought: {thought}", f"Action: {call.action}",
                  f"Action Input: {json.dumps(args, ensure_ascii=False)}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- scoring

def is_placeholder(value: Any) -> bool:
    """Whether a gold value stands for an earlier call's result (any part of it a `${...}`)."""
    if isinstance(value, str):
        return _PLACEHOLDER.fullmatch(value.strip()) is not None
    if isinstance(value, list):
        return any(is_placeholder(v) for v in value)
    if isinstance(value, dict):
        return any(is_placeholder(v) for v in value.values())
    return False


def _empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)


def canonical(value: Any) -> Any:
    """A comparable form: numbers and numeric strings alike, booleans as "true"/"false", runs of
    whitespace collapsed, containers compared element by element."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number(float(value))
    if isinstance(value, str):
        text = " ".join(value.split())
        if _NUMBER.fullmatch(text):
            return _number(float(text))
        return text.lower() if text.lower() in ("true", "false") else text
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), canonical(v)) for k, v in value.items()))
    return str(value)


def _number(x: float) -> str:
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return str(int(x)) if x == int(x) else repr(x)


def values_match(gold: Any, pred: Any) -> bool:
    if is_placeholder(gold):
        return not _empty(pred)
    return canonical(gold) == canonical(pred)


def argument_fraction(pred: dict[str, Any] | None, gold: dict[str, Any]) -> float:
    """Share of the gold's non-empty keys whose predicted value matches; 1.0 when the gold has none."""
    keys = [k for k, v in gold.items() if not _empty(v)]
    if not keys:
        return 1.0
    if pred is None:
        return 0.0
    return sum(k in pred and values_match(gold[k], pred[k]) for k in keys) / len(keys)


def score_calls(pred: list[ToolCall], gold: list[ToolCall]) -> dict[str, float]:
    """{"action_accuracy", "argument_accuracy", "full_accuracy"} for one answer, each in [0, 1].

    action: same number of calls and the same action names in order (0 or 1).
    argument: mean over calls of `argument_fraction`; 0 when the call counts differ.
    full: 1 only when both are 1.
    """
    if len(pred) != len(gold):
        action = argument = 0.0
    elif not gold:
        action = argument = 1.0
    else:
        action = float(all(p.action == g.action for p, g in zip(pred, gold)))
        fractions = [argument_fraction(p.arguments, g.arguments or {}) for p, g in zip(pred, gold)]
        argument = sum(fractions) / len(fractions)
    full = float(action == 1.0 and argument == 1.0)
    return {"action_accuracy": action, "argument_accuracy": argument, "full_accuracy": full}
