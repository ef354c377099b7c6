"""Helpers shared by the generator backends: argument checks, left padding, seeding, EOS cutting.

Nothing here runs a model; each backend does its own decoding.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from unisd.generation.base import SamplingParams


def check_params(params: SamplingParams, prompts: Sequence[Sequence[int]]) -> None:
    """Raise ValueError naming the bad field."""
    if params.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An attention mask as scores to add: a boolean one (True = attend) as 0 / -inf in `dtype`, an
    additive one unchanged."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device,
             *, rows: int | None = None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts into `(ids, mask)`, both [rows, P] long, P = `width` (default and at least:
    the longest prompt).

    Rows past `len(prompts)` (when `rows` is larger) are filler: one pad token, attended to, so no
    query row is fully masked; callers mark them finished and drop their output.
    """
    rows = len(prompts) if rows is None else rows
    width = max([len(p) for p in prompts] + [width or 0])
    ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    mask[len(prompts):, -1] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """What HF `generate` uses: mask.cumsum - 1, with pad positions set to 0 ([B, P] long)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def cut_at_eos(ids: Sequence[int], eos_token_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Completion up to and including the first EOS, at most `max_new_tokens` ids."""
    eos = set(eos_token_ids)
    out: list[int] = []
    for tok in list(ids)[:max_new_tokens]:
        out.append(int(tok))
        if tok in eos:
            break
    return out


def draw_seed(rng: torch.Generator) -> int:
    """One 62-bit seed from `rng` (CPU or CUDA generator); advances `rng`."""
    return int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item())


@contextlib.contextmanager
def seeded(rng: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run the body with the global CPU and `device` RNGs seeded from `rng`, restoring them after.

    HF `generate` and CUDA-graph replays draw from the global (default) generators, not from a
    `torch.Generator` argument, so reproducibility comes from seeding those. `rng=None` leaves the
    global state alone (and unrestored), like HF.
    """
    if rng is None:
        yield
        return
    seed = draw_seed(rng)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[device.index if device.index is not None
                                          else torch.cuda.current_device()].manual_seed(seed)
        yield
