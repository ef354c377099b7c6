"""The Triton decode attention (unisd.generation.triton_attention) and how FastGenerator chooses it.

The kernel runs on the CPU through Triton's interpreter, which must be switched on before the
kernel is defined: `test_kernel_under_the_interpreter` reruns this file's `*_interpreted` tests in a
subprocess with TRITON_INTERPRET=1 (they skip in the main run). Needs the `triton` package (the
Makefile's test set-up installs it; torch's CPU wheel has none).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from unisd.generation import triton_attention
from unisd.generation.base import SamplingParams
from unisd.generation.fast import FastGenerator

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted_only = pytest.mark.skipif(not INTERPRETED, reason="run by test_kernel_under_the_interpreter")


def naive_attention(q, k, v, mask, scale):
    """float64: softmax(q kᵀ scale + mask) v per (row, KV head), mask [B or 1, 1, 1, L] additive or
    boolean; a row the mask hides entirely gives zeros."""
    q, k, v = q.double(), k.double(), v.double()
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, -math.inf)
    scores = q @ k.transpose(-1, -2) * scale + mask.double()[:, :, 0, :][:, :, None, :]
    return torch.nan_to_num(torch.softmax(scores, -1), nan=0.0) @ v


def test_kernel_under_the_interpreter():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("already inside the interpreted run")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__,
           "-k", "interpreted"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "skipped" not in proc.stdout.splitlines()[-1], tail  # every interpreted test ran


@interpreted_only
def test_hand_computed_value_interpreted():
    # one query, two visible keys: weights softmax([1, 0]) = [e, 1] / (e + 1); a third key is masked
    q = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]).reshape(1, 1, 3, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]).reshape(1, 1, 3, 2)
    mask = torch.tensor([True, True, False]).reshape(1, 1, 1, 3)
    e = math.e
    want = torch.tensor([(e * 1 + 3) / (e + 1), (e * 2 + 4) / (e + 1)])
    out = triton_attention.decode_attention(q, k, v, mask, scale=1.0)
    torch.testing.assert_close(out.reshape(2), want, rtol=1e-6, atol=1e-6)


@interpreted_only
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
@pytest.mark.parametrize("groups,head_dim,length", [(3, 64, 150), (1, 48, 64), (7, 16, 10), (2, 64, 256)])
def test_matches_float64_reference_interpreted(dtype, tol, groups, head_dim, length):
    g = torch.Generator().manual_seed(groups * 1000 + length)
    batch, kv_heads = 4, 2
    q = torch.randn(batch, kv_heads, groups, head_dim, generator=g)
    k = torch.randn(batch, kv_heads, length, head_dim, generator=g)
    v = torch.randn(batch, kv_heads, length, head_dim, generator=g)
    visible = torch.rand(batch, length, generator=g) > 0.4
    visible[0] = False
    visible[0, :3] = True                    # a row that sees only the first block's start
    visible[1] = False
    visible[1, length // 2:] = True           # a long left padding: whole blocks hidden
    visible[2] = False
    visible[2, -1] = True                     # only the newest position
    visible[3] = False                        # nothing: zeros, as torch's SDPA math path gives
    bool_mask = visible[:, None, None, :]
    float_mask = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, -math.inf)
    for mask in (bool_mask, float_mask.to(dtype)):
        for scale in (None, 0.3):
            s = head_dim ** -0.5 if scale is None else scale
            out = triton_attention.decode_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, scale)
            assert out.dtype == dtype and out.shape == q.shape
            want = naive_attention(q.to(dtype), k.to(dtype), v.to(dtype), bool_mask, s)
            torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    # one mask row for the whole batch (broadcast)
    shared = visible[:1, None, None, :] | torch.arange(length).eq(length - 1)
    out = triton_attention.decode_attention(q, k, v, shared)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, shared, head_dim ** -0.5), rtol=1e-5,
                               atol=1e-5)


@interpreted_only
def test_hidden_blocks_are_not_read_interpreted():
    # NaN in every block the mask hides entirely (the static cache's unwritten tail): a kernel that
    # read them would give NaN (0 * NaN); positions 0..99 visible, blocks of 64 from 128 on hidden
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 3, 16, generator=g), torch.randn(2, 1, 256, 16, generator=g),
               torch.randn(2, 1, 256, 16, generator=g))
    mask = (torch.arange(256) < 100).reshape(1, 1, 1, 256).expand(2, 1, 1, 256)
    want = naive_attention(q, k, v, mask, 0.25)
    k[:, :, 128:], v[:, :, 128:] = float("nan"), float("nan")
    out = triton_attention.decode_attention(q, k, v, mask, 0.25)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


@interpreted_only
@pytest.mark.parametrize("block_n", [16, 64])
def test_hidden_slots_are_not_read_interpreted(block_n):
    # NaN in every slot the mask hides, including those inside blocks that are partly visible (a left
    # padding that ends mid-block, random holes): the kernel's loads are predicated per slot, so no
    # NaN reaches the result (reading them would give NaN + -inf = NaN scores, and 0 * NaN in p·V)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, 2, 3, 16, generator=g), torch.randn(3, 2, 100, 16, generator=g),
               torch.randn(3, 2, 100, 16, generator=g))
    visible = torch.rand(3, 100, generator=g) > 0.5
    visible[0, :37] = False  # a left padding ending mid-block
    mask = visible[:, None, None, :]
    want = naive_attention(q, k, v, mask, 0.25)
    hidden = ~visible[:, None, :, None].expand_as(k)
    k[hidden], v[hidden] = float("nan"), float("nan")
    out = triton_attention.decode_attention(q, k, v, mask, 0.25, block_n=block_n)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_launch_settings_are_valid():
    # whatever the shape, the chosen block is a power of two >= 16 and the warps a power of two <= 8
    for programs in (1, 48, 192, 768, 6144):
        for length in (16, 128, 256, 1024, 4096):
            block_n, warps = triton_attention.launch_settings(programs, length)
            assert block_n >= 16 and block_n & (block_n - 1) == 0
            assert warps in (1, 2, 4, 8)


@interpreted_only
def test_generator_decodes_with_the_kernel_interpreted():
    from test_generation import GREEDY, PAD, _tiny_llama, fast_gen, naive_greedy

    model = _tiny_llama()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (3, 7, 5, 1, 9)]
    calls = []
    real = triton_attention._grouped_decode_attention

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    triton_attention._grouped_decode_attention = counting
    try:
        gen = fast_gen()  # default: the kernel, since it can run here
        assert gen._decode_attention(torch.device("cpu")) == ("triton",)
        out = gen.generate(model, prompts, GREEDY, eos_token_ids=[], pad_token_id=PAD)
    finally:
        triton_attention._grouped_decode_attention = real
    assert out == naive_greedy(model, prompts, 16, eos=[])
    assert len(calls) == 15 * 2  # every decode step after the prompt pass, both layers


def test_default_attention_choice(monkeypatch):
    cpu = torch.device("cpu")
    for runs in (True, False):
        monkeypatch.setattr(triton_attention, "available", lambda device, runs=runs: runs)
        assert FastGenerator()._decode_attention(cpu) == (("triton",) if runs else None)
        assert FastGenerator(attention=[])._decode_attention(cpu) is None  # torch's SDPA choice
        assert FastGenerator(attention=["flex"])._decode_attention(cpu) == ("flex",)
    with pytest.raises(ValueError, match="give it alone"):
        FastGenerator(attention=["triton", "cudnn"])


def test_triton_choice_without_triton_keeps_sdpa(monkeypatch):
    from test_generation import GREEDY, PAD, _tiny_llama, fast_gen, naive_greedy

    monkeypatch.setattr(triton_attention, "available", lambda device: False)
    model = _tiny_llama()
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12]]
    out = fast_gen(attention=["triton"]).generate(model, prompts, GREEDY, eos_token_ids=[], pad_token_id=PAD)
    assert out == naive_greedy(model, prompts, 16, eos=[])
    if triton_attention.triton is None:
        with pytest.raises(RuntimeError, match="needs Triton"):
            kv = torch.zeros(1, 1, 2, 16)
            triton_attention.decode_attention(torch.zeros(1, 1, 1, 16), kv, kv,
                                              torch.ones(1, 1, 1, 2, dtype=torch.bool))


@interpreted_only
@pytest.mark.parametrize("block_n,num_warps", [(16, 2), (128, 8)])
def test_launch_settings_give_the_same_result_interpreted(block_n, num_warps):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, 2, 3, 32, generator=g), torch.randn(3, 2, 200, 32, generator=g),
               torch.randn(3, 2, 200, 32, generator=g))
    mask = torch.rand(3, 1, 1, 200, generator=g) > 0.5
    mask[..., -1] = True
    out = triton_attention.decode_attention(q, k, v, mask, 0.2, block_n=block_n, num_warps=num_warps)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, mask, 0.2), rtol=1e-5, atol=1e-5)


@interpreted_only
@pytest.mark.parametrize("splits", [2, 3, 8])
def test_split_cache_gives_the_same_result_interpreted(splits):
    # the cache divided among `splits` programs per row (a split may see nothing: the combine gives it
    # no weight), including a row that sees nothing at all, and NaN in blocks no row sees
    g = torch.Generator().manual_seed(splits)
    q, k, v = (torch.randn(4, 2, 3, 32, generator=g), torch.randn(4, 2, 300, 32, generator=g),
               torch.randn(4, 2, 300, 32, generator=g))
    visible = torch.rand(4, 300, generator=g) > 0.5
    visible[:, 256:] = False
    visible[1] = False
    visible[1, 5] = True          # one slot: every other split of this row sees nothing
    visible[2] = False            # nothing at all: zeros
    mask = visible[:, None, None, :]
    want = naive_attention(q, k, v, mask, 0.2)
    k[:, :, 256:], v[:, :, 256:] = float("nan"), float("nan")
    out = triton_attention.decode_attention(q, k, v, mask, 0.2, block_n=32, splits=splits)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    assert out[2].abs().max() == 0


def test_block_size_is_checked():
    pytest.importorskip("triton")
    x = torch.zeros(1, 1, 1, 16)
    keep = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="power of two >= 16"):
        triton_attention.decode_attention(x, x, x, keep, block_n=48)
    with pytest.raises(ValueError, match="splits must be >= 1"):
        triton_attention.decode_attention(x, x, x, keep, splits=0)
