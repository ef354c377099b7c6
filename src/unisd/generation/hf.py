"""The reference backend: transformers' `model.generate`, with every sampling knob set explicitly.

Explicit because `generate` fills unset fields from the model's `generation_config` and then from
global defaults (`top_k=50`, for one), which would silently change the distribution. Works for
peft-wrapped models (their `generate` forwards to the base model with adapters active).
"""

from __future__ import annotations

from typing import Sequence

import torch

from unisd.generation._util import check_params, cut_at_eos, left_pad, model_device, seeded
from unisd.generation.base import SamplingParams


class HFGenerator:
    """`Generator` over `model.generate`.

    Args:
        cache_implementation: passed to `generate` ("static" for HF's compiled static-cache path);
            None keeps the default dynamic cache.

    Seeding: `generate` takes no `torch.Generator`, so a given `rng` is used to draw one seed for the
    global CPU and device RNGs, which are restored afterwards (see `_util.seeded`).
    """

    def __init__(self, *, cache_implementation: str | None = None):
        self.cache_implementation = cache_implementation

    def generate(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 eos_token_ids: Sequence[int], pad_token_id: int,
                 rng: torch.Generator | None = None) -> list[list[int]]:
        if not prompts:
            return []
        check_params(params, prompts)
        device = model_device(model)
        input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
        do_sample = params.temperature > 0
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=do_sample, num_beams=1,
                      repetition_penalty=1.0, pad_token_id=pad_token_id)
        if do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)  # 0: no top-k
        else:  # unset so `generate` does not warn that they are ignored
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if eos_token_ids:
            kwargs["eos_token_id"] = list(eos_token_ids)
        else:  # no stop tokens: otherwise `generate` would fall back to the model's own EOS
            kwargs["min_new_tokens"] = params.max_new_tokens
        if self.cache_implementation is not None:
            kwargs["cache_implementation"] = self.cache_implementation
        with seeded(rng, device), torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        completions = out[:, input_ids.shape[1]:].tolist()
        return [cut_at_eos(row, eos_token_ids, params.max_new_tokens) for row in completions]
