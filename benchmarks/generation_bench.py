"""Generation throughput and greedy parity on GPU: HF generate (default and static cache) vs FastGenerator.

The model is randomly initialised with SmolLM2-135M's exact architecture (the GPU box has no hub
access); speed does not depend on weight values, and greedy parity on random weights is still a
valid check of positions, masks and cache handling. Parity is checked in float32 (in bf16 the
compiled forward rounds differently from eager, so near-ties on random weights flip; the bf16 match
rate is reported for information). Throughput: bf16, every row decodes exactly `--new` tokens
(no EOS), tokens/s = rows * new / wall time of one `generate` call after two warm-up calls (one for HF).

    PYTHONPATH=src python3 benchmarks/generation_bench.py --out results_dir
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from unisd.bench import measure_ceilings
from unisd.generation.base import SamplingParams
from unisd.generation.fast import FastGenerator
from unisd.generation.hf import HFGenerator


def smollm2_135m_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                       max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0,
                       pad_token_id=2)


def random_prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(10, vocab, (k,), generator=g).tolist() for k in lengths]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=420, help="skip remaining sections past this")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip-hf", action="store_true",
                    help="skip the HF baselines (measured in an earlier run)")
    ap.add_argument("--skip-parity", action="store_true", help="skip the float32 greedy parity section")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model, to dry-run this script on CPU")
    ap.add_argument("--sections", nargs="+", metavar="NAME",
                    help="run only these sections, in this script's order (names as printed)")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    import transformers

    res: dict = {"env": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
                         "python": platform.python_version()},
                 "model": "random init, SmolLM2-135M architecture", "new_tokens": args.new, "errors": {}}

    def save() -> None:
        (out_dir / "generation.json").write_text(json.dumps(res, indent=2))

    def section(name, fn) -> None:
        if args.sections and name not in args.sections:
            return
        if time.perf_counter() - t_start > args.budget_s:
            res["errors"][name] = "skipped: time budget"
            print(f"[{name}] skipped (budget)", flush=True)
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - record and go on to the next section
            res["errors"][name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"
            print(f"[{name}] FAILED: {err}", flush=True)
        print(f"[{name}] {time.perf_counter() - t0:.1f}s", flush=True)
        save()

    cfg = smollm2_135m_config()
    if args.tiny:
        cfg.num_hidden_layers, cfg.vocab_size = 2, 512
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).eval()
    pad = cfg.pad_token_id
    greedy = SamplingParams(max_new_tokens=args.new, temperature=0.0)
    on_cuda = torch.device(args.device).type == "cuda"

    # ----- (b) greedy parity, float32, 32 prompts, an EOS that stops some rows early ------------
    def parity_fp32() -> None:
        prompts = random_prompts(32, 8, 48, cfg.vocab_size, seed=1)
        params = SamplingParams(max_new_tokens=64, temperature=0.0)
        free = HFGenerator().generate(model, prompts, params, eos_token_ids=[], pad_token_id=pad)
        # up to 8 stop ids that end as many rows as possible mid-way (greedy set cover), so finished-row
        # handling and batch compaction are exercised; a few rows still run to the limit
        stops: list[int] = []
        uncovered = set(range(24))
        while len(stops) < 8 and uncovered:
            counts: dict[int, int] = {}
            for i in uncovered:
                for tok in set(free[i][4:48]):
                    counts[tok] = counts.get(tok, 0) + 1
            tok = max(counts, key=counts.get)
            stops.append(tok)
            uncovered -= {i for i in uncovered if tok in free[i][4:48]}
        hf = HFGenerator().generate(model, prompts, params, eos_token_ids=stops, pad_token_id=pad)
        entry = {"prompts": 32, "max_new_tokens": 64, "eos": stops,
                 "rows_stopped_early": sum(len(r) < 64 for r in hf)}
        compiled = FastGenerator(compile=on_cuda or None)
        triton = FastGenerator(compile=on_cuda or None, attention=["triton"])
        for name, gen in (("compiled_graph", compiled), ("compiled_graph_triton_attention", triton),
                          ("eager_graph", FastGenerator(compile=False))):
            t0 = time.perf_counter()
            ours = gen.generate(model, prompts, params, eos_token_ids=stops, pad_token_id=pad)
            entry[name] = {"identical_rows": sum(a == b for a, b in zip(ours, hf)),
                           "all_identical": ours == hf,
                           "first_call_s": round(time.perf_counter() - t0, 1), "stats": gen.last_stats}
            # the prompt pass runs eagerly on a width's first call, is captured on the second and
            # replayed on the third: the later calls must give the same rows
            later = []
            for _ in range(2):
                later.append(gen.generate(model, prompts, params, eos_token_ids=stops, pad_token_id=pad))
                captured = gen.last_stats.get("graphs_captured")
                entry[name].setdefault("graphs_captured_calls_2_3", []).append(captured)
            entry[name]["calls_2_3_identical_rows"] = [sum(a == b for a, b in zip(o, hf)) for o in later]
        # rows that stop + a few that do not: most rows finish, so the batch is compacted mid-way
        covered = [i for i in range(24) if i not in uncovered and any(t in free[i][4:48] for t in stops)]
        subset = [prompts[i] for i in covered[:12]] + [prompts[i] for i in range(24, 28)]
        hf_sub = HFGenerator().generate(model, subset, params, eos_token_ids=stops, pad_token_id=pad)
        ours = compiled.generate(model, subset, params, eos_token_ids=stops, pad_token_id=pad)
        entry["compaction_subset"] = {"prompts": len(subset),
                                      "rows_stopped_early": sum(len(r) < 64 for r in hf_sub),
                                      "all_identical": ours == hf_sub, "stats": compiled.last_stats}
        res["parity_fp32"] = entry
        print(json.dumps(entry), flush=True)

    if not args.skip_parity:
        section("parity_fp32", parity_fp32)
    model.to(torch.bfloat16)  # new parameter tensors: FastGenerator re-captures its graphs

    prompts64 = random_prompts(64, 16, 64, cfg.vocab_size, seed=2)
    res["throughput"] = {}

    def run_ours(name: str, gen, batch: int, reps: int = 3, m=None) -> None:
        m = model if m is None else m
        prompts = (prompts64 * (batch // 64 + 1))[:batch]
        t0 = time.perf_counter()
        # warm-up: compile and capture; twice, as a prompt-pass graph is captured on a width's second call
        for _ in range(2):
            gen.generate(m, prompts, greedy, eos_token_ids=[], pad_token_id=pad)
        warm = time.perf_counter() - t0
        times, phases = [], []
        for _ in range(reps):
            times.append(timed(lambda: gen.generate(m, prompts, greedy, eos_token_ids=[], pad_token_id=pad)))
            phases.append(dict(gen.last_stats))
        t = statistics.median(times)
        stats = phases[times.index(t)] if t in times else phases[-1]
        row = {"batch": batch, "seconds": round(t, 4), "tok_per_s": round(batch * args.new / t),
               "warmup_s": round(warm, 1), "all_times": [round(x, 4) for x in times],
               "steps": stats.get("steps")}
        if "decode_ms" in stats:  # GPU time of the phases, from CUDA events (FastGenerator.last_stats)
            row.update(prefill_ms=stats.get("prefill_ms"), decode_ms=stats["decode_ms"],
                       decode_step_ms=round(stats["decode_ms"] / max(1, stats["steps"]), 4),
                       host_ms=round(t * 1e3 - stats.get("prefill_ms", 0) - stats["decode_ms"], 2))
        res["throughput"][name] = row
        print(name, row, flush=True)

    def run_hf(name: str, gen: HFGenerator, reps: int) -> None:
        t0 = time.perf_counter()
        # warm-up (HF compiles the forward for the static cache)
        gen.generate(model, prompts64, greedy, eos_token_ids=[], pad_token_id=pad)
        warm = time.perf_counter() - t0
        times = [timed(lambda: gen.generate(model, prompts64, greedy, eos_token_ids=[], pad_token_id=pad))
                 for _ in range(reps)]
        t = statistics.median(times)
        res["throughput"][name] = {"batch": 64, "seconds": round(t, 4), "tok_per_s": round(64 * args.new / t),
                                   "warmup_s": round(warm, 1), "all_times": [round(x, 4) for x in times]}
        print(name, res["throughput"][name], flush=True)

    def fast(**kw) -> FastGenerator:
        return FastGenerator(compile=on_cuda or None, **kw)

    default = fast()
    section("fast_compiled_b64", lambda: run_ours("fast_compiled_graph_b64", default, 64, reps=5))

    # the student as the training loop samples from it: LoRA r16 on every linear projection
    def lora_rows() -> None:
        from peft import LoraConfig, get_peft_model

        lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                               init_lora_weights=False)).eval()
        run_ours("fast_lora_b64", fast(), 64, reps=3, m=lora)
        run_ours("fast_lora_unfused_b64", fast(fuse=False), 64, reps=3, m=lora)

    # without inductor's combo kernels (the default since session 7: independent small kernels - the
    # 30 layers' cache write counters, RoPE of q and of k, the two cache writes - launched together)
    section("fast_no_combo_kernels_b64", lambda: run_ours("fast_no_combo_kernels_b64", fast(
        compile_options={}), 64, reps=5))
    section("fast_lora_b64", lora_rows)
    for b in (128, 256, 512, 1024, 2048, 4096):  # toward the largest batch that fits (the bandwidth bound)
        section(f"fast_compiled_b{b}", lambda b=b: run_ours(f"fast_compiled_graph_b{b}", default, b, reps=2))
    if not args.skip_hf:
        # (its one-call time varied from 3.5 to 6.0 s between runs on 2026-11-29: three calls, the median)
        section("hf_default_b64", lambda: run_hf("hf_default_cache_b64", HFGenerator(), 3))
        section("hf_static_b64",
                lambda: run_hf("hf_static_cache_b64", HFGenerator(cache_implementation="static"), 2))
    # FlexAttention's decoding kernel for the one-token attention (cuDNN's takes ~13 us per layer)
    flex = fast(attention=["flex"])
    section("fast_attn_flex_b64", lambda: run_ours("fast_attn_flex_b64", flex, 64, reps=3))
    # unisd's Triton kernel for the one-token attention (unisd.generation.triton_attention)
    tri = fast(attention=["triton"])
    section("fast_attn_triton_b64", lambda: run_ours("fast_attn_triton_b64", tri, 64, reps=5))
    section("fast_triton_graph_prefill_b64", lambda: run_ours("fast_triton_graph_prefill_b64", fast(
        attention=["triton"], graph_prefill=True), 64, reps=5))
    # inductor's autotuned GEMMs (Triton templates against cuBLAS, pointwise tails fused into them)
    autotune = dict(compile_mode="max-autotune-no-cudagraphs")
    section("fast_autotune_b64", lambda: run_ours("fast_autotune_b64", fast(**autotune), 64, reps=3))
    section("fast_autotune_flex_b64", lambda: run_ours("fast_autotune_flex_b64", fast(
        attention=["flex"], graph_prefill=True, **autotune), 64, reps=4))
    # variants of the decode step (measured 2026-11-29: docs/benchmarks.md), each against the default's
    # decode_step_ms; tok/s also moves with the eager prompt pass, which varies from run to run
    variants = {"fast_previous_default_b64": dict(attention=[], graph_prefill=False),  # until 2026-11-29
                "fast_unfused_b64": dict(fuse=False),                   # q/k/v, gate/up as separate GEMMs
                "fast_forward_only_b64": dict(compile_step=False),      # sampling outside the compiled graph
                "fast_attn_efficient_b64": dict(attention=["efficient"]),
                "fast_attn_math_b64": dict(attention=["math"]),           # decomposed: inductor's own kernels
                "fast_attn_cudnn_b64": dict(attention=["cudnn"]),
                "fast_compiled_prefill_b64": dict(compile_prefill=True)}  # ~2 min compile
    for name, kw in variants.items():
        section(name, lambda name=name, kw=kw: run_ours(name, fast(**kw), 64, reps=3))

    # the decode step's projection GEMMs through cuBLASLt instead of cuBLAS (torch's choice on this
    # GPU): at batch 64 they take 3.6-4.2 us each, far above the time their weights take to read
    def cublaslt() -> None:
        saved = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library("cublaslt")
        try:  # a new generator captures its graphs (which bake in the GEMM kernels) under this setting
            run_ours("fast_cublaslt_b64", fast(), 64, reps=5)
        finally:
            torch.backends.cuda.preferred_blas_library(saved)

    section("fast_cublaslt_b64", cublaslt)

    # ----- bf16 greedy agreement (information: compiled vs eager rounding) ------------------------
    def parity_bf16() -> None:
        prompts = prompts64[:32]
        params = SamplingParams(max_new_tokens=64, temperature=0.0)
        hf = HFGenerator().generate(model, prompts, params, eos_token_ids=[], pad_token_id=pad)
        ours = default.generate(model, prompts, params, eos_token_ids=[], pad_token_id=pad)
        res["parity_bf16_info"] = {"identical_rows": sum(a == b for a, b in zip(ours, hf)), "rows": 32,
                                   "mean_common_prefix": statistics.mean(common_prefix(a, b)
                                                                         for a, b in zip(ours, hf))}
        print(res["parity_bf16_info"], flush=True)

    section("parity_bf16_info", parity_bf16)

    # ----- where a decode step's GPU time goes: the compiled step run without the graph, profiled;
    # two runs with the same cache length, their difference per step
    width = max(len(p) for p in prompts64)
    short_new = max(1, min(args.new - 16, 129 - width))
    def call_kernels(gen: FastGenerator, new: int) -> dict[str, list[float]]:
        """{kernel name: [launches, device us]} of one warm call of `gen` with `new` new tokens, the
        same compiled step as a row above (no recompile) run without graphs so the kernels show."""
        from torch.profiler import ProfilerActivity, profile

        params = SamplingParams(max_new_tokens=new, temperature=0.0)
        gen.cuda_graph = False
        try:
            gen.generate(model, prompts64, params, eos_token_ids=[], pad_token_id=pad)  # warm
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                gen.generate(model, prompts64, params, eos_token_ids=[], pad_token_id=pad)
        finally:
            gen.cuda_graph = None
        out: dict[str, list[float]] = {}
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if t > 0:
                out[e.key] = [e.count, t]
        return out

    def profile_decode(gen: FastGenerator, key: str) -> None:
        steps = 16
        short, long_ = call_kernels(gen, short_new), call_kernels(gen, short_new + steps)
        per = {k: [(v[0] - short.get(k, [0, 0])[0]) / steps, (v[1] - short.get(k, [0, 0])[1]) / steps]
               for k, v in long_.items()}
        per = {k: v for k, v in per.items() if v[1] > 0}
        total_us = sum(v[1] for v in per.values())
        top = sorted(per.items(), key=lambda kv: -kv[1][1])[:20]
        res[key] = {
            "note": "per decode step, batch 64, compiled forward without CUDA graph; "
                    "device time per kernel name",
            "kernel_time_us": round(total_us, 1),
            "kernel_launches": round(sum(v[0] for v in per.values()), 1),
            "top": [{"name": k[:120], "calls": round(v[0], 2), "us": round(v[1], 2)} for k, v in top]}
        print(json.dumps(res[key], indent=1)[:3000], flush=True)

    section("decode_step_profile_b64", lambda: profile_decode(default, "decode_step_profile_b64"))

    # ----- where the prompt pass's GPU time goes: a call with one new token (the prompt pass and
    # one sampling), without graphs so the kernels show
    def profile_prefill(gen: FastGenerator, key: str) -> None:
        rows = sorted(((k, c, t) for k, (c, t) in call_kernels(gen, 1).items()), key=lambda r: -r[2])
        res[key] = {"note": "one call with max_new_tokens=1 at batch 64 (prompt pass + one sampling), "
                            "eager, no CUDA graph; device time per kernel name",
                    "width": max(len(p) for p in prompts64),
                    "kernel_time_us": round(sum(r[2] for r in rows), 1),
                    "kernel_launches": sum(r[1] for r in rows),
                    "top": [{"name": k[:120], "calls": c, "us": round(t, 2)} for k, c, t in rows[:25]]}
        print(json.dumps(res[key], indent=1)[:3000], flush=True)

    section("prefill_profile_b64", lambda: profile_prefill(default, "prefill_profile_b64"))
    section("decode_step_profile_flex_b64", lambda: profile_decode(flex, "decode_step_profile_flex_b64"))
    section("decode_step_profile_triton_b64", lambda: profile_decode(tri, "decode_step_profile_triton_b64"))

    # ----- memory-bandwidth bound: every step reads all weights once (plus the KV cache) ----------
    # the rate is this GPU's, measured now (one large device-to-device copy, read + write bytes):
    # a constant would carry one card's number to another (the H100 reads slower than the H200)
    res["ceilings"] = measure_ceilings(torch.device(args.device))  # the matmul rate kept beside it
    bytes_per_s = res["ceilings"]["copy_bandwidth"]["gb_per_s"] * 1e9
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
    step_s = weight_bytes / bytes_per_s
    bound = {"copy_bytes_per_s": bytes_per_s, "weight_bytes": weight_bytes, "min_step_s_weights_only": step_s,
             "tok_per_s_weights_only": {}}
    for b in (64, 128, 256, 512, 1024, 2048, 4096):
        kv = b * (40 + args.new / 2) * kv_bytes_per_token  # mean prompt ~40 + half the completion
        bound["tok_per_s_weights_only"][b] = round(b / step_s)
        bound.setdefault("tok_per_s_weights_plus_kv", {})[b] = round(
            b / ((weight_bytes + kv) / bytes_per_s))
    res["bandwidth_bound"] = bound
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    save()

    # ----- table ---------------------------------------------------------------------------------
    base = res["throughput"].get("hf_default_cache_b64", {}).get("tok_per_s")
    static = res["throughput"].get("hf_static_cache_b64", {}).get("tok_per_s")
    print(f"\n{'backend':<28}{'batch':>6}{'tok/s':>10}{'x default':>11}{'x static':>10}{'bound(w)':>10}")
    for name, r in res["throughput"].items():
        xd = f"{r['tok_per_s'] / base:.1f}" if base else "-"
        xs = f"{r['tok_per_s'] / static:.1f}" if static else "-"
        print(f"{name:<28}{r['batch']:>6}{r['tok_per_s']:>10}{xd:>11}{xs:>10}"
              f"{bound['tok_per_s_weights_only'].get(r['batch'], 0):>10}")
    print("errors:", list(res["errors"]) or "none")


if __name__ == "__main__":
    main()
