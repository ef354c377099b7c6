"""ToolAlpaca: golden strings for tool-call parsing and scoring, the API-disjoint split on fixtures,
and (when present) the real eval files under UNISD_DATA_DIR."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from unisd.tasks import get_task
from unisd.tasks.base import DataError
from unisd.tasks.toolalpaca import ToolAlpacaTask, slug, split_apis
from unisd.tasks.toolcall import (ToolCall, canonical, loads_lenient, parse_arguments, parse_tool_calls,
                                  render_react, score_calls)

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "data"
REAL = Path(os.environ.get("UNISD_DATA_DIR", REPO.parent / "shared" / "data"))

SEARCH = ToolCall("searchAnime", {"title": "Blue Sky"})
DETAILS = ToolCall("getAnimeDetails", {"animeId": "${animeId from searchAnime}"})


# ---------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, expected", [
    # plain ReAct, two calls, final answer ignored
    ("Thought: find it\nAction: searchAnime\nAction Input: {\"title\": \"Blue Sky\"}\n"
     "Thought: details\nAction: getAnimeDetails\nAction Input: {\"animeId\": 7}\nFinal Answer: done",
     [("searchAnime", {"title": "Blue Sky"}), ("getAnimeDetails", {"animeId": 7})]),
    # code fences, markdown bold, pretty-printed JSON, trailing prose after the JSON
    ("**Action:** `searchAnime`\n**Action Input:**\n```json\n{\n  \"title\": \"Blue Sky\"\n}\n```\n"
     "This searches.",
     [("searchAnime", {"title": "Blue Sky"})]),
    # single quotes (a Python literal), underscore label, observation ignored
    ("Action: searchAnime\nAction_Input: {'title': 'Blue Sky', 'page': 1} and then more\nObservation: ...",
     [("searchAnime", {"title": "Blue Sky", "page": 1})]),
    # unparseable input is kept as a call with arguments None; missing input means no arguments
    ("Action: searchAnime\nAction Input: the title Blue Sky\nAction: getAnimeDetails",
     [("searchAnime", None), ("getAnimeDetails", {})]),
    # nothing after Final Answer counts
    ("Final Answer: no tools needed\nAction: searchAnime\nAction Input: {}", []),
    # JSON outputs: the reference eval's schema, with Action_Input as an object or a JSON string
    ('{"tool_calls": [{"Thought": "t", "Action": "searchAnime", "Action_Input": {"title": "Blue Sky"}}, '
     '{"Action": "getAnimeDetails", "Action_Input": "{\\"animeId\\": 7}"}]}',
     [("searchAnime", {"title": "Blue Sky"}), ("getAnimeDetails", {"animeId": 7})]),
    ('```json\n[{"action": "searchAnime", "action_input": {"title": "Blue Sky"}}]\n```',
     [("searchAnime", {"title": "Blue Sky"})]),
    ('Here you go: {"Action": "searchAnime", "Action Input": "{\'title\': \'Blue Sky\'}"} hope it helps',
     [("searchAnime", {"title": "Blue Sky"})]),
    ('{"function": {"name": "searchAnime", "arguments": "{\\"title\\": \\"Blue Sky\\"}"}}',
     [("searchAnime", {"title": "Blue Sky"})]),
    ("I don't know.", []),
])
def test_parse_tool_calls(text, expected):
    assert [(c.action, c.arguments) for c in parse_tool_calls(text)] == expected


def test_parse_arguments_repairs_published_gold_defects():
    assert parse_arguments('{"animeId": ${animeId from searchAnime}}') == \
        {"animeId": "${animeId from searchAnime}"}
    assert parse_arguments('{"userId": ${userId from authenticateUser, "token": ${token from auth}}') == \
        {"userId": "${userId from authenticateUser}", "token": "${token from auth}"}
    assert parse_arguments('{"a": 1, "startDate": ${start date}", "page": 2}') == \
        {"a": 1, "startDate": "${start date}", "page": 2}
    assert parse_arguments('{"base": "USD", "symbols": "symbols": ["EUR", "GBP"]}') == \
        {"base": "USD", "symbols": ["EUR", "GBP"]}
    assert parse_arguments('{"x": [1, 2,],}') == {"x": [1, 2]}
    assert parse_arguments("") == {} and parse_arguments(None) == {} and parse_arguments({"k": 1}) == {"k": 1}
    assert parse_arguments("[1, 2]") is None
    assert loads_lenient("{'flag': true, 'none': null}") == {"flag": True, "none": None}


def test_render_react_round_trips():
    text = render_react([SEARCH, DETAILS], ["Search first.", "Then details."])
    assert text == ('Thought: Search first.\nAction: searchAnime\nAction Input: {"title": "Blue Sky"}\n'
                    'Thought: Then details.\nAction: getAnimeDetails\n'
                    'Action Input: {"animeId": "${animeId from searchAnime}"}')
    assert parse_tool_calls(text) == [SEARCH, DETAILS]


# ---------------------------------------------------------------------------------------- scoring

def test_canonical_values():
    assert canonical("42") == canonical(42) == canonical(42.0) == canonical(" 42 ")
    assert canonical("New   York ") == canonical("New York")
    assert canonical(True) == canonical("true") and canonical("1.50") == canonical(1.5)
    assert canonical(["EUR", "GBP"]) != canonical(["GBP", "EUR"])
    assert canonical("cn") != canonical("CN")


def test_score_calls_goldens():
    gold = [SEARCH, DETAILS]
    perfect = score_calls([ToolCall("searchAnime", {"title": " Blue  Sky", "extra": 1}),
                           ToolCall("getAnimeDetails", {"animeId": 7})], gold)  # placeholder: any value
    assert perfect == {"action_accuracy": 1.0, "argument_accuracy": 1.0, "full_accuracy": 1.0}
    half = score_calls([ToolCall("searchAnime", {"title": "Red Sky"}),
                        ToolCall("getAnimeDetails", {"animeId": 7})], gold)
    assert half == {"action_accuracy": 1.0, "argument_accuracy": 0.5, "full_accuracy": 0.0}
    wrong_order = score_calls([DETAILS, SEARCH], gold)
    assert wrong_order["action_accuracy"] == 0.0 and wrong_order["full_accuracy"] == 0.0
    assert set(score_calls([SEARCH], gold).values()) == {0.0}  # call counts differ
    # empty gold values are not counted; an empty placeholder answer does not match
    assert score_calls([ToolCall("w", {"city": "Oslo"})], [ToolCall("w", {"city": "Oslo", "units": ""})])[
        "full_accuracy"] == 1.0
    assert score_calls([ToolCall("d", {"animeId": ""})], [ToolCall("d", DETAILS.arguments)])[
        "argument_accuracy"] == 0.0
    # unparseable predicted input scores 0 on keyed gold, and 1 when the gold has no arguments
    assert score_calls([ToolCall("s", None)], [ToolCall("s", {"title": "x"})])["argument_accuracy"] == 0.0
    assert score_calls([ToolCall("s", None)], [ToolCall("s", {})])["full_accuracy"] == 1.0
    assert score_calls([], [])["full_accuracy"] == 1.0


# ------------------------------------------------------------------------------------------ split

def test_split_apis_is_seeded_and_disjoint():
    names = [f"api{i}" for i in range(21)]
    train, test = split_apis(names, 0, 0.3)
    assert len(test) == 6 and len(train) == 15 and not set(train) & set(test)
    assert split_apis(list(reversed(names)), 0, 0.3) == (train, test)  # input order does not matter
    assert split_apis(names, 1, 0.3) != (train, test)


def test_fixture_splits_are_disjoint_by_api():
    task = ToolAlpacaTask()
    train, test = task.load("train", data_dir=str(FIX)), task.load("test", data_dir=str(FIX))
    assert len(train) + len(test) == 8
    assert not {ex.meta["api"] for ex in train} & {ex.meta["api"] for ex in test}
    assert len({ex.meta["api"] for ex in test}) == 2  # round(0.3 * 5)
    assert len({ex.id for ex in train + test}) == 8
    for ex in train + test:
        assert task.score(ex, ex.demonstration).correct == 1.0, ex.id
        assert "Action Input: <the arguments as a JSON object>" in ex.prompt and "Request: " in ex.prompt
        assert "components" not in ex.meta["tools"]


def test_fixture_prompt_demonstration_and_score():
    examples = {ex.id: ex for split in ("train", "test")
                for ex in ToolAlpacaTask().load(split, data_dir=str(FIX))}
    anime = examples["toolalpaca/fake-anime/0"]
    assert anime.demonstration == (
        'Thought: To handle this request I will call searchAnime: search anime by title.\n'
        'Action: searchAnime\nAction Input: {"title": "Blue Sky"}\n'
        'Thought: Next I will call getAnimeDetails: get details of an anime.\n'
        'Action: getAnimeDetails\nAction Input: {"animeId": "${animeId from searchAnime}"}')
    assert anime.prompt.startswith('You can call the tools of the API "Fake Anime": Invented anime search')
    assert "one of: searchAnime, getAnimeDetails" in anime.prompt
    assert anime.prompt.endswith("Request: Find the anime 'Blue Sky' and show its details.")
    assert json.loads(anime.answer)[1] == {"Action": "getAnimeDetails",
                                           "Action_Input": {"animeId": "${animeId from searchAnime}"}}
    task = ToolAlpacaTask()
    as_json = json.dumps({"tool_calls": [{"Action": "searchAnime", "Action_Input": {"title": "Blue Sky"}},
                                         {"Action": "getAnimeDetails", "Action_Input": "{\"animeId\": 12}"}]})
    assert task.score(anime, as_json).correct == 1.0
    one_call = task.score(anime, "Action: searchAnime\nAction Input: {\"title\": \"Blue Sky\"}")
    assert one_call.correct == 0.0 and one_call.details["action_accuracy"] == 0.0
    assert task.score(anime, "no idea").extracted is None
    thought_less = examples["toolalpaca/toy-jokes/1"].demonstration  # a tool without a description
    assert thought_less.startswith("Thought: To handle this request I will call jokeCategories.\n")


def test_errors():
    with pytest.raises(DataError, match="data_dir"):
        ToolAlpacaTask().load("test")
    with pytest.raises(DataError, match="eval_real.json"):
        ToolAlpacaTask().load("test", data_dir="/nonexistent")
    with pytest.raises(ValueError):
        ToolAlpacaTask(test_fraction=1.5)
    assert get_task("toolalpaca", seed=3).seed == 3


# ------------------------------------------------------------------------------------ real data

real = pytest.mark.skipif(not (REAL / "toolalpaca" / "eval_real.json").is_file(),
                          reason=f"no real data at {REAL}")


@real
def test_real_split_is_api_disjoint_and_complete():
    task = ToolAlpacaTask()
    train, test = task.load("train", data_dir=str(REAL)), task.load("test", data_dir=str(REAL))
    assert len(train) + len(test) == 214
    train_apis, test_apis = Counter(ex.meta["api"] for ex in train), Counter(ex.meta["api"] for ex in test)
    assert not set(train_apis) & set(test_apis) and len(train_apis) + len(test_apis) == 21
    # the split documented in the module docstring
    assert sorted(test_apis) == ["1Forge", "Cataas", "Lob.com", "WolframAlpha", "airportsapi",
                                 "apilayer weatherstack"]
    assert (len(train), len(test)) == (156, 58)
    assert len({ex.id for ex in train + test}) == 214
    assert len({slug(name) for name in train_apis + test_apis}) == 21


@real
def test_real_gold_demonstrations_score_one():
    task = ToolAlpacaTask()
    for split in task.splits:
        for ex in task.load(split, data_dir=str(REAL)):
            score = task.score(ex, ex.demonstration)
            assert score.correct == 1.0 and score.details["argument_accuracy"] == 1.0, ex.id
