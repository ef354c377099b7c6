"""Auxiliary teacher contexts for multi-teacher agreement (spec §2.1): K per example.

Each context is a user-turn text: reference material taken from *other* examples, then the
example's own student prompt. Builders:
- "random": K distinct other examples, one per context, as solved references;
- "retrieval": the K nearest other examples by sentence embedding of the prompt (cosine);
- "induced": general instructions the model writes from disjoint groups of demonstrations.

Unlike the reference code (§7.2 item 5), every builder excludes the example itself, any example
with the same prompt text, and any material that contains the example's own demonstration; the
induction groups and per-example draws are seeded, and meta-prompts go through `generate`, which
the training loop wires to the chat template.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from unisd.contexts._cache import content_key, read_json_cache, write_json_cache
from unisd.contexts.embedding import EmbedFn, embed_texts
from unisd.tasks.base import Example

log = logging.getLogger(__name__)

Generate = Callable[[list[str]], list[str]]
"""A batch of user-turn texts -> one model output each (the caller applies the chat template)."""

META_PROMPT_VERSION = 1
"""Bump when `_meta_prompt` changes: it is part of the induced-instruction cache key."""


@dataclass(frozen=True)
class AuxOptions:
    """Builder options beyond (examples, k, seed); each builder reads the fields it needs."""

    embedder: str = "all-MiniLM-L6-v2"
    embed_fn: EmbedFn | None = None
    cache_dir: str | os.PathLike | None = None
    generate: Generate | None = None
    group_size: int = 3
    count: int = 16
    cache_key_extra: str = ""


# --- shared pieces ----------------------------------------------------------------------------

def _solution(example: Example) -> str:
    return example.demonstration if example.demonstration.strip() else example.answer


def _reference_context(donor: Example, example: Example) -> str:
    return (f"## Reference example (do not answer it)\n### Question\n{donor.prompt}\n"
            f"### Solution\n{_solution(donor)}\n\n## Task to solve\n{example.prompt}")


def _instruction_context(instruction: str, example: Example) -> str:
    return f"## General instructions\n{instruction}\n\n## Task to solve\n{example.prompt}"


def _leaks(example: Example, material: str) -> bool:
    """True if `material` (what a context adds to the prompt) contains the example's gold demonstration."""
    demo = example.demonstration.strip()
    return bool(demo) and demo in material


def _norm(text: str) -> str:
    return " ".join(text.split())


def _can_donate(donor: Example, example: Example) -> bool:
    return (donor.id != example.id and _norm(donor.prompt) != _norm(example.prompt)
            and not _leaks(example, donor.prompt + "\n" + _solution(donor)))


# --- random -----------------------------------------------------------------------------------

def random_contexts(examples: list[Example], *, k: int, seed: int, opts: AuxOptions) -> dict[str, list[str]]:
    """Context j of an example shows donor j: K distinct other examples drawn with
    `random.Random(f"{seed}:{id}")`."""
    n = len(examples)
    out: dict[str, list[str]] = {}
    for ex in examples:
        rng = random.Random(f"{seed}:{ex.id}")
        donors: list[int] = []
        seen: set[str] = set()  # donor prompts already used: duplicates would give identical contexts

        def take(i: int) -> None:
            if _norm(examples[i].prompt) not in seen and _can_donate(examples[i], ex):
                donors.append(i)
                seen.add(_norm(examples[i].prompt))

        # Rejection sampling keeps this O(K) per example; fall back to a seeded full scan when
        # most of the pool is ineligible (tiny or highly duplicated sets).
        for _ in range(20 * k + 20):
            if len(donors) == k:
                break
            take(rng.randrange(n))
        if len(donors) < k:
            pool = list(range(n))
            rng.shuffle(pool)
            for i in pool:
                if len(donors) == k:
                    break
                take(i)
        if len(donors) < k:
            raise ValueError(f"random contexts: example {ex.id!r} has only {len(donors)} eligible donors "
                             f"(other ids, other prompt text, distinct prompts); need k={k}")
        out[ex.id] = [_reference_context(examples[i], ex) for i in donors]
    return out


# --- retrieval --------------------------------------------------------------------------------

