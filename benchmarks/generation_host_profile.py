"""Where the host time of one FastGenerator call goes (GPU): cProfile of a warm `generate` call, the
top functions by cumulative time, and the CUDA-event split of the same call.

    PYTHONPATH=src python3 benchmarks/generation_host_profile.py [--batch 64] [--new 128] [--attention triton]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

from generation_bench import random_prompts, smollm2_135m_config
from unisd.generation.base import SamplingParams
from unisd.generation.fast import FastGenerator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--attention", nargs="*", default=["triton"])
    ap.add_argument("--no-graph-prefill", action="store_true")
    ap.add_argument("--top", type=int, default=45)
    args = ap.parse_args()
    from transformers import LlamaForCausalLM

    cfg = smollm2_135m_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    prompts = (random_prompts(64, 16, 64, cfg.vocab_size, seed=2) * (args.batch // 64 + 1))[:args.batch]
    gen = FastGenerator(attention=args.attention or None, graph_prefill=not args.no_graph_prefill)
    params = SamplingParams(max_new_tokens=args.new, temperature=0.0)

    def call():
        torch.cuda.synchronize()
        t = time.perf_counter()
        gen.generate(model, prompts, params, eos_token_ids=[], pad_token_id=cfg.pad_token_id)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(3):
        print(f"warm-up {call():.4f}s {gen.last_stats}", flush=True)
    print(f"timed {call():.4f}s {gen.last_stats}", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    wall = call()
    prof.disable()
    print(f"profiled {wall:.4f}s {gen.last_stats}")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.top)
    print(s.getvalue())
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
    print(s.getvalue())


if __name__ == "__main__":
    main()
