"""The one generator contract: token ids in, completion token ids out.

Backends (HF `generate`, the fast static-cache sampler, vLLM) implement `Generator`. They take
already-tokenized prompts (no chat templating here) and return, per prompt, the sampled
completion ids up to and including the first EOS (if one was produced within the limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    """Longest completion."""
    temperature: float = 1.0
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus threshold (1.0 = off)."""


class Generator(Protocol):
    def generate(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 eos_token_ids: Sequence[int], pad_token_id: int,
                 rng: torch.Generator | None = None) -> list[list[int]]:
        """Sample one completion per prompt. Prompts are left-padded internally. Each returned
        list stops at (and includes) the first EOS, or has `max_new_tokens` ids."""
        ...