def retrieval_contexts(examples: list[Example], *, k: int, seed: int,
                       opts: AuxOptions) -> dict[str, list[str]]:
    """Context j of an example shows its j-th nearest other example by cosine similarity of the
    prompt embeddings (ties broken by position). `seed` is unused: retrieval is deterministic."""
    vectors = embed_texts([e.prompt for e in examples], embedder=opts.embedder,
                          embed_fn=opts.embed_fn, cache_dir=opts.cache_dir)
    same_prompt: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        same_prompt.setdefault(_norm(e.prompt), []).append(i)
    out: dict[str, list[str]] = {}
    chunk = 1024
    for start in range(0, len(examples), chunk):
        sims = vectors[start:start + chunk] @ vectors.T  # [chunk, N]
        for row, sim in enumerate(sims):
            ex = examples[start + row]
            sim[same_prompt[_norm(ex.prompt)]] = -np.inf  # self and exact duplicates
            order = np.argsort(-sim, kind="stable")
            chosen: list[int] = []
            seen: set[str] = set()  # one donor per distinct prompt, as in `random_contexts`
            for i in order:
                if sim[i] == -np.inf:
                    break
                if _norm(examples[i].prompt) not in seen and _can_donate(examples[i], ex):
                    chosen.append(int(i))
                    seen.add(_norm(examples[i].prompt))
                    if len(chosen) == k:
                        break
            if len(chosen) < k:
                raise ValueError(f"retrieval contexts: example {ex.id!r} has only {len(chosen)} eligible "
                                 f"neighbours (other ids, other prompt text, distinct prompts); need k={k}")
            out[ex.id] = [_reference_context(examples[i], ex) for i in chosen]
    return out


# --- induced ----------------------------------------------------------------------------------

def _meta_prompt(group: list[Example]) -> str:
    blocks = "\n\n".join(f"### Example {j}\nQuestion:\n{e.prompt}\nSolution:\n{_solution(e)}"
                         for j, e in enumerate(group, 1))
    return ("Here are solved examples of a task.\n\n" + blocks + "\n\n"
            "Write 3-4 sentences of general advice for solving problems of this kind. Do not mention "
            "specific numbers, names or answers from these examples. Reply with the advice only.")


