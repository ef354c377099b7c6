"""For every task that can train: an auxiliary context never contains the example's own gold
demonstration, for each builder that needs no model (random, and retrieval with a stand-in
embedder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unisd.contexts import build_aux_contexts
from unisd.tasks import get_task

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data"
TRAINABLE = {"arithmetic": "train", "gsm8k": "train", "cose": "train", "mbpp": "train", "toolalpaca": "train",
             "scienceqa": "train", "jsonl": "train"}


def _examples(name: str):
    if name == "jsonl":
        task = get_task("jsonl", path=str(FIXTURES / "jsonl" / "mc.jsonl"))
        if not (FIXTURES / "jsonl" / "mc.jsonl").exists():
            pytest.skip("no jsonl fixture")
    else:
        task = get_task(name)
    examples = task.load(TRAINABLE[name], data_dir=str(FIXTURES), limit=40, seed=0)
    for split in task.splits:  # tiny fixtures: pool the other splits so each builder has donors
        if len(examples) >= 6 or split == TRAINABLE[name]:
            continue
        try:
            examples += task.load(split, data_dir=str(FIXTURES), limit=40, seed=0)
        except Exception:  # a split the fixture does not have
            pass
    seen = set()
    return [ex for ex in examples if not (ex.id in seen or seen.add(ex.id))]


def _hash_embed(texts):
    rng = np.random.default_rng(0)
    table = {}
    out = []
    for t in texts:
        if t not in table:
            table[t] = rng.normal(size=16)
        v = table[t]
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(TRAINABLE))
@pytest.mark.parametrize("kind", ["random", "retrieval"])
def test_aux_contexts_never_contain_own_demonstration(name, kind, tmp_path):
    examples = [ex for ex in _examples(name) if ex.demonstration]
    if len(examples) < 3:
        pytest.skip(f"fixture for {name} has fewer than 3 examples with demonstrations")
    k = 2 if len({ex.prompt for ex in examples}) >= 6 else 1  # tiny fixtures have few distinct prompts
    contexts = build_aux_contexts(examples, kind=kind, k=k, seed=0, cache_dir=tmp_path,
                                  embed_fn=_hash_embed if kind == "retrieval" else None)
    for ex in examples:
        assert len(contexts[ex.id]) == k
        for text in contexts[ex.id]:
            assert ex.demonstration not in text, f"{name}/{kind}: {ex.id} sees its own gold demonstration"
            assert text.rstrip().endswith(ex.prompt.rstrip()) or ex.prompt in text
