"""The one-token decode attention `FastGenerator` switches HF models to while it decodes.

`GROUPED_SDPA` is registered with transformers' AttentionInterface: "sdpa" everywhere, except
one-token decoding with grouped KV heads and a padding mask, where the query heads that share a KV
head are laid along SDPA's query-length axis instead of HF materialising K/V per query head. Which
kernel runs that attention can be chosen per call (`decode_backends`): torch's SDPA choice, a
restricted set of SDPA backends, FlexAttention (`flex_decode`) or a Triton kernel
(`unisd.generation.triton_attention`; SDPA where Triton cannot run).

Not here: the decode loop, caches and graphs (`unisd.generation.fast`), the fused projections
(`unisd.generation.fused`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from unisd.generation import triton_attention
from unisd.generation._util import additive_mask

GROUPED_SDPA = "unisd_grouped_sdpa"
"""Attention implementation name FastGenerator switches "sdpa" models to while it decodes."""


def register_grouped_sdpa() -> None:
    """Register `GROUPED_SDPA` with transformers (idempotent): attention as "sdpa" everywhere, except
    one-token decoding with grouped KV heads and a mask, which skips HF's `repeat_kv`.

    With a mask (needed for left padding and the static cache's unwritten slots), HF's sdpa path cannot
    use SDPA's `enable_gqa` and instead materialises K and V for every query head: [B, H, L, D] per
    layer per step, several times the KV cache in memory traffic. For one query token the query heads
    sharing a KV head can instead be laid along SDPA's query-length axis: q [B, H_kv, G, D] against
    K/V [B, H_kv, L, D] - the same dot products and softmax, no copy.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    if GROUPED_SDPA in AttentionInterface._global_mapping:
        return

    def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     **kwargs):
        batch, heads, q_len, head_dim = query.shape
        kv_heads = key.shape[1]
        special = any(kwargs.get(k) is not None
                      for k in ("softcap", "sliding_window", "position_bias", "s_aux", "sinks"))
        if q_len != 1 or kv_heads == heads or attention_mask is None or special:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, **kwargs)
        # query head h uses KV head h // G (HF's repeat_kv order), so [B, H, 1, D] -> [B, H_kv, G, D]
        grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
        # _DECODE_BACKENDS is a module global: torch.compile guards on it, so a new choice retraces
        if _DECODE_BACKENDS == ("triton",) and triton_attention.available(query.device):
            out = triton_attention.decode_attention(grouped, key, value, attention_mask, scaling)
        elif _DECODE_BACKENDS == ("flex",):
            out = flex_decode(grouped, key, value, attention_mask, scaling)
        elif _DECODE_BACKENDS and _DECODE_BACKENDS != ("triton",):  # (Triton missing: torch's choice)
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(list(_DECODE_BACKENDS)):
                out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask,
                                                                       dropout_p=dropout, scale=scaling)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask,
                                                                   dropout_p=dropout, scale=scaling)
        return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None  # [B, 1, H, D]

    def decode_float_mask(*args, **kwargs):
        """sdpa's boolean mask; for one-token decoding converted once per forward to the additive float
        mask SDPA would otherwise build from it in every layer (same values: 0 or -inf)."""
        mask = sdpa_mask(*args, **kwargs)
        dtype = kwargs.get("dtype")
        if mask is None or kwargs.get("q_length") != 1 or dtype is None:
            return mask
        return additive_mask(mask, dtype)

    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, decode_float_mask)


@contextlib.contextmanager
def grouped_attention(base: torch.nn.Module) -> Iterator[None]:
    """Switch an "sdpa" model to `GROUPED_SDPA` for the duration (restored even on errors)."""
    config = base.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    register_grouped_sdpa()
    config._attn_implementation = GROUPED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math", "flex", "triton")
STANDALONE_BACKENDS = ("flex", "triton")
"""Backends that replace SDPA, given alone."""
_DECODE_BACKENDS: tuple = ()
"""SDPA backends (torch.nn.attention.SDPBackend) the one-token decode attention may use, or ("flex",)
for FlexAttention, or ("triton",) for the Triton kernel; () leaves the choice to torch. Set by
`decode_backends` while a FastGenerator decodes."""


def flex_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                 scale: float | None) -> torch.Tensor:
    """The grouped decode attention through FlexAttention (compiled, its split-KV decoding kernel):
    query [B, H_kv, G, D] against key/value [B, H_kv, L, D], the padding mask [B, 1, 1, L] (additive
    float or boolean) added to the scores."""
    from torch.nn.attention.flex_attention import flex_attention

    bias = additive_mask(mask, query.dtype)[:, 0, 0, :]  # [B, L]

    def add_mask(score, b, h, q_idx, kv_idx):
        return score + bias[b, kv_idx]

    return flex_attention(query, key, value, score_mod=add_mask, scale=scale)


@contextlib.contextmanager
def decode_backends(names: Sequence[str] | None) -> Iterator[None]:
    """Restrict the grouped decode attention to `names` (plus math, which takes any input) for the
    duration; None: torch's choice. The prompt pass is not affected."""
    global _DECODE_BACKENDS
    if not names:
        yield
        return
    from torch.nn.attention import SDPBackend

    standalone = [n for n in names if n in STANDALONE_BACKENDS]
    if standalone:  # alone (checked by FastGenerator)
        chosen: tuple = (standalone[0],)
    else:
        enum = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        chosen = tuple(dict.fromkeys([*(enum[n] for n in names), SDPBackend.MATH]))
    saved, _DECODE_BACKENDS = _DECODE_BACKENDS, chosen
    try:
        yield
    finally:
        _DECODE_BACKENDS = saved