def induce_instructions(examples: list[Example], *, seed: int,
                        opts: AuxOptions) -> tuple[list[list[str]], list[str]]:
    """(groups of example ids, one instruction per group), from the cache when it matches.

    Groups are disjoint, drawn with `random.Random(f"{seed}:induce")` from the examples sorted by
    id (so the result does not depend on input order), `opts.count` of them at most.
    An empty model output is kept as "" and never assigned.
    """
    if opts.generate is None:
        raise ValueError("induced contexts need `generate` (user-turn texts -> model outputs)")
    ordered = sorted(examples, key=lambda e: e.id)
    key = content_key({"builder": "induced", "meta_prompt_version": META_PROMPT_VERSION, "seed": seed,
                       "group_size": opts.group_size, "count": opts.count,
                       "model": opts.cache_key_extra,
                       "examples": content_key([[e.id, e.prompt, _solution(e)] for e in ordered])})
    path = Path(opts.cache_dir) / f"induced-{key[:32]}.json" if opts.cache_dir is not None else None
    cached = read_json_cache(path, key, ("groups", "instructions"))
    if cached is not None and len(cached["groups"]) == len(cached["instructions"]):
        return cached["groups"], cached["instructions"]

    n_groups = min(opts.count, len(ordered) // opts.group_size)
    if n_groups == 0:
        raise ValueError(f"induced contexts: {len(ordered)} examples cannot fill one group of "
                         f"group_size={opts.group_size}")
    if n_groups < opts.count:
        log.warning("induced contexts: only %d disjoint groups of %d fit in %d examples (count=%d)",
                    n_groups, opts.group_size, len(ordered), opts.count)
    order = list(range(len(ordered)))
    random.Random(f"{seed}:induce").shuffle(order)
    groups = [[ordered[i] for i in order[g * opts.group_size:(g + 1) * opts.group_size]]
              for g in range(n_groups)]
    outputs = opts.generate([_meta_prompt(g) for g in groups])
    if len(outputs) != len(groups):
        raise ValueError(f"generate returned {len(outputs)} outputs for {len(groups)} prompts")
    instructions = [(o or "").strip() for o in outputs]
    group_ids = [[e.id for e in g] for g in groups]
    if path is not None:
        write_json_cache(path, key, {"groups": group_ids, "instructions": instructions})
    return group_ids, instructions


def induced_contexts(examples: list[Example], *, k: int, seed: int, opts: AuxOptions) -> dict[str, list[str]]:
    """Each example draws K distinct induced instructions (`random.Random(f"{seed}:{id}")`), only
    from groups that contain neither the example nor another example with the same prompt."""
    group_ids, instructions = induce_instructions(examples, seed=seed, opts=opts)
    by_id = {e.id: e for e in examples}
    group_prompts = [{_norm(by_id[i].prompt) for i in ids if i in by_id} for ids in group_ids]
    group_members = [set(ids) for ids in group_ids]
    out: dict[str, list[str]] = {}
    for ex in examples:
        eligible = [g for g, text in enumerate(instructions)
                    if text and ex.id not in group_members[g] and _norm(ex.prompt) not in group_prompts[g]
                    and not _leaks(ex, text)]
        if len(eligible) < k:
            raise ValueError(f"induced contexts: example {ex.id!r} can use only {len(eligible)} of "
                             f"{len(instructions)} instructions (groups that do not contain it, non-empty "
                             f"output); need k={k}. Raise count or lower k.")
        picks = random.Random(f"{seed}:{ex.id}").sample(eligible, k)
        out[ex.id] = [_instruction_context(instructions[g], ex) for g in picks]
    return out


BUILDERS: dict[str, Callable[..., dict[str, list[str]]]] = {
    "random": random_contexts,
    "retrieval": retrieval_contexts,
    "induced": induced_contexts,
}
"""Auxiliary-context builders by `AuxContextConfig.kind`; each is
fn(examples, *, k, seed, opts: AuxOptions) -> {example id: [K user-turn texts]}."""


def build_aux_contexts(examples: list[Example], *, kind: str, k: int, seed: int,
                       embedder: str = "all-MiniLM-L6-v2", cache_dir: str | os.PathLike | None = None,
                       generate: Generate | None = None, group_size: int = 3, count: int = 16,
                       embed_fn: EmbedFn | None = None, cache_key_extra: str = "") -> dict[str, list[str]]:
    """K auxiliary teacher contexts (user-turn texts) per example id.

    Args:
        examples: the training examples; ids must be unique. They are also the donor pool.
        kind: a key of `BUILDERS` ("random", "retrieval", "induced"); "none" returns {}.
        k: contexts per example (`AuxContextConfig.k`).
        seed: seeds donor draws, induction groups and instruction draws.
        embedder: retrieval embedder (packaged alias, hub id or local folder).
        cache_dir: where embeddings (.npy) and induced instructions (.json) are cached; None = no cache.
        generate: induced only: user-turn texts -> model outputs.
        group_size, count: induced only: demonstrations per group, instructions to write.
        embed_fn: retrieval only: replaces the embedder (texts -> [N, D] array); tests use it.
        cache_key_extra: induced only: identifies the writing model (its id / revision) in the cache key.

    Raises:
        KeyError: unknown kind. ValueError: duplicate ids, k < 1, too few eligible donors or
        instructions for some example (the message names it).
    """
    if kind == "none":
        return {}
    if kind not in BUILDERS:
        raise KeyError(f"unknown auxiliary context kind {kind!r}; valid kinds: none, {', '.join(BUILDERS)}")
    if k < 1:
        raise ValueError(f"auxiliary contexts: k must be >= 1, got {k}")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise ValueError("auxiliary contexts: example ids must be unique")
    opts = AuxOptions(embedder=embedder, embed_fn=embed_fn, cache_dir=cache_dir, generate=generate,
                      group_size=group_size, count=count, cache_key_extra=cache_key_extra)
    contexts = BUILDERS[kind](examples, k=k, seed=seed, opts=opts)
    for ex in examples:  # the invariant, checked on the output whatever the builder did
        suffix = ex.prompt
        for text in contexts[ex.id]:
            if _leaks(ex, text[:len(text) - len(suffix)]):
                raise RuntimeError(f"{kind} context of {ex.id!r} contains its own demonstration")
    return contexts
