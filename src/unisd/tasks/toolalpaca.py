"""ToolAlpaca: plan the API calls for a request, in one ReAct format for training and evaluation.

Only the two published eval files exist locally (`<data_dir>/toolalpaca/eval_real.json`, 11 APIs /
114 instructions, and `eval_simulated.json`, 10 APIs / 100), so "train" and "test" are built from
them, disjoint by API: the 21 API names are sorted, shuffled with Random(seed), and the first
round(test_fraction * 21) go to test. With the defaults (seed=0, test_fraction=0.3):
  test  (6 APIs, 58 instructions; 43 real, 15 simulated): 1Forge, Cataas, Lob.com, WolframAlpha,
        airportsapi, apilayer weatherstack
  train (15 APIs, 156 instructions): the other 15.
The prompt is the API's NLDocumentation, the ReAct format ("Thought/Action/Action Input" per call,
optional "Final Answer") and the request; the demonstration is the gold calls in exactly that
format, so training and evaluation agree (unlike the reference code, spec §7.2 item 11). Scoring
(`toolcall.score_calls`) accepts ReAct or JSON answers. Published gold defects are kept, except
that unquoted `${...}` placeholders and a doubled key are repaired and "[Optional]" is dropped from
an action name; 14 gold calls name actions the docs do not list (6 of AviationAPI's, and a
pseudo-action "getDetails" in AbuseIPDB, Améthyste and Apache Superset), all in train by default.
There is no hub fallback: the hub's Ahren09/ToolAlpaca has other splits.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path
from typing import Any

from unisd.tasks import _datafiles as files
from unisd.tasks.base import DataError, Example, Score
from unisd.tasks.toolcall import ToolCall, parse_arguments, parse_tool_calls, render_react, score_calls

SOURCES = {"real": "eval_real.json", "simulated": "eval_simulated.json"}

FORMAT = """Answer in this format, one block per tool call, in the order the calls should be made:
Thought: <brief reasoning for the call>
Action: <the tool name, one of: {tools}>
Action Input: <the arguments as a JSON object>

Repeat Thought/Action/Action Input for every further call. You will not see the results of the \
calls, so when an argument depends on an earlier result, write a placeholder such as \
"${{userId from searchUsers}}". You may end with a line "Final Answer: <short summary>"."""


def slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")


def tool_names(api: dict[str, Any]) -> list[str]:
    # "components" is the OpenAPI schema section, not a function.
    return [name for name in api.get("Function_Description", {}) if name != "components"]


def split_apis(names: list[str], seed: int, test_fraction: float) -> tuple[list[str], list[str]]:
    """(train APIs, test APIs): sorted names, shuffled with Random(seed), first share to test."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_test = min(len(order) - 1, max(1, round(test_fraction * len(order))))
    return sorted(order[n_test:]), sorted(order[:n_test])


def build_prompt(api: dict[str, Any], instruction: str) -> str:
    docs = str(api.get("NLDocumentation", "")).strip()
    header = f'You can call the tools of the API "{api["Name"]}": {str(api.get("Description", "")).strip()}'
    return (f"{header}\n\nTools:\n{docs}\n\n{FORMAT.format(tools=', '.join(tool_names(api)))}\n\n"
            f"Request: {instruction.strip()}")


def gold_calls(steps: Any, where: str) -> list[ToolCall]:
    if not isinstance(steps, list) or not steps:
        raise DataError(f"{where}: expected a non-empty list of gold steps")
    calls = []
    for j, step in enumerate(steps):
        action = files.get_field(step, "Action", f"{where} step {j}")
        arguments = parse_arguments(step.get("Action_Input"))
        if arguments is None:
            raise DataError(f"{where} step {j}: Action_Input is not a JSON object even after repair: "
                            f"{step.get('Action_Input')!r}")
        calls.append(ToolCall(re.sub(r"^\[Optional\]\s*", "", str(action).strip()), arguments))
    return calls


