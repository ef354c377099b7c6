"""A Triton kernel for the one-token decode attention with grouped KV heads (`attention=["triton"]`).

At batch 64 on an H200, cuDNN's SDPA kernel took 12.9 us per layer for this attention plus a
0.7 us memset (over a quarter of SmolLM2's 1.43 ms decode step): its 64-row query tiles hold 3
query rows, and every step reads the whole static cache. This kernel (6.6 us per layer there, with
the launch settings of `launch_settings`; docs/benchmarks.md, session 7) runs one program per
(row, KV head): the query heads that share the KV head are the rows of one small dot product, the
cache is read in blocks with an online softmax, blocks the mask hides entirely (the static cache's
unwritten tail, a long left padding) are skipped, and within a block only visible slots are read.

`decode_attention` calls a `torch.library.triton_op`, so torch.compile places the kernel inside the
compiled decode step (and its CUDA graph) instead of breaking the graph. Without Triton (the CPU
wheel of torch) `available()` is False and callers keep SDPA. With `TRITON_INTERPRET=1` set before
this module is imported, the kernel runs on CPU tensors through Triton's interpreter (how the tests
check it; far too slow for real decoding). Not here: when the kernel is used (`unisd.generation.
attention`), the decode loop (`unisd.generation.fast`).
"""

from __future__ import annotations

import os

import torch

from unisd.generation._util import additive_mask

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # the CPU wheel of torch comes without Triton
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """Can the kernel run on tensors of `device`? (CUDA with Triton, or Triton's CPU interpreter.)"""
    if triton is None:
        return False
    return device.type == "cuda" or (INTERPRET and device.type == "cpu")


