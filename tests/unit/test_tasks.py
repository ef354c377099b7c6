"""Tasks: answer extraction goldens, every loader on hand-written fixtures, and (when present) the
real files under shared/data (UNISD_DATA_DIR, default ../shared/data next to the repo).

GPQA canary rule: real-data assertions report ids only, never question or option text.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from unisd.tasks import TASKS, DataError, Example, get_task
from unisd.tasks import extract as ex
from unisd.tasks.cose import CoSETask
from unisd.tasks.gpqa import GPQATask
from unisd.tasks.gsm8k import GSM8KTask
from unisd.tasks.jsonl import JSONLTask
from unisd.tasks.mcqa import (build_example, cloze_prompt, option_continuations, render_demonstration,
                              score_letter, score_option_logprobs, shuffle_options)
from unisd.tasks.scienceqa import ScienceQATask

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "data"
REAL = Path(os.environ.get("UNISD_DATA_DIR", REPO.parent / "shared" / "data"))
needs_real = pytest.mark.skipif(not (REAL / "gsm8k" / "train.jsonl").is_file(),
                                reason=f"real data not found at {REAL} (set UNISD_DATA_DIR)")
MINE = ("gsm8k", "jsonl", "cose", "gpqa", "scienceqa")


# --- extraction goldens --------------------------------------------------------------------------

NUMBER_CASES = [  # text, strict, flexible
    ("so 5+5=10.\n#### 10", "10", "10"),
    ("#### $1,080.", "1080", "1080"),
    ("#### 1,080\nCheck: 1,080 / 2 = 540", "1080", "1080"),
    ("**#### 72**", "72", "72"),
    ("####18", "18", "18"),
    ("#### -3", "-3", "-3"),
    ("#### 2.50", "2.5", "2.5"),
    ("The answer is 42.", "42", "42"),
    ("So the final answer is: $18", "18", "18"),
    ("the answer is 7 but #### 8", "8", "8"),
    ("#### \nThe answer is 9", "9", "9"),
    ("I think 5 then 7", None, "7"),
    ("values 1,2,3", None, "3"),
    ("3-4 = -1", None, "-1"),
    ("H2O has 3 atoms", None, "3"),
    ("it costs $1,234.56 total", None, "1234.56"),
    ("That is 1.5.", None, "1.5"),
    ("no numbers here", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("text,strict,flexible", NUMBER_CASES)
def test_number_extraction(text, strict, flexible):
    assert ex.extract_number_strict(text) == strict
    assert ex.extract_number_flexible(text) == flexible


@pytest.mark.parametrize("a,b,equal", [
    ("72", "72.0", True), ("1,080", "1080", True), ("$5", "5", True), ("0.3333", "0.33333", True),
    ("1.0", "1.001", False), ("-2", "2", False), (None, "1", False), ("abc", "1", False),
])
def test_numbers_equal(a, b, equal):
    assert ex.numbers_equal(a, b) is equal


LETTER_CASES = [  # text, n_options, strict, flexible
    ("Reasoning: x\nAnswer: C", 4, "C", "C"),
    ("answer: c", 4, "C", "C"),
    ("**Answer:** (B)", 4, "B", "B"),
    ("**Answer**: B", 4, "B", "B"),
    ("Answer: B. Paris", 4, "B", "B"),
    ("ANSWER: B", 4, "B", "B"),
    ("Final answer: D", 4, "D", "D"),
    ("Answer: a dog chases it", 4, None, None),
    ("Answer: E", 4, None, None),
    ("Answer: E", 5, "E", "E"),
    ("The answer is D.", 4, "D", "D"),
    ("the answer is b", 4, "B", "B"),
    ("the correct answer is option (A)", 4, "A", "A"),
    ("Answer: B\nwait, no.\nAnswer: D", 4, "D", "D"),
    ("Answer: Cats", 4, None, None),
    ("My final ANSWER: B", 4, None, "B"),
    ("so \\boxed{C}", 4, None, "C"),
    ("C. Paris is right", 4, None, "C"),
    ("(B)", 4, None, "B"),
    ("I think it is A or maybe D", 4, None, "D"),
    ("I'm not sure", 4, None, None),
    ("", 4, None, None),
]


@pytest.mark.parametrize("text,n,strict,flexible", LETTER_CASES)
def test_letter_extraction(text, n, strict, flexible):
    assert ex.extract_letter_strict(text, n) == strict
    assert ex.extract_letter_flexible(text, n) == flexible


@pytest.mark.parametrize("text,strict,flexible", [
    ("Answer: Paris", "Paris", "Paris"),
    ("Paris", "Paris", "Paris"),
    ("work...\n#### Lutz", "Lutz", "Lutz"),
    ("I think\nit is Lutz", None, "it is Lutz"),
    ("", None, None),
])
def test_text_extraction(text, strict, flexible):
    assert ex.extract_text_strict(text) == strict
    assert ex.extract_text_flexible(text) == flexible


@pytest.mark.parametrize("a,b,equal", [
    ("  Paris. ", "paris", True), ("**Lutz**", "lutz", True), ('"new  york"', "New York", True),
    ("1,000", "1000.0", True), ("Paris", "London", False), (None, "x", False),
])
def test_texts_equal(a, b, equal):
    assert ex.texts_equal(a, b) is equal


# --- contract --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MINE)
def test_registry_builds_task(name):
    task = get_task(name, **({"path": str(FIX / "jsonl" / "{split}.jsonl")} if name == "jsonl" else {}))
    assert task.name == name and task.splits
    assert callable(task.load) and callable(task.score)
    assert name in TASKS


def test_unknown_split_is_a_value_error():
    with pytest.raises(DataError, match="valid splits: test"):
        GPQATask().load("train", data_dir=str(FIX))


# --- GSM8K -----------------------------------------------------------------------------------------

def test_gsm8k_fixture():
    task = GSM8KTask()
    train, test = task.load("train", data_dir=str(FIX)), task.load("test", data_dir=str(FIX))
    assert (len(train), len(test)) == (3, 2)
    assert [e.answer for e in train] == ["12", "30080", "2.5"]
    assert train[1].id == "train-1"
    assert "<<" not in train[1].demonstration and train[1].demonstration.endswith("\n#### 30080")
    assert "30,000 + 80 = 30,080" in train[1].demonstration
    assert train[0].prompt.startswith("Tom has 3 boxes") and "'#### <number>'" in train[0].prompt
    assert all(task.score(e, e.demonstration).correct == 1.0 for e in train + test)
    assert len(task.load("train", data_dir=str(FIX), limit=2)) == 2


@pytest.mark.parametrize("completion,strict,flexible,extracted", [
    ("12 pens.\n#### 12", 1.0, 1.0, "12"),
    ("The answer is 12.0", 1.0, 1.0, "12"),
    ("I count 12", 0.0, 1.0, None),
    ("#### 13\nor maybe 12", 0.0, 0.0, "13"),
    ("no idea", 0.0, 0.0, None),
])
def test_gsm8k_score(completion, strict, flexible, extracted):
    example = Example(id="x", prompt="p", answer="12")
    score = GSM8KTask().score(example, completion)
    assert (score.correct, score.details, score.extracted) == (
        strict, {"strict": strict, "flexible": flexible}, extracted)


def test_gsm8k_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "gsm8k" / "test.jsonl")):
        GSM8KTask().load("test", data_dir=str(tmp_path))


def test_gsm8k_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    (tmp_path / "gsm8k" / "train.jsonl").write_text(f"{good}\n{{not json\n")
    with pytest.raises(DataError, match=r"train\.jsonl:2: malformed JSON"):
        GSM8KTask().load("train", data_dir=str(tmp_path))


def test_gsm8k_missing_field_names_field_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:1: missing field 'answer'"):
        GSM8KTask().load("test", data_dir=str(tmp_path))


def _fake_datasets(monkeypatch, rows_by_split=None, error=None):
    """Install a stand-in `datasets` module (the real one is optional and needs the network)."""
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if error is not None:
            raise error
        return rows_by_split[split]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_gsm8k_hub_fallback(monkeypatch):
    calls = _fake_datasets(monkeypatch, {"test": [{"question": "q?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}]})
    (example,) = GSM8KTask().load("test")
    assert calls == [("gsm8k", "main", "test")]
    assert (example.answer, example.demonstration) == ("2", "1 + 1 = 2\n#### 2")


def test_gsm8k_hub_failure_says_what_was_tried(monkeypatch):
    _fake_datasets(monkeypatch, error=ConnectionError("offline"))
    with pytest.raises(DataError, match=r"hub dataset 'gsm8k' \(config 'main'\).*offline.*--data-dir"):
        GSM8KTask().load("train")


# --- shared multiple choice --------------------------------------------------------------------------

def test_shuffle_is_per_item_and_deterministic():
    options = ["w", "x", "y", "z", "v"]
    a = shuffle_options(options, 2, seed=0, item_id="item-7")
    assert a == shuffle_options(options, 2, seed=0, item_id="item-7")
    shuffled, gold, perm = a
    assert shuffled[gold] == "y" and [options[i] for i in perm] == shuffled
    perms = {tuple(shuffle_options(options, 0, seed=s, item_id="item-7")[2]) for s in range(10)}
    assert len(perms) > 1


def test_build_example_prompt_demonstration_and_cloze():
    e = build_example("i1", "Which fake thing?", ["alpha", "beta", "gamma"], 1, seed=3, context="Some hint.",
                      explanation="Beta is the one.")
    letter = e.answer
    assert e.choices[ord(letter) - ord("A")] == "beta"
    assert e.demonstration == f"Reasoning: Beta is the one.\nAnswer: {letter}"
    assert "Question: Which fake thing?" in e.prompt and "Context: Some hint." in e.prompt
    assert all(f"{l}. {t}" in e.prompt for l, t in zip("ABC", e.choices))
    assert "'Answer: <letter>'" in e.prompt and "one of A, B, C" in e.prompt
    assert cloze_prompt(e) == "Context: Some hint.\nQuestion: Which fake thing?\nAnswer:"
    assert option_continuations(e) == [" " + t for t in e.choices]
    logprobs = [-5.0] * 3
    logprobs[ord(letter) - ord("A")] = -1.0
    assert score_option_logprobs(e, logprobs).correct == 1.0
    assert score_option_logprobs(e, [-1.0 if i != ord(letter) - 65 else -9.0 for i in range(3)]).correct == 0.0
    assert render_demonstration("", "C") == "Answer: C"
    with pytest.raises(ValueError, match="no choices"):
        option_continuations(Example(id="n", prompt="p", answer="1"))


def test_score_letter_details():
    e = build_example("i", "q", ["a", "b", "c", "d"], 0, seed=0, shuffle=False)
    assert score_letter(e, "Reasoning: ok\nAnswer: A").details == {"strict": 1.0, "flexible": 1.0}
    s = score_letter(e, "it is A")
    assert (s.correct, s.extracted, s.details["flexible"]) == (0.0, None, 1.0)


# --- CoS-E -----------------------------------------------------------------------------------------

def _gold_text(e: Example) -> str:
    return e.choices[ord(e.answer) - ord("A")]


def test_cose_fixture_join_and_gold():
    task = CoSETask()
    train = task.load("train", data_dir=str(FIX))
    dev = task.load("dev", data_dir=str(FIX))
    assert [len(train), len(dev)] == [3, 2]
    assert task.load("validation", data_dir=str(FIX)) == dev == task.load("test", data_dir=str(FIX))
    by_id = {e.id: e for e in train + dev}
    assert _gold_text(by_id["aaa002"]) == "mouse" and _gold_text(by_id["bbb002"]) == "water"
    assert by_id["aaa002"].demonstration == f"Reasoning: cats chase mice\nAnswer: {by_id['aaa002'].answer}"
    assert by_id["aaa001"].meta["concept"] == "spoon" and len(by_id["aaa001"].choices) == 5
    assert all(task.score(e, e.demonstration).correct == 1.0 for e in train + dev)


def test_cose_shuffle_deterministic_and_row_order_independent():
    task = CoSETask()
    a = task.load("train", data_dir=str(FIX), seed=1)
    assert a == task.load("train", data_dir=str(FIX), seed=1)
    assert task.load("train", data_dir=str(FIX), seed=1, limit=1) == a[:1]
    fixed = CoSETask(shuffle_options=False).load("train", data_dir=str(FIX))
    assert fixed[0].choices == ("drawer", "cloud", "volcano", "ocean", "moon") and fixed[0].answer == "A"
    seeds = {tuple(e.choices for e in task.load("train", data_dir=str(FIX), seed=s)) for s in range(5)}
    assert len(seeds) > 1


def test_cose_missing_explanation_names_id(tmp_path):
    shutil.copytree(FIX / "commonsenseqa", tmp_path / "commonsenseqa")
    (tmp_path / "cos_e" / "v1.11").mkdir(parents=True)
    (tmp_path / "cos_e" / "v1.11" / "cose_dev_v1.11.jsonl").write_text(
        json.dumps({"id": "bbb002", "explanation": {"open-ended": "x", "selected": "y"}}) + "\n")
    with pytest.raises(DataError, match="id bbb001 has no explanation"):
        CoSETask().load("validation", data_dir=str(tmp_path))


# --- GPQA --------------------------------------------------------------------------------------------

def test_gpqa_fixture():
    task = GPQATask()
    exs = task.load("test", data_dir=str(FIX))
    assert [e.id for e in exs] == ["recFAKE00000001", "recFAKE00000002", "recFAKE00000003"]
    assert [_gold_text(e) for e in exs] == ["zorbon", "azurine", "lumosome"]
    assert "rubine" in exs[1].choices  # cells are stripped
    assert exs[0].meta["domain"] == "Physics" and exs[0].meta["subdomain"] == "Physics (general)"
    assert exs[0].demonstration.endswith(f"heaviest fake particle.\nAnswer: {exs[0].answer}")
    assert "Second line of the question." in exs[0].prompt
    assert exs == task.load("test", data_dir=str(FIX))
    assert all(task.score(e, e.demonstration).correct == 1.0 for e in exs)


def test_gpqa_missing_subset_names_path():
    with pytest.raises(DataError, match=r"gpqa_main\.csv"):
        GPQATask(subset="main").load("test", data_dir=str(FIX))
    with pytest.raises(DataError, match="subset"):
        GPQATask(subset="tiny")


# --- ScienceQA ---------------------------------------------------------------------------------------

def test_scienceqa_fixture():
    task = ScienceQATask()
    train = task.load("train", data_dir=str(FIX))
    assert [e.id for e in train] == ["1", "2"]  # pid 3 has an image
    assert len(ScienceQATask(text_only=False).load("train", data_dir=str(FIX))) == 3
    assert [e.id for e in task.load("test", data_dir=str(FIX))] == ["6", "5"]  # pid_splits order
    assert [e.id for e in task.load("validation", data_dir=str(FIX))] == ["4"]
    first = train[0]
    assert _gold_text(first) == "trunkle"
    assert "Context: Trunkles feed milk to their young." in first.prompt
    assert "Mammals feed milk" not in first.prompt
    assert "Mammals feed milk" in ScienceQATask(include_lecture=True).load("train", data_dir=str(FIX))[0].prompt
    assert first.demonstration == f"Reasoning: A trunkle feeds milk, so it is a mammal.\nAnswer: {first.answer}"
    assert "Context:" not in task.load("test", data_dir=str(FIX))[0].prompt  # empty hint
    assert first.meta["subject"] == "natural science"


def test_scienceqa_without_pid_splits_uses_split_field(tmp_path):
    (tmp_path / "scienceqa").mkdir()
    shutil.copy(FIX / "scienceqa" / "problems.json", tmp_path / "scienceqa")
    assert sorted(e.id for e in ScienceQATask().load("test", data_dir=str(tmp_path))) == ["5", "6"]


def test_scienceqa_missing_problems_names_path(tmp_path):
    (tmp_path / "scienceqa").mkdir()
    shutil.copy(FIX / "scienceqa" / "pid_splits.json", tmp_path / "scienceqa")
    with pytest.raises(DataError, match=str(tmp_path / "scienceqa" / "problems.json")):
        ScienceQATask().load("test", data_dir=str(tmp_path))


def test_scienceqa_hub_fallback(monkeypatch):
    row = {"question": "q?", "choices": ["a", "b"], "answer": 1, "hint": "h", "image": None,
           "lecture": "", "solution": "because b", "subject": "s", "topic": "t", "grade": "g"}
    calls = _fake_datasets(monkeypatch, {"validation": [row, {**row, "image": object()}]})
    (e,) = ScienceQATask().load("val")
    assert calls == [("derek-thomas/ScienceQA", None, "validation")]
    assert e.id == "val-0" and _gold_text(e) == "b"


# --- JSONL -------------------------------------------------------------------------------------------

def test_jsonl_multiple_choice_answer_forms():
    task = JSONLTask(path=str(FIX / "jsonl" / "mc.jsonl"))
    assert task.splits == ("train",)
    q1, q2, q3 = task.load("train")
    assert (q1.answer, q2.answer, q3.answer) == ("B", "A", "B")  # letter, index 0, option text
    assert q1.demonstration == "Reasoning: Redish is the warm one.\nAnswer: B" and q2.demonstration == "Answer: A"
    assert q1.choices == ("blurple", "redish", "greyish") and "B. redish" in q1.prompt
    assert task.score(q1, "Reasoning: warm.\nAnswer: B").details == {"strict": 1.0, "flexible": 1.0}
    assert task.score(q1, "redish, so B").details == {"strict": 0.0, "flexible": 1.0}
    shuffled = JSONLTask(path=str(FIX / "jsonl" / "mc.jsonl"), shuffle_options=True).load("train", seed=4)
    assert [_gold_text(e) for e in shuffled] == ["redish", "triangloid", "iced tead"]


@pytest.mark.parametrize("completion,strict,flexible", [
    ("6 * 7 = 42\nAnswer: 42", 1.0, 1.0),
    ("#### 42.0", 1.0, 1.0),
    ("42", 1.0, 1.0),
    ("Answer: 42 apples", 1.0, 1.0),
    ("first 41,\nthen 42", 0.0, 1.0),
    ("Answer: 41", 0.0, 0.0),
])
def test_jsonl_free_form_numeric(completion, strict, flexible):
    (num, _) = JSONLTask(path=str(FIX / "jsonl" / "free.jsonl")).load("train")
    assert num.answer == "42" and num.meta["format"] == "free" and num.id == "train-1"
    assert JSONLTask(path=str(FIX / "jsonl" / "free.jsonl")).score(num, completion).details == {
        "strict": strict, "flexible": flexible}


@pytest.mark.parametrize("completion,strict,flexible", [
    ("Lutz", 1.0, 1.0), ("Answer: lutz.", 1.0, 1.0), ("Let me think.\nLutz", 0.0, 1.0), ("Answer: Berlin", 0.0, 0.0),
])
def test_jsonl_free_form_text(completion, strict, flexible):
    task = JSONLTask(path=str(FIX / "jsonl" / "free.jsonl"))
    text = task.load("train")[1]
    assert task.score(text, completion).details == {"strict": strict, "flexible": flexible}


def test_jsonl_split_paths(tmp_path):
    pattern = JSONLTask(path="jsonl/{split}.jsonl")
    assert len(pattern.load("test", data_dir=str(FIX))) == 2  # relative to data_dir
    directory = JSONLTask(path=str(FIX / "jsonl"))
    assert [e.prompt for e in directory.load("train")] == ["Say yes."]
    mapping = JSONLTask(splits={"train": "jsonl/mc.jsonl", "eval": "jsonl/free.jsonl"})
    assert mapping.splits == ("train", "eval") and len(mapping.load("eval", data_dir=str(FIX))) == 2
    with pytest.raises(DataError, match="serves only split 'train'"):
        JSONLTask(path=str(FIX / "jsonl" / "mc.jsonl")).load("test")
    with pytest.raises(DataError, match=str(tmp_path / "validation.jsonl")):
        JSONLTask(path=str(tmp_path)).load("validation")
    system = JSONLTask(path=str(FIX / "jsonl" / "mc.jsonl"), system="Be brief.").load("train")[0]
    assert system.system == "Be brief."


@pytest.mark.parametrize("lines,error", [
    (['{"prompt": "p", "answer": "a"}', '{"prompt": "p", '], r"data\.jsonl:2: malformed JSON"),
    (['{"prompt": "p", "answer": "a"}', "[1, 2]"], r"data\.jsonl:2: expected a JSON object"),
    (['{"prompt": "p"}'], r"data\.jsonl:1: missing field 'answer'"),
    (['{"question": "p", "answer": "a"}'], r"data\.jsonl:1: missing field 'prompt'"),
    (['{"prompt": "p", "answer": null}'], r"data\.jsonl:1: missing field 'answer'"),
    ([], r"has no rows"),
    (["", "  "], r"has no rows"),
    (['{"prompt": "p", "answer": "E", "choices": ["x", "y"]}'], r"data\.jsonl:1: answer 'E' is not a letter"),
    (['{"prompt": "p", "answer": 2, "choices": ["x", "y"]}'], r"data\.jsonl:1: answer index 2 is outside"),
    (['{"prompt": "p", "answer": "A", "choices": ["B", "A"]}'], r"data\.jsonl:1: answer 'A' is both letter"),
    (['{"prompt": "p", "answer": "x", "choices": "x"}'], r"data\.jsonl:1: field 'choices' must be a list"),
    (['{"id": 1, "prompt": "p", "answer": "a"}', '{"id": 1, "prompt": "q", "answer": "b"}'],
     r"data\.jsonl:2: id '1' already used at line 1"),
])
def test_jsonl_errors(tmp_path, lines, error):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=error):
        JSONLTask(path=str(path)).load("train")


def test_jsonl_custom_fields(tmp_path):
    path = tmp_path / "own.jsonl"
    path.write_text(json.dumps({"key": "k9", "q": "Pick one", "gold": "y", "opts": ["x", "y"], "why": "y fits"}) + "\n")
    (e,) = JSONLTask(path=str(path), prompt_field="q", answer_field="gold", choices_field="opts",
                     demonstration_field="why", id_field="key").load("train")
    assert (e.id, e.answer, e.demonstration) == ("k9", "B", "Reasoning: y fits\nAnswer: B")
    with pytest.raises(DataError, match="needs task_args.path"):
        JSONLTask().load("train")


# --- real data (skipped without shared/data) -----------------------------------------------------

@needs_real
def test_real_gsm8k_counts_and_roundtrip():
    task = GSM8KTask()
    for split, n in (("train", 7473), ("test", 1319)):
        exs = task.load(split, data_dir=str(REAL))
        assert len(exs) == n and len({e.id for e in exs}) == n
        bad = [e.id for e in exs if task.score(e, e.demonstration).correct != 1.0 or "<<" in e.demonstration
               or not e.demonstration.endswith(f"#### {e.answer}")]
        assert not bad


@needs_real
def test_real_cose_counts_and_gold():
    task = CoSETask()
    for split, file, n in (("train", "train", 9741), ("validation", "dev", 1221)):
        exs = task.load(split, data_dir=str(REAL))
        assert len(exs) == n
        raw = {}
        for line in (REAL / "commonsenseqa" / f"{file}_rand_split.jsonl").read_text().splitlines():
            row = json.loads(line)
            raw[row["id"]] = next(c["text"] for c in row["question"]["choices"] if c["label"] == row["answerKey"])
        bad = [e.id for e in exs if _gold_text(e) != raw[e.id].strip()
               or not e.demonstration.endswith(f"\nAnswer: {e.answer}")]
        assert not bad
    assert task.load("train", data_dir=str(REAL), limit=50) == task.load("train", data_dir=str(REAL))[:50]


@needs_real
def test_real_gpqa_counts_gold_and_determinism():
    task = GPQATask()
    exs = task.load("test", data_dir=str(REAL))
    assert len(exs) == 198 and len({e.id for e in exs}) == 198
    with open(REAL / "gpqa" / "gpqa_diamond.csv", encoding="utf-8", newline="") as f:
        gold = {r["Record ID"]: r["Correct Answer"].strip() for r in csv.DictReader(f)}
    # Ids only in failure messages: GPQA text must not end up in logs (canary rule).
    bad = [e.id for e in exs if _gold_text(e) != gold[e.id] or task.score(e, e.demonstration).correct != 1.0]
    assert not bad
    again = task.load("test", data_dir=str(REAL))
    assert [e.choices == a.choices for e, a in zip(exs, again)].count(False) == 0
    letters_used = {e.answer for e in exs}
    assert letters_used == {"A", "B", "C", "D"}


@needs_real
def test_real_scienceqa_missing_problems_is_named():
    with pytest.raises(DataError, match=r"scienceqa/problems\.json"):
        ScienceQATask().load("test", data_dir=str(REAL))
