"""`unisd bench`: hardware ceilings, generation throughput and the cost of a training step, one run.

Measured on the device this runs on, in this order:
1. ceilings: the dense matmul rate (bf16 4096^3 on CUDA, float32 1024^3 on CPU; the dtype is
   recorded) and the device copy bandwidth (read + write bytes of one large `copy_`);
2. generation: tokens/s of the "fast" backend (its defaults: on CUDA fused projections, the Triton
   decode attention, the prompt pass in a CUDA graph; "fast_unfused": without fused projections;
   "fast_sdpa": torch's SDPA attention and the eager prompt pass) and of HF `generate`
   with its default and its static cache, greedy, every row forced to decode `new_tokens` (no EOS
   ids), on the configured task's student chat prompts (so prompt lengths are realistic), timed
   after two warm-up calls (fast rows on CUDA also keep the generator's own CUDA-event timing of
   prompt pass and decode steps). A one-token call times the prefill; the rest, divided by the
   decode steps, is set against the weight-bandwidth bound (bytes of the weights one step reads /
   measured copy bandwidth);
3. training: `steps` steps of the configured recipe through `training.loop.train` (eval off, at most
   `new_tokens` sampled per row); step 1 (compilation, graph capture) is dropped when there are
   more. Each step is split into generate / teacher scoring / student forward+backward / optimizer,
   with samples/s, tokens/s, peak memory and MFU against the measured matmul rate (`MFU_FORMULA`).

A generation backend that fails, or a training batch that runs out of memory, is recorded under
"errors" and the run goes on.

It prints tables and writes `bench.json`; it parses no flags (cli.main does) and sets no targets
(docs/benchmarks.md records measured numbers and targets).
"""

from __future__ import annotations

import copy
import gc
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from unisd.config.schema import RunConfig

MFU_FORMULA = (
    "mfu = (student_flops + teacher_flops) / step_s / matmul_flops_per_s; "
    "student_flops = 6 * (P_body * T_student + P_head * S_student) under full fine-tuning, "
    "(4 * P_body + 6 * P_adapter) * T_student + 4 * P_head * S_student under LoRA (frozen weights get no "
    "weight gradient); teacher_flops = 2 * ((P_body + P_adapter_teacher) * T_teacher + P_head * S_teacher). "
    "P_body: matmul parameters except input embedding and LM head; P_head: LM head; T: non-pad tokens "
    "through the decoder; S: completion tokens through the LM head (heads run on completion positions "
    "only); step_s includes generation, whose FLOPs are not counted; attention score FLOPs and "
    "gradient-checkpointing recompute are not counted.")
BACKENDS = ("fast", "fast_unfused", "fast_sdpa", "hf", "hf_static")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _repeat_rate(fn: Callable[[], Any], device: torch.device, min_s: float) -> float:
    """Seconds per call of `fn`, after one warm-up call, over enough calls to last about `min_s`."""
    fn()
    once = _timed(fn, device)
    reps = int(min(2000, max(3, min_s / max(once, 1e-6))))
    return _timed(lambda: [fn() for _ in range(reps)], device) / reps


# ----- (a) hardware ceilings ---------------------------------------------------------------------