if triton is not None:

    @triton.jit
    def _grouped_decode_kernel(Q, K, V, Bias, Out, Part, Max, Sum, scale,
                               sqb, sqh, sqg, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sbb, sbl,
                               sob, soh, sog, sod,
                               L: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr,
                               BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
                               SPLIT_BLOCKS: tl.constexpr, UPCAST: tl.constexpr):
        # one program per (row b, KV head h, split s); q [G, D] (padded to BLOCK_G x BLOCK_D); split s
        # reads the cache's blocks s * SPLIT_BLOCKS ... in blocks of BLOCK_N slots. L (the static
        # cache length) is a compile-time constant. With one split the result goes to Out; with more,
        # each split's normalised output, running max and sum go to Part [B, H, S, G, D], Max and
        # Sum [B, H, S, G] (float32, contiguous), combined afterwards.
        b = tl.program_id(0)
        h = tl.program_id(1)
        split = tl.program_id(2)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        g_ok = offs_g < G
        d_ok = offs_d < D
        q = tl.load(Q + b * sqb + h * sqh + offs_g[:, None] * sqg + offs_d[None, :] * sqd,
                    mask=g_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:  # float32 inputs: exact float32 products (the default would round to TF32)
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for i in range(SPLIT_BLOCKS):
            n = (split * SPLIT_BLOCKS + i) * BLOCK_N + offs_n
            n_ok = n < L
            bias = tl.load(Bias + b * sbb + n * sbl, mask=n_ok, other=float("-inf")).to(tl.float32)
            if tl.max(bias, axis=0) > float("-inf"):  # else the mask hides the whole block: skip its K/V
                # only visible slots are read (predicated loads: no memory traffic for the rest), and
                # V is requested with K, so a block costs one memory round trip, not two
                seen = (n_ok & (bias > float("-inf")))[:, None] & d_ok[None, :]
                k = tl.load(K + b * skb + h * skh + n[:, None] * skl + offs_d[None, :] * skd,
                            mask=seen, other=0.0)
                v = tl.load(V + b * svb + h * svh + n[:, None] * svl + offs_d[None, :] * svd,
                            mask=seen, other=0.0)
                if UPCAST:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision="ieee" if UPCAST else None)
                # float32 throughout (inside a compiled graph the scale can arrive as a float64 scalar)
                s = (s * scale).to(tl.float32) + bias[None, :]
                m_new = tl.maximum(m_i, tl.max(s, axis=1))
                alpha = tl.exp(m_i - m_new)  # m_i = -inf on a row's first visible block: alpha 0
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, axis=1)
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee" if UPCAST else None)
                acc = acc * alpha[:, None] + pv
                m_i = m_new
        # a row that sees nothing gives zeros, as torch's SDPA math path does,
        # rather than 0/0
        out = tl.where(l_i[:, None] > 0, acc / tl.maximum(l_i[:, None], 1e-30), 0.0)
        if SPLITS == 1:
            tl.store(Out + b * sob + h * soh + offs_g[:, None] * sog + offs_d[None, :] * sod,
                     out.to(Out.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
        else:
            row = (b * tl.num_programs(1) + h) * SPLITS + split  # index into [B, H, S]
            tl.store(Part + (row * G + offs_g[:, None]) * D + offs_d[None, :], out,
                     mask=g_ok[:, None] & d_ok[None, :])
            tl.store(Max + row * G + offs_g, m_i, mask=g_ok)
            tl.store(Sum + row * G + offs_g, l_i, mask=g_ok)

    @triton_op("unisd::grouped_decode_attention", mutates_args=())
    def _grouped_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  bias: torch.Tensor, scale: float, block_n: int = 64,
                                  num_warps: int = 1, splits: int = 1) -> torch.Tensor:
        batch, kv_heads, groups, head_dim = query.shape
        length = key.shape[2]
        blocks = triton.cdiv(length, block_n)
        split_blocks = triton.cdiv(blocks, splits)
        splits = triton.cdiv(blocks, split_blocks)  # no empty split
        out = torch.empty_like(query)
        f32 = dict(dtype=torch.float32, device=query.device)
        part = top = total = out  # unused with one split
        if splits > 1:
            part = torch.empty(batch, kv_heads, splits, groups, head_dim, **f32)
            top = torch.empty(batch, kv_heads, splits, groups, **f32)
            total = torch.empty(batch, kv_heads, splits, groups, **f32)
        wrap_triton(_grouped_decode_kernel)[(batch, kv_heads, splits)](
            query, key, value, bias, out, part, top, total, scale,
            *query.stride(), *key.stride(), *value.stride(), *bias.stride(), *out.stride(),
            L=length, G=groups, D=head_dim, BLOCK_G=max(16, triton.next_power_of_2(groups)),
            BLOCK_D=max(16, triton.next_power_of_2(head_dim)),  # tl.dot takes dims of 16 and more
            BLOCK_N=block_n, SPLITS=splits, SPLIT_BLOCKS=split_blocks, UPCAST=query.dtype == torch.float32,
            num_warps=num_warps)
        if splits == 1:
            return out
        # combine the splits: weights exp(max_s - max) * sum_s (0 for a split that saw nothing)
        best = top.amax(dim=2, keepdim=True)
        best = torch.where(torch.isinf(best), torch.zeros_like(best), best)
        weight = torch.exp(top - best) * total  # [B, H, S, G]
        norm = weight.sum(dim=2).unsqueeze(-1)  # [B, H, G, 1]
        mixed = (weight.unsqueeze(-1) * part).sum(dim=2) / norm.clamp_min(1e-30)
        return torch.where(norm > 0, mixed, torch.zeros_like(mixed)).to(query.dtype)


FEW_PROGRAMS = 256
"""At most this many (row, KV head) programs (about two per SM on an H200's 132): large blocks, 4 warps."""


def launch_settings(programs: int, length: int) -> tuple[int, int]:
    """(block_n, num_warps) for `programs` (rows x KV heads) programs over a cache of `length` slots.

    Measured on an H200 with each call reading another layer's cache, as a decode step does
    (`benchmarks/decode_attention_bench.py --layers 30`, 2026-11-29; docs/benchmarks.md): with few
    programs the kernel waits on memory, and blocks of 256 slots read by 4 warps (more loads in
    flight per program, fewer round trips) took 34-51% less time than blocks of 64 with one warp
    (batch 16 and 64, cache 256 and 1024: e.g. 6.2 against 9.4 us at batch 64, cache 256). With many
    programs (batch 256: 768) blocks of 64 with one warp were the fastest setting measured (12.5 us
    against 13.3 at cache 256, 37.9 against 47.5 at 1024): the SMs are full, and small blocks skip
    more of the hidden cache.
    """
    if programs <= FEW_PROGRAMS:
        return min(256, max(16, 1 << (max(1, length) - 1).bit_length())), 4
    return 64, 1


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scale: float | None = None, *, block_n: int | None = None, num_warps: int | None = None,
                     splits: int = 1) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v for one query token per row, the query heads grouped per KV head.

    query [B, H_kv, G, D]; key, value [B, H_kv, L, D]; mask [B, 1, 1, L] (additive float, or boolean:
    True = attend), as SDPA takes it. Returns [B, H_kv, G, D] in the query's dtype; zeros for a row
    the mask hides entirely (as torch's SDPA math path gives). `block_n` (cache slots
    per block, a power of two >= 16), `num_warps` and `splits` are the kernel's launch settings;
    `block_n` and `num_warps` default to `launch_settings` for this shape. Splits only added time at
    the shapes measured (batch 64/256 x cache 256/1024). `splits` > 1 divides each
    row's cache among that many programs (flash-decoding), whose partial results are then combined:
    more parallel work for long caches or few rows, at the price of a second pass.
    """
    auto_block, auto_warps = launch_settings(query.shape[0] * query.shape[1], key.shape[2])
    block_n = auto_block if block_n is None else block_n
    num_warps = auto_warps if num_warps is None else num_warps
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if triton is None:
        raise RuntimeError("the Triton decode attention needs Triton (the CPU wheel of torch has none)")
    mask = additive_mask(mask, query.dtype)
    bias = mask.reshape(mask.shape[0], mask.shape[-1]).expand(query.shape[0], key.shape[2])
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return _grouped_decode_attention(query, key, value, bias, float(scale), block_n, num_warps, splits)
