"""The one-token grouped decode attention alone, on GPU: torch's SDPA backends, FlexAttention and
unisd's Triton kernel over its launch settings (block size, warps, cache splits), each timed as 100
calls replayed from one CUDA graph (as the decode step runs them; launch overhead excluded). Prints
a table, writes JSON; each row's `max_abs_diff_vs_first` compares its output with the first
contender's (torch's SDPA choice).

`--layers N` (N > 1) times what the decode step sees: each call reads another of N caches (one per
layer), so the cache is not in L2 from the call before. With one cache (the default, and the
2026-11-29 measurements) every replayed call reads the same K/V, which stays in the H200's 50 MB L2
at these sizes and hides the memory latency a real step pays.

Shapes follow SmolLM2-135M's decoding (3 KV heads, 3 query heads per KV head, head dim 64) with a
static cache of L slots of which each row sees a left-padded prompt and the tokens so far (the
mask hides the rest), at a few batch sizes and cache lengths.

    PYTHONPATH=src python3 benchmarks/decode_attention_bench.py --out OUT [--batch 64 256] [--length 256 1024]
        [--layers 30] [--only-triton]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from unisd.generation import triton_attention

KV_HEADS, GROUPS, HEAD_DIM = 3, 3, 64
REPLAYS = 100


def inputs(batch: int, length: int, seen: int, device: str, dtype: torch.dtype, seed: int = 0):
    """q [B, 3, 3, 64], K/V [B, 3, L, 64], an additive mask [B, 1, 1, L]: row b sees slots
    pad_b .. seen - 1 (pad_b < 48 and < seen, its left padding)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(batch, KV_HEADS, GROUPS, HEAD_DIM, generator=g).to(device, dtype)
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, generator=g).to(device, dtype)
    v = torch.randn(batch, KV_HEADS, length, HEAD_DIM, generator=g).to(device, dtype)
    pad = torch.randint(0, min(48, seen), (batch, 1), generator=g)
    slots = torch.arange(length)[None, :]
    visible = (slots >= pad) & (slots < seen)
    mask = torch.zeros(batch, 1, 1, length).masked_fill(~visible[:, None, None, :], float("-inf"))
    return q, k, v, mask.to(device, dtype)


def contenders(on_cuda: bool, only_triton: bool = False) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(backends):
        def run(q, k, v, mask):
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return run

    out = {"sdpa_default": lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)}
    if on_cuda and not only_triton:
        out["sdpa_cudnn"] = sdpa([SDPBackend.CUDNN_ATTENTION])
        out["sdpa_efficient"] = sdpa([SDPBackend.EFFICIENT_ATTENTION])
    if not only_triton:
        out["sdpa_math"] = sdpa([SDPBackend.MATH])
    if triton_attention.available(torch.device("cuda" if on_cuda else "cpu")):
        for block_n in (16, 32, 64, 128, 256, 512):
            for warps in (1, 2, 4, 8) if block_n < 512 else (4, 8):
                out[f"triton_n{block_n}_w{warps}"] = (
                    lambda q, k, v, mask, b=block_n, w=warps:
                    triton_attention.decode_attention(q, k, v, mask, block_n=b, num_warps=w))
        out["triton_auto"] = lambda q, k, v, mask: triton_attention.decode_attention(q, k, v, mask)
        for splits in (2, 4, 8):  # flash-decoding: each row's cache divided among programs
            out[f"triton_n64_w4_s{splits}"] = (
                lambda q, k, v, mask, s=splits:
                triton_attention.decode_attention(q, k, v, mask, block_n=64, num_warps=4, splits=s))
    if on_cuda and not only_triton:
        from torch.nn.attention.flex_attention import flex_attention

        compiled = torch.compile(flex_attention)

        def flex(q, k, v, mask):
            bias = mask[:, 0, 0, :]
            return compiled(q, k, v, score_mod=lambda s, b, h, qi, kv: s + bias[b, kv])
        out["flex_compiled"] = flex
    return out


def time_graphed(fn, args, caches=None) -> float:
    """Microseconds per call: REPLAYS calls captured in one CUDA graph, replayed. With `caches` (a
    list of (K, V)), call i reads caches[i % len(caches)] instead of the K/V in `args`."""
    q, k, v, mask = args

    def call(i: int):
        kk, vv = (k, v) if caches is None else caches[i % len(caches)]
        return fn(q, kk, vv, mask)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            call(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(REPLAYS):
            call(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * REPLAYS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--length", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=1,
                    help="distinct K/V caches the replayed calls cycle through (30: a decode step's layers)")
    ap.add_argument("--only-triton", action="store_true",
                    help="torch's SDPA choice and the Triton kernel only")
    args = ap.parse_args()
    on_cuda = args.device == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    res = {"env": {"torch": torch.__version__, "python": platform.python_version(),
                   "gpu": torch.cuda.get_device_name(0) if on_cuda else "none"},
           "shape": {"kv_heads": KV_HEADS, "groups": GROUPS, "head_dim": HEAD_DIM, "dtype": str(dtype)},
           "layers": args.layers,
           "rows": []}
    for batch in args.batch:
        for length in args.length:
            seen = length // 2 + 1  # half-way through decoding: the rest of the cache is hidden
            q, k, v, mask = inputs(batch, length, seen, args.device, dtype)
            caches = None
            if args.layers > 1:  # the same values in fresh memory per layer (so outputs still compare)
                caches = [(k.clone(), v.clone()) for _ in range(args.layers)]
            want = None
            for name, fn in contenders(on_cuda, args.only_triton).items():
                row = {"name": name, "batch": batch, "length": length, "seen": seen}
                try:
                    out = fn(q, k, v, mask)
                    want = out.float() if want is None else want
                    row["max_abs_diff_vs_first"] = round(float((out.float() - want).abs().max()), 5)
                    if on_cuda:
                        row["us_per_call"] = round(time_graphed(fn, (q, k, v, mask), caches), 2)
                except Exception as err:  # noqa: BLE001 - a backend that cannot take these inputs
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                res["rows"].append(row)
                print(row, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "decode_attention.json" if args.layers == 1 else f"decode_attention_layers{args.layers}.json"
    (Path(args.out) / name).write_text(json.dumps(res, indent=2))
    print(f"\n{'contender':<22}{'batch':>6}{'L':>6}{'us/call':>10}")
    for r in res["rows"]:
        us = r.get("us_per_call", r.get("error", "-"))
        print(f"{r['name']:<22}{r['batch']:>6}{r['length']:>6}{us!s:>10}")


if __name__ == "__main__":
    main()
