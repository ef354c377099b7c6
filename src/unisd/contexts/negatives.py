"""Negative demonstrations for the contrastive term, written by the model itself (spec §2.3).

For each example the model is asked for a plausible but wrong solution: for multiple choice a
confident argument for a given wrong option (wrong letters assigned round-robin, seeded), for
numeric answers a worked solution with a subtle mistake, for code subtly buggy code, for tool
use a wrong tool call. A negative is kept only if it is non-empty, actually wrong and rendered in
the same format as the gold demonstration; anything else is listed in `missing` with a reason,
never dropped silently and never used empty (spec §7.2 item 8).
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from unisd.contexts._cache import content_key, examples_fingerprint, read_json_cache, write_json_cache
from unisd.tasks.base import Example, letters

TASK_KINDS = ("mcqa", "numeric", "code", "tool", "free")
NEGATIVE_PROMPT_VERSION = 1
"""Bump when a prompt or a validation rule changes: it is part of the cache key."""

_BUGS = ("an off-by-one error", "a wrong comparison or arithmetic operator", "a missing edge case",
         "a wrong return value")
_TOOL_MISTAKES = ("call the wrong tool", "pass wrong or missing arguments",
                  "misinterpret what the user asked for")


@dataclass
class NegativeSet:
    """Negative demonstrations by example id.

    Attributes:
        by_id: the usable negatives, rendered like the gold demonstration (put them in the
            teacher template's demonstration slot).
        missing: ids without a usable negative (gold unusable, or every attempt rejected).
        reasons: why, for each id in `missing`.
        answers: the negative's final answer by id (wrong letter, number, code, canonical calls);
            what fills the slot under teacher context "answer".
    """

    by_id: dict[str, str]
    missing: list[str]
    reasons: dict[str, str]
    answers: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the run log, e.g. "negatives: 97/100 usable; 3 missing (2 empty output, ...)"."""
        total = len(self.by_id) + len(self.missing)
        line = f"negatives: {len(self.by_id)}/{total} usable"
        if self.missing:
            counts = Counter(r.split(":")[0] for r in self.reasons.values())
            parts = ", ".join(f"{n} {r}" for r, n in counts.most_common())
            line += f"; {len(self.missing)} missing ({parts})"
        return line


class _Unusable(ValueError):
    """A model output (or a gold answer) that cannot yield a negative; the message is the reason."""


def _replace_span(text: str, m: re.Match, group: int, value: str) -> str:
    return text[:m.start(group)] + value + text[m.end(group):]


def _render_like(positive: str, final_re: re.Pattern, body: str, value: str, fallback: str) -> str:
    """`body` then the positive's final-answer line with its value replaced by `value`, joined
    by the same whitespace as in the positive, so positive and negative share one format."""
    matches = list(final_re.finditer(positive))
    if not matches:
        return fallback
    m = matches[-1]
    before = positive[:m.start()]
    line = _replace_span(positive, m, 1, value)[m.start():].rstrip()
    if not before.strip():
        return line
    sep = before[len(before.rstrip()):] or "\n"
    head = re.match(r"\s*Reasoning:[ \t]*", positive)
    return (head.group(0).lstrip() if head else "") + body + sep + line


# --- multiple choice --------------------------------------------------------------------------

# A line "Answer: X" ("**Answer:** (C)", "Answer: option B." too); group 1 is the letter.
_LETTER_LINE = re.compile(r"(?m)^[^\w\n]*(?i:answer)[^\w\n]*[:：][^\w\n]*?(?:(?i:option)\s+)?"
                          r"\(?([A-Z])\b[^\n]*$")
_REASONING_LABEL = re.compile(r"(?i)^[^\w\n]*reasoning[^\w\n:：]*[:：][*_\s]*")


def _mcqa_prompt(ex: Example, target: str, _: str) -> str:
    return (f"{ex.prompt}\n\n---\nFor a teaching exercise, write a deliberately incorrect answer: argue "
            f"confidently, in 2-3 sentences, that option {target} is correct. Do not mention that the "
            f"argument is wrong. Use exactly this format:\nReasoning: <your argument for option {target}>\n"
            f"Answer: {target}")


def _mcqa_check(ex: Example, out: str) -> tuple[str, str]:
    valid = letters(len(ex.choices))
    matches = list(_LETTER_LINE.finditer(out))
    if not matches:
        raise _Unusable("no answer letter: no 'Answer: <letter>' line")
    m = matches[-1]
    letter = m.group(1)
    if letter not in valid:
        raise _Unusable(f"invalid letter: {letter} is not an option ({valid[0]}-{valid[-1]})")
    if letter == ex.answer:
        raise _Unusable(f"not wrong: argues for the gold answer {ex.answer}")
    body = _REASONING_LABEL.sub("", out[:m.start()].strip()).strip()
    gold_lines = list(_LETTER_LINE.finditer(ex.demonstration))
    gold_body = ex.demonstration[:gold_lines[-1].start()] if gold_lines else ""
    if not body and _REASONING_LABEL.sub("", gold_body.strip()).strip():
        raise _Unusable("no reasoning before the answer line")
    fallback = f"Reasoning: {body}\nAnswer: {letter}"
    return _render_like(ex.demonstration, _LETTER_LINE, body, letter, fallback), letter


# --- numeric ----------------------------------------------------------------------------------

_FINAL_LINE = re.compile(r"(?m)####[ \t]*\$?[ \t]*(-?[\d,]*\.?\d+)[^\n]*$")


def _number(text: str) -> float:
    try:
        return float(text.replace(",", "").replace("$", "").strip().rstrip("."))
    except ValueError:
        raise _Unusable(f"not a number: {text!r}") from None


def _numeric_prompt(ex: Example, _: str, __: str) -> str:
    return (f"Problem:\n{ex.prompt}\n\nCorrect solution:\n{ex.demonstration}\n\n---\n"
            "For a teaching exercise, write a new solution in the same style that looks plausible but "
            "contains one subtle mistake (a wrong operation, a misread quantity or an arithmetic slip), so "
            "that the final answer is wrong. Do not point out the mistake. End with a final line of the form "
            "'#### <number>'.")


def _numeric_check(ex: Example, out: str) -> tuple[str, str]:
    matches = list(_FINAL_LINE.finditer(out))
    if not matches:
        raise _Unusable("no final number: no '#### <number>' line")
    m = matches[-1]
    value = m.group(1).replace(",", "")
    if abs(_number(value) - _number(ex.answer)) <= 1e-4:  # the tolerance tasks score numbers with
        raise _Unusable(f"not wrong: final answer equals the gold answer {ex.answer}")
    body = out[:m.start()].strip()
    if not body:
        raise _Unusable("no worked solution before the '####' line")
    return _render_like(ex.demonstration, _FINAL_LINE, body, value, f"{body}\n#### {value}"), value


# --- code -------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def _code_of(text: str) -> str:
    m = _FENCE.search(text)
    return (m.group(2) if m else text).strip("\n").rstrip()


def _gold_code(ex: Example) -> str:
    return _code_of(ex.demonstration) if ex.demonstration.strip() else ex.answer.strip("\n")


def _code_prompt(ex: Example, _: str, bug: str) -> str:
    return (f"Task:\n{ex.prompt}\n\nCorrect solution:\n```python\n{_gold_code(ex)}\n```\n\n---\n"
            f"For a teaching exercise, rewrite this solution with a subtle bug ({bug}). Keep the same "
            "function names and signatures so that the code still runs but returns wrong results on some "
            "inputs. Do not add comments that point out the bug. Reply with the code only, in one ```python "
            "block.")


def _defined_functions(tree: ast.Module) -> set[str]:
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _code_check(ex: Example, out: str) -> tuple[str, str]:
    code = _code_of(out)
    if not code.strip():
        raise _Unusable("empty output: no code")
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise _Unusable(f"does not parse: {err.msg} (line {err.lineno})") from None
    gold = _gold_code(ex)
    try:
        gold_tree = ast.parse(gold)
        same = ast.dump(tree) == ast.dump(gold_tree)  # ignores formatting and comments
        lacking = sorted(_defined_functions(gold_tree) - _defined_functions(tree))
    except SyntaxError:
        same, lacking = " ".join(code.split()) == " ".join(gold.split()), []
    if same:
        raise _Unusable("not wrong: identical to the gold code (up to formatting and comments)")
    if lacking:
        raise _Unusable(f"wrong signature: does not define {', '.join(lacking)}")
    fenced = ex.demonstration.lstrip().startswith("```")
    return (f"```python\n{code}\n```" if fenced else code), code


# --- tool use (ReAct) -------------------------------------------------------------------------

_REACT_KEY = re.compile(r"^\s*(Thought|Action Input|Action|Observation|Final Answer)\s*:\s*(.*)$")


def _tool_calls(text: str) -> list[tuple[str, str]]:
    """(action, canonical input) pairs from ReAct text; inputs that parse as JSON are re-dumped
    with sorted keys, so formatting differences do not count as a different call."""
    calls: list[list[str]] = []
    field_name = None
    for line in text.splitlines():
        m = _REACT_KEY.match(line)
        if m:
            field_name = m.group(1)
            if field_name == "Action":
                calls.append([m.group(2).strip(), ""])
            elif field_name == "Action Input" and calls:
                calls[-1][1] = m.group(2)
        elif field_name == "Action Input" and calls:
            calls[-1][1] += "\n" + line
    out = []
    for action, raw in calls:
        try:
            arg = json.dumps(json.loads(raw), sort_keys=True)
        except (json.JSONDecodeError, TypeError):
            arg = " ".join(raw.split())
        out.append((action, arg))
    return out


def _tool_prompt(ex: Example, _: str, mistake: str) -> str:
    return (f"{ex.prompt}\n\nCorrect response:\n{ex.demonstration}\n\n---\nFor a teaching exercise, write an "
            f"incorrect response in exactly the same format (Thought / Action / Action Input lines) that "
            f"makes a plausible mistake: {mistake}. Do not write Observation lines and do not point out "
            "the mistake.")


def _tool_check(ex: Example, out: str) -> tuple[str, str]:
    lines = out.strip().splitlines()
    start = next((i for i, ln in enumerate(lines) if _REACT_KEY.match(ln)), None)
    if start is None:
        raise _Unusable("not ReAct: no 'Thought:' or 'Action:' line")
    lines = lines[start:]
    if "Observation:" not in ex.demonstration:  # the model must not invent tool results
        stop = next((i for i, ln in enumerate(lines) if ln.strip().startswith("Observation")), len(lines))
        lines = lines[:stop]
    text = "\n".join(lines).strip()
    calls = _tool_calls(text)
    if not calls:
        raise _Unusable("no tool call: no 'Action:' line")
    gold_calls = _tool_calls(ex.demonstration)
    if calls == gold_calls:
        raise _Unusable("not wrong: same tool calls as the gold response")
    return text, json.dumps(calls)


# --- free text --------------------------------------------------------------------------------

def _free_prompt(ex: Example, _: str, __: str) -> str:
    return (f"{ex.prompt}\n\nCorrect response:\n{ex.demonstration}\n\n---\nFor a teaching exercise, write a "
            "plausible but incorrect response in the same style and format. Do not point out that it is "
            "incorrect.")


def _free_check(ex: Example, out: str) -> tuple[str, str]:
    text = out.strip()
    norm = " ".join(text.split())
    if norm in (" ".join(ex.demonstration.split()), " ".join(ex.answer.split())):
        raise _Unusable("not wrong: identical to the gold demonstration")
    return text, text


# --- driver -----------------------------------------------------------------------------------

_KINDS: dict[str, tuple[Callable[[Example, str, str], str], Callable[[Example, str], tuple[str, str]]]] = {
    "mcqa": (_mcqa_prompt, _mcqa_check),
    "numeric": (_numeric_prompt, _numeric_check),
    "code": (_code_prompt, _code_check),
    "tool": (_tool_prompt, _tool_check),
    "free": (_free_prompt, _free_check),
}


def _gold_problem(ex: Example, kind: str) -> str | None:
    """Why the gold side of `ex` cannot anchor a negative, or None."""
    if kind == "mcqa":
        valid = letters(len(ex.choices))
        if len(valid) < 2 or ex.answer not in valid:
            return f"gold unusable: answer {ex.answer!r} is not one of {len(valid)} options"
    elif kind == "numeric":
        try:
            _number(ex.answer)
        except _Unusable:
            return f"gold unusable: answer {ex.answer!r} is not a number"
    elif kind == "code" and not _gold_code(ex).strip():
        return "gold unusable: no reference code"
    elif kind in ("tool", "free") and not ex.demonstration.strip():
        return "gold unusable: no demonstration"
    return None


def build_negatives(examples: list[Example], *, generate: Callable[[list[str]], list[str]], task_kind: str,
                    seed: int, cache_path: str | os.PathLike | None = None, cache_key_extra: str = "",
                    attempts: int = 2) -> NegativeSet:
    """One negative demonstration per example, written by the model through `generate`.

    Args:
        examples: the training examples (unique ids).
        generate: a batch of user-turn texts -> one output each (the caller applies the chat
            template and samples with `NegativeConfig.temperature` / `max_new_tokens`).
        task_kind: "mcqa", "numeric", "code", "tool" or "free"; picks the prompt and validation.
        seed: seeds the round-robin of wrong letters / bug types.
        cache_path: JSON file; reused when its key matches, rebuilt when unreadable or stale.
        cache_key_extra: identifies the writing model (id, revision, sampling settings).
        attempts: rejected outputs are asked for again, up to this many calls in all.

    Returns:
        A NegativeSet; `missing` + `reasons` list every example without a usable negative.
    """
    if task_kind not in _KINDS:
        raise ValueError(f"negatives: task_kind {task_kind!r}; allowed values: {', '.join(TASK_KINDS)}")
    if len({e.id for e in examples}) != len(examples):
        raise ValueError("negatives: example ids must be unique")
    key = content_key({"builder": "negatives", "version": NEGATIVE_PROMPT_VERSION, "task_kind": task_kind,
                       "seed": seed, "attempts": attempts, "model": cache_key_extra,
                       "examples": examples_fingerprint(examples)})
    cached = read_json_cache(cache_path, key, ("by_id", "missing", "reasons", "answers"))
    if cached is not None and set(cached["by_id"]) | set(cached["missing"]) == {e.id for e in examples}:
        return NegativeSet(cached["by_id"], cached["missing"], cached["reasons"], cached["answers"])

    make_prompt, check = _KINDS[task_kind]
    offset = random.Random(f"{seed}:negatives").randrange(1 << 16)
    prompts: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for i, ex in enumerate(examples):
        problem = _gold_problem(ex, task_kind)
        if problem:
            reasons[ex.id] = problem
            continue
        wrong = [x for x in letters(len(ex.choices)) if x != ex.answer] or [""]
        variants = _TOOL_MISTAKES if task_kind == "tool" else _BUGS
        turn = offset + i  # round-robin over wrong letters / mistake types
        prompts[ex.id] = make_prompt(ex, wrong[turn % len(wrong)], variants[turn % len(variants)])

    by_id: dict[str, str] = {}
    answers: dict[str, str] = {}
    raw: dict[str, str] = {}
    by_key = {e.id: e for e in examples}
    pending = list(prompts)
    for _ in range(max(1, attempts)):
        if not pending:
            break
        outputs = generate([prompts[i] for i in pending])
        if len(outputs) != len(pending):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(pending)} prompts")
        still = []
        for ex_id, out in zip(pending, outputs):
            raw[ex_id] = out or ""
            try:
                if not (out or "").strip():
                    raise _Unusable("empty output")
                by_id[ex_id], answers[ex_id] = check(by_key[ex_id], out)
                reasons.pop(ex_id, None)
            except _Unusable as err:
                reasons[ex_id] = str(err)
                still.append(ex_id)
        pending = still
    missing = [e.id for e in examples if e.id not in by_id]
    result = NegativeSet(by_id, missing, {i: reasons[i] for i in missing}, answers)
    if cache_path is not None:
        write_json_cache(cache_path, key, {"by_id": by_id, "missing": missing, "reasons": result.reasons,
                                           "answers": answers, "raw": raw})
    return result