def thoughts_for(calls: list[ToolCall], api: dict[str, Any]) -> list[str]:
    """A brief Thought per gold call, from the tool's own one-line description."""
    out = []
    for i, call in enumerate(calls):
        text = str(api.get("Function_Description", {}).get(call.action, ""))
        # The first line is the summary; some tools have none and start with "Parameters:".
        desc = text.split("\n", 1)[0].strip().rstrip(".")
        if desc.lower().startswith(("parameters:", "output:")):
            desc = ""
        lead = "To handle this request I will call" if i == 0 else "Next I will call"
        out.append(f"{lead} {call.action}" + (f": {desc[0].lower()}{desc[1:]}." if desc else "."))
    return out


class ToolAlpacaTask:
    """ToolAlpaca from the two eval files, split by API into "train" and "test".

    Args:
        seed: shuffles the API names before the split (the default gives the split documented above).
        test_fraction: share of APIs (not instructions) placed in test.
    """

    name = "toolalpaca"
    splits = ("train", "test")

    def __init__(self, seed: int = 0, test_fraction: float = 0.3):
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.seed, self.test_fraction = int(seed), float(test_fraction)

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        # The `seed` argument is unused: the split seed is the constructor's, so that changing the
        # run seed never moves APIs between train and test.
        split = files.check_split(self.name, split, self.splits)
        apis = self._apis(data_dir)
        train, test = split_apis([api["Name"] for _, api, _ in apis], self.seed, self.test_fraction)
        keep = set(train if split == "train" else test)
        examples = []
        for source, api, where in apis:
            if api["Name"] not in keep:
                continue
            instructions, answers = api.get("Instructions"), api.get("Golden_Answers")
            if not (isinstance(instructions, list) and isinstance(answers, list)
                    and len(instructions) == len(answers)):
                raise DataError(f"{where}: Instructions and Golden_Answers must be lists of equal length")
            for i, (instruction, steps) in enumerate(zip(instructions, answers)):
                calls = gold_calls(steps, f"{where} instruction {i}")
                examples.append(Example(
                    id=f"toolalpaca/{slug(api['Name'])}/{i}",
                    prompt=build_prompt(api, str(instruction)),
                    answer=json.dumps([c.as_json() for c in calls], ensure_ascii=False),
                    demonstration=render_react(calls, thoughts_for(calls, api)),
                    meta={"api": api["Name"], "source": source, "tools": tool_names(api),
                          "gold": [c.as_json() for c in calls]}))
        return files.take(examples, limit)

    def _apis(self, data_dir: str | None) -> list[tuple[str, dict, str]]:
        if data_dir is None:
            raise DataError("ToolAlpaca needs data_dir (a folder holding toolalpaca/eval_real.json and "
                            "toolalpaca/eval_simulated.json); there is no hub fallback, since the hub's "
                            "Ahren09/ToolAlpaca uses other, non-API-disjoint splits")
        out, seen = [], set()
        for source, filename in SOURCES.items():
            path = files.require_file(Path(data_dir) / "toolalpaca" / filename, f"ToolAlpaca {source} file")
            data = files.read_json(path)
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON array of APIs, got {type(data).__name__}")
            for k, api in enumerate(data):
                where = f"{path}[{k}]"
                name = files.get_field(api, "Name", where)
                if name in seen:
                    raise DataError(f"{where}: API {name!r} appears twice; the split groups by API name")
                seen.add(name)
                out.append((source, api, where))
        return out

    def score(self, example: Example, completion: str) -> Score:
        """full_accuracy is the headline; details hold action, argument and full accuracy."""
        pred = parse_tool_calls(completion)
        gold = [ToolCall(g["Action"], g["Action_Input"]) for g in example.meta["gold"]]
        details = score_calls(pred, gold)
        extracted = json.dumps([c.as_json() for c in pred], ensure_ascii=False) if pred else None
        return Score(correct=details["full_accuracy"], extracted=extracted, details=details)