def measure_ceilings(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    n, dtype = (4096, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    per_mm = _repeat_rate(lambda: a @ b, device, 1.0 if cuda else 0.3)
    numel = 1 << (28 if cuda else 24)  # 1 GiB / 64 MiB of float32
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    per_copy = _repeat_rate(lambda: dst.copy_(src), device, 1.0 if cuda else 0.3)
    del a, b, src, dst
    return {"matmul": {"dtype": str(dtype).replace("torch.", ""), "shape": [n, n, n],
                       "tflops": 2 * n ** 3 / per_mm / 1e12},
            "copy_bandwidth": {"gb_per_s": 2 * numel * 4 / per_copy / 1e9, "bytes_copied": numel * 4,
                               "note": "read + write bytes of one device-to-device copy"}}


# ----- (b) generation ----------------------------------------------------------------------------

def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts for FLOPs and bytes: each tensor once (tied weights are shared)."""
    from unisd.scoring import _unwrap

    base = _unwrap(model)
    unique = {id(p): p for p in base.parameters()}
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    adapter = sum(p.numel() for n, p in base.named_parameters() if "lora_" in n)
    total = sum(p.numel() for p in unique.values())
    body = total - emb.numel() - (head.numel() if head is not emb else 0) - adapter
    weight_bytes = sum(p.numel() * p.element_size() for p in unique.values())
    # a decode step reads every weight once, except an untied input embedding (B rows of it only)
    decode_bytes = weight_bytes - (emb.numel() * emb.element_size() if head is not emb else 0)
    return {"total": total, "body": body, "head": head.numel(), "adapter": adapter, "bytes": weight_bytes,
            "decode_bytes": decode_bytes}


def task_prompts(cfg: RunConfig, tokenizer, n: int) -> list[list[int]]:
    """`n` student chat prompts of the configured task (cycled if the split is smaller)."""
    from unisd.prompting import chat_prompt_ids
    from unisd.tasks import get_task
    from unisd.training.evals import task_options

    task = get_task(cfg.data.task, **task_options(cfg))
    examples = task.load(cfg.data.train_split, data_dir=cfg.data.data_dir, limit=n, seed=cfg.optim.seed)
    ids = [chat_prompt_ids(tokenizer, ex.prompt, ex.system) for ex in examples]
    limit = cfg.data.max_prompt_tokens
    ids = [p for p in ids if len(p) <= limit] or [p[-limit:] for p in ids]
    return (ids * (n // len(ids) + 1))[:n]


def _generator(name: str):
    from unisd.generation.fast import FastGenerator
    from unisd.generation.hf import HFGenerator

    if name.startswith("fast"):
        if name == "fast_sdpa":  # the defaults before 2026-11-29 (session 5)
            return FastGenerator(attention=[], graph_prefill=False, compile_options={})
        return FastGenerator(fuse=False if name == "fast_unfused" else None)
    return HFGenerator(cache_implementation="static" if name == "hf_static" else None)


def bench_generation(model, prompts: list[list[int]], *, backend: str, new_tokens: int, pad_id: int,
                     device: torch.device, bound_step_s: float) -> dict[str, Any]:
    """tokens/s of one backend on `prompts`, and its decode step time against the bandwidth bound."""
    from unisd.generation.base import SamplingParams

    gen = _generator(backend)

    def run(new: int) -> float:
        params = SamplingParams(max_new_tokens=new, temperature=0.0)
        return _timed(lambda: gen.generate(model, prompts, params, eos_token_ids=[], pad_token_id=pad_id),
                      device)

    warmup = run(new_tokens)  # compiles and captures graphs (fast, static)
    run(new_tokens)  # the fast backend captures its prompt pass on the second call of a shape
    times, phases = [], []
    for _ in range(2):
        times.append(run(new_tokens))
        phases.append(dict(getattr(gen, "last_stats", {})))
    seconds = statistics.median(times)
    # a one-token call may need another cache length, i.e. another workspace of the fast backend,
    # whose prompt pass runs eagerly on its first call and is captured on its second
    run(1)
    run(1)
    prefill = run(1)  # prefill and first token only
    batch = len(prompts)
    out = {"batch": batch, "backend": backend, "tokens_per_s": batch * new_tokens / seconds,
           "seconds": seconds, "warmup_s": warmup, "prefill_s": prefill, "decode_step_s": None,
           "bound_step_s": bound_step_s, "x_bound": None, "bound_tokens_per_s": batch / bound_step_s,
           "error": None}
    if new_tokens > 1:
        step = max(seconds - prefill, 0.0) / (new_tokens - 1)
        out.update(decode_step_s=step, x_bound=step / bound_step_s)
    # the fast backend's own CUDA-event timing of the same calls (mean of the two): prompt pass and
    # decode steps on the GPU, without the host time around them
    if all("decode_ms" in p and p.get("steps") for p in phases):
        out["gpu_prefill_s"] = statistics.mean(p["prefill_ms"] for p in phases) / 1e3
        out["gpu_decode_step_s"] = statistics.mean(p["decode_ms"] / p["steps"] for p in phases) / 1e3
    del gen
    return out


# ----- (c) training steps ------------------------------------------------------------------------

def step_flops(rec: dict, p: dict[str, int], cfg: RunConfig) -> float:
    """Model FLOPs of one logged step (see MFU_FORMULA)."""
    t_s, s_s = rec.get("tokens/student_forward", 0), rec.get("tokens/student_scored", 0)
    t_t, s_t = rec.get("tokens/teacher_forward", 0), rec.get("tokens/teacher_scored", 0)
    if cfg.model.finetune == "lora":
        student = (4 * p["body"] + 6 * p["adapter"]) * t_s + 4 * p["head"] * s_s
        teacher_adapter = p["adapter"] if cfg.teacher.weights != "frozen_base" else 0
    else:
        student = 6 * (p["body"] * t_s + p["head"] * s_s)
        teacher_adapter = 0
    return student + 2 * ((p["body"] + teacher_adapter) * t_t + p["head"] * s_t)


def training_cfg(cfg: RunConfig, batch: int, steps: int, new_tokens: int, root: Path) -> RunConfig:
    """The recipe at `batch` rows per step for `steps` steps, at most `new_tokens` sampled tokens per
    row, no evaluation, written under `root`."""
    c = copy.deepcopy(cfg)
    c.optim.batch_size, c.optim.steps = batch, steps
    c.rollout.max_new_tokens = new_tokens  # completions as long as in the generation section (or EOS)
    micro = c.optim.micro_batch_size
    c.optim.micro_batch_size = batch if micro >= batch else math.gcd(batch, micro)
    c.eval.before = c.eval.after = False
    c.data.train_limit = min(c.data.train_limit or batch * steps, batch * steps)  # no time on unused rows
    c.output.root, c.output.name, c.output.loggers = str(root), f"train-b{batch}", []
    return c.validate()


def bench_training(cfg: RunConfig, *, batch: int, steps: int, new_tokens: int, root: Path,
                   counts: dict[str, int], matmul_flops: float, device: torch.device,
                   console) -> dict[str, Any]:
    """Train `steps` steps (see `training_cfg`) and summarise the measured steps of metrics.jsonl."""
    import json

    from unisd.training.loop import train

    tcfg = training_cfg(cfg, batch, steps, new_tokens, root)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(tcfg, console=console, show_progress=False)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    measured = records[1:] if len(records) > 1 else records  # step 1 compiles and captures graphs
    phases = {"generate": "time/generate_s", "teacher": "time/teacher_s", "student": "time/student_s",
              "optimizer": "time/optimizer_s"}
    step_s = [r["time/generate_s"] + r["time/forward_backward_s"] + r.get("time/sync_s", 0.0)
              + r["time/optimizer_s"] for r in measured]
    total_s = sum(step_s)
    flops = sum(step_flops(r, counts, tcfg) for r in measured)
    fb_s = sum(r["time/forward_backward_s"] for r in measured)
    split = {k: statistics.mean(r.get(v, 0.0) for r in measured) for k, v in phases.items()}
    per_step_keys = ("step", "rows", "tokens", "time/generate_s", "time/teacher_s", "time/student_s",
                     "time/forward_backward_s", "time/optimizer_s", "tokens/student_forward",
                     "tokens/teacher_forward", "peak_memory_gb")
    return {"batch": batch, "micro_batch": tcfg.optim.micro_batch_size,
            "max_new_tokens": tcfg.rollout.max_new_tokens, "steps_run": len(records),
            "steps_measured": [r["step"] for r in measured], "step_s": total_s / len(measured),
            "step_s_median": statistics.median(step_s),
            "split_s": split, "split_share": {k: v * len(measured) / total_s for k, v in split.items()},
            "samples_per_s": sum(r["rows"] for r in measured) / total_s,
            "tokens_per_s": sum(r["tokens"] for r in measured) / total_s,
            "peak_memory_gb": max(r["peak_memory_gb"] for r in records),
            "peak_memory_kind": "CUDA max allocated, reset before training" if device.type == "cuda"
            else "process peak RSS (includes everything before)",
            "flops_per_step": flops / len(measured), "mfu": flops / total_s / matmul_flops,
            "mfu_forward_backward": flops / max(fb_s, 1e-12) / matmul_flops,
            "first_step_s": records[0]["time/generate_s"] + records[0]["time/forward_backward_s"]
            + records[0]["time/optimizer_s"], "run_dir": str(result.run_dir),
            "per_step": [{k: r.get(k) for k in per_step_keys} for r in records]}


# ----- the whole run -----------------------------------------------------------------------------

def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    from unisd import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads")
    return {"device": {"type": device.type, "name": name}, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "unisd": __version__, "python": platform.python_version()}}


def run_bench(cfg: RunConfig, *, batch_sizes: Sequence[int] = (64,), new_tokens: int = 128, steps: int = 4,
              out: Path | None = None, console=None) -> dict[str, Any]:
    """Measure ceilings, generation and training steps for `cfg` (see the module docstring); print
    tables, write `out/bench.json` when `out` is given, and return the same dict."""
    from rich.console import Console

    from unisd.config.io import to_dict
    from unisd.errors import ResourceError
    from unisd.evaluation.runner import eos_ids
    from unisd.models import apply_lora, load_model_and_tokenizer
    from unisd.training.loop import pick_device

    if not batch_sizes or min(batch_sizes) < 1 or new_tokens < 1 or steps < 0:
        from unisd.config.schema import ConfigError

        raise ConfigError(f"need batch sizes >= 1, new_tokens >= 1, steps >= 0; got {batch_sizes}, "
                          f"{new_tokens}, {steps}")
    console = console or Console()
    out = Path(out) if out is not None else None
    device = pick_device()
    res: dict[str, Any] = {"schema": "unisd.bench/1", **environment(device), "config": to_dict(cfg),
                           "settings": {"recipe": cfg.recipe, "model": cfg.model.name, "task": cfg.data.task,
                                        "batch_sizes": list(batch_sizes), "new_tokens": new_tokens,
                                        "steps": steps, "decoding": "greedy, no EOS ids"},
                           "mfu_formula": MFU_FORMULA, "errors": {}}
    console.print(f"[bold]unisd bench[/] on {res['device']['name']}: measuring ceilings")
    res["ceilings"] = measure_ceilings(device)
    _free(device)

    model, tokenizer = load_model_and_tokenizer(cfg.model, device=device)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(tokenizer, model)[0]
    counts = param_counts(model)
    res["model"] = {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "params": counts}
    bound_step_s = counts["decode_bytes"] / (res["ceilings"]["copy_bandwidth"]["gb_per_s"] * 1e9)
    res["generation"] = []
    prompts_all = task_prompts(cfg, tokenizer, max(batch_sizes))
    lengths = [len(p) for p in prompts_all]
    res["generation_prompts"] = {"min": min(lengths), "mean": statistics.mean(lengths), "max": max(lengths)}
    for batch in batch_sizes:
        for backend in BACKENDS:
            console.print(f"generation: {backend}, batch {batch}, {new_tokens} new tokens")
            try:
                row = bench_generation(model, prompts_all[:batch], backend=backend, new_tokens=new_tokens,
                                       pad_id=pad_id, device=device, bound_step_s=bound_step_s)
            except Exception as err:  # noqa: BLE001 - e.g. HF's static cache on CPU; record and go on
                row = {"batch": batch, "backend": backend, "tokens_per_s": None,
                       "error": f"{type(err).__name__}: {err}"}
                res["errors"][f"generation/{backend}/b{batch}"] = row["error"]
            res["generation"].append(row)
            _free(device)
    if cfg.model.finetune == "lora":  # adapter size for the FLOPs count only
        model = apply_lora(model, cfg.model)
        counts["adapter"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    _free(device)

    res["training"] = []
    if steps:
        with tempfile.TemporaryDirectory() as tmp:
            root = out / "runs" if out is not None else Path(tmp)
            matmul = res["ceilings"]["matmul"]["tflops"] * 1e12
            for batch in batch_sizes:
                console.print(f"training: {cfg.recipe}, batch {batch}, {steps} steps")
                try:
                    row = bench_training(cfg, batch=batch, steps=steps, new_tokens=new_tokens, root=root,
                                         counts=counts, matmul_flops=matmul, device=device, console=console)
                    res["training"].append(row)
                except ResourceError as err:  # out of memory at this batch: keep the other results
                    res["errors"][f"training/b{batch}"] = str(err)
                _free(device)
    print_tables(res, console)
    if out is not None:
        from unisd.training.runlog import write_json

        write_json(Path(out) / "bench.json", res)
        console.print(f"wrote {Path(out) / 'bench.json'}")
    return res


def print_tables(res: dict[str, Any], console) -> None:
    from rich import box
    from rich.table import Table

    def num(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    c = res["ceilings"]
    params = res["model"]["params"]
    console.print(f"ceilings: matmul {c['matmul']['tflops']:.2f} TFLOP/s ({c['matmul']['dtype']}), copy "
                  f"bandwidth {c['copy_bandwidth']['gb_per_s']:.1f} GB/s; "
                  f"model {params['total'] / 1e6:.1f} M "
                  f"params, {params['bytes'] / 1e9:.3f} GB ({res['model']['dtype']})")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True,
                  title=f"generation, {res['settings']['new_tokens']} new tokens, greedy, no EOS; step ms: "
                        "one decode step; bound ms: weight bytes read per step / copy bandwidth")
    for col in ("batch", "backend", "tok/s", "×HF default", "×HF static", "step ms", "bound ms", "×bound"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    rates = {(r["batch"], r["backend"]): r.get("tokens_per_s") for r in res["generation"]}
    for r in res["generation"]:
        tps = r.get("tokens_per_s")
        base, static = rates.get((r["batch"], "hf")), rates.get((r["batch"], "hf_static"))
        table.add_row(str(r["batch"]), r["backend"] + (" (failed)" if r.get("error") else ""),
                      num(tps, ",.0f"),
                      num(tps / base if tps and base else None, ".2f"),
                      num(tps / static if tps and static else None, ".2f"),
                      num(r.get("decode_step_s") and r["decode_step_s"] * 1e3, ".3f"),
                      num(r.get("bound_step_s") and r["bound_step_s"] * 1e3, ".4f"),
                      num(r.get("x_bound"), ".1f"))
    console.print(table)
    for where, error in res["errors"].items():
        console.print(f"[red]{where}: {error}[/]")
    if not res["training"]:
        return
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True,
                  title=f"training step ({res['settings']['recipe']}): seconds per phase, mean of the "
                        "measured steps; student = forward + backward")
    for col in ("batch", "generate", "teacher", "student", "optim", "step", "rows/s", "tok/s", "peak GB",
                "MFU"):
        table.add_column(col, justify="right")
    for t in res["training"]:
        s = t["split_s"]
        table.add_row(str(t["batch"]), *(f"{s[k]:.3f}" for k in ("generate", "teacher", "student",
                                                                  "optimizer")),
                      f"{t['step_s']:.3f}", f"{t['samples_per_s']:.1f}", f"{t['tokens_per_s']:,.0f}",
                      f"{t['peak_memory_gb']:.2f}", f"{100 * t['mfu']:.2f}%")
    console.print(table)
    split = [t for t in res["training"] if t.get("micro_batch") and t["micro_batch"] < t["batch"]]
    if split:  # the recipes' micro-batch of 4 suits a CPU; on a large GPU it dominates the step
        t = split[0]
        console.print(f"note: micro-batch {t['micro_batch']}: each step ran {t['batch'] // t['micro_batch']} "
                      "forward/backward passes one after another; results do not depend on the micro-batch, "
                      "so if memory allows, --set optim.micro_batch_size=<batch> gives the fastest step")
