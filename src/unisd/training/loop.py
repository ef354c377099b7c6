"""The training loop: rollout -> views -> scoring -> objective -> step, top to bottom.

`train(cfg)` builds everything from a validated RunConfig, optionally evaluates the base model,
then for each optimizer step: samples completions from the student (or takes gold ones for
SFT/GKD), splits the batch into micro-batches, accumulates the loss of `step.micro_batch_loss`
(normalised by the batch's global completion-token count), clips, steps, updates the EMA
teacher, logs one line to metrics.jsonl (with the seconds of each phase: generate, forward/backward
and its teacher-forward share, optimizer; on CUDA timers are read after a synchronize) and
checkpoints on schedule. A non-finite loss or gradient skips the update (its batch ids are
logged); too many in a row stop the run with
`TrainingStopped`, and running out of GPU memory stops it with `ResourceError` naming the settings
to lower (summary.json is written by finished runs only). `resume_dir` continues a killed run
from its last complete checkpoint with identical data order and RNG streams.

It is not a subclass of any framework Trainer, and holds no method-specific branches beyond
what the config fields say.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function

from unisd.config.io import dump_config
from unisd.config.schema import RunConfig
from unisd.errors import ResourceError, TrainingStopped
from unisd.training import checkpoint as ckpt
from unisd.training import distributed, evals, fsdp
from unisd.training.collapse import CollapseWatch
from unisd.training.evals import task_options
from unisd.training.data import prepare_rows
from unisd.training.profiling import StepProfiler
from unisd.training.rollout import build_contexts, rollout, rollout_stats, sample_scorer, text_generator
from unisd.training.runlog import MetricsLog, NullLog, fingerprint, make_run_dir, peak_memory_gb, write_json
from unisd.training.scoring import completion_outputs
from unisd.training.step import StepContext, count_loss_tokens, micro_batch_loss


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    before: dict | None
    after: dict | None
    summary: dict


def lr_lambda(step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    warmup = int(round(warmup_ratio * total))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """Data order of one epoch: a pure function of (seed, epoch), so resume needs only the position."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so the phase timers measure work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: RunConfig, *, resume_dir: str | Path | None = None, console=None, show_progress: bool = True
          ) -> RunResult:
    from rich.console import Console
    from rich.markup import escape

    from unisd.evaluation.resources import ResourceMeter
    from unisd.evaluation.runner import eos_ids
    from unisd.generation import fast_options, get_generator
    from unisd.models import CompiledLayers, TeacherWeights, apply_lora, load_model_and_tokenizer, load_weights
    from unisd.tasks import get_task

    # Under torchrun every rank runs this function on its own slice of each batch; rank 0 alone
    # writes the run directory, evaluates and prints (`distributed` explains the gradient sum).
    dp = distributed.init()
    distributed.check_config(cfg, dp.world_size)
    console = console or Console(quiet=not dp.is_main)
    show_progress = show_progress and dp.is_main
    t_start = time.perf_counter()

    # ---- task and data first: a bad name or file fails before a run directory or any model time ----
    task = get_task(cfg.data.task, **task_options(cfg))
    train_examples = task.load(cfg.data.train_split, data_dir=cfg.data.data_dir, limit=cfg.data.train_limit,
                               seed=cfg.optim.seed)
    targets = evals.eval_targets(cfg, task)  # loaded now: a bad extra task fails here

    run_dir = Path(resume_dir) if resume_dir else distributed.broadcast_object(
        make_run_dir(cfg) if dp.is_main else None)  # a derived name holds a timestamp: rank 0's counts
    if dp.is_main:
        if not resume_dir:
            dump_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "fingerprint.json", fingerprint())
    seed_everything(cfg.optim.seed)
    device = dp.device if dp.enabled else pick_device()
    with distributed.main_first():  # rank 0 converts the model and fills the caches; the rest reuse them
        model, tokenizer = load_model_and_tokenizer(cfg.model, device=device)
        stops = eos_ids(tokenizer, model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
        generator = get_generator(cfg.rollout.backend, device, fast_options=fast_options(
            cfg.rollout.decode_attention, cfg.rollout.graph_prefill))
        gen_texts = text_generator(model, tokenizer, generator, max_new_tokens=cfg.teacher.negative.max_new_tokens,
                                   temperature=cfg.teacher.negative.temperature, stops=stops, pad_id=pad_id)
        aux_texts, negatives, _ = build_contexts(cfg, train_examples, gen_texts, cfg.model.name, console)
    rows, report = prepare_rows(train_examples, tokenizer, cfg, eos_id=stops[0], aux_texts=aux_texts,
                                negative_texts=negatives)
    console.print(f"[bold]{cfg.recipe}[/] on {cfg.data.task}: {report.used} training examples "
                  f"({report.loaded} loaded; dropped {len(report.dropped_ids)}, truncated "
                  f"{sum(report.truncated.values())} prompts, without negative {report.without_negative})",
                  soft_wrap=True)

    # ---- evaluation of the base model (same path as the tuned one; rank 0 only) ----
    befores: dict[str, dict] = {}
    if dp.is_main and cfg.eval.before:
        befores = evals.evaluate_before(targets, run_dir, cfg,
                                        evals.make_run_eval(model, tokenizer, cfg, show_progress, False), console)
    before = befores.get(cfg.data.task)
    distributed.barrier()

    # ---- trainable weights, teacher weights, optimizer ----
    model = apply_lora(model, cfg.model) if cfg.model.finetune == "lora" else model
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compiled = CompiledLayers(model) if cfg.model.compile else None  # used around each micro-batch
    model.train()
    needs_teacher = cfg.objective.loss == "distill"
    teacher = TeacherWeights.from_config(model, cfg.teacher, cfg.model.finetune) if needs_teacher else None
    resume_from = ckpt.latest_checkpoint(run_dir) if resume_dir else None
    sharded = dp.enabled and cfg.distributed.strategy == "fsdp"  # `fsdp` says what is sharded and how
    if sharded:
        if resume_from is not None:  # into the whole model: sharding splits what is loaded
            load_weights(model, resume_from / "weights")
        fsdp.shard(model, teacher.separate_model if teacher is not None else None)
    named_params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named_params]
    replicas = fsdp.replicated(named_params)  # every rank's whole copies (all of them unless sharded)
    # Replicas start identical (same files, seeded LoRA init); checked, since the gradient sum
    # keeps them identical only if they are.
    distributed.check_replicas_equal(replicas, "initial trainable weights")
    if dp.enabled:  # from here on each rank draws its own dropout masks, like its own samples
        torch.manual_seed(cfg.optim.seed + dp.rank)
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    total = cfg.optim.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total, cfg.optim.warmup_ratio, cfg.optim.schedule))
    sampling_rng = torch.Generator(device=device).manual_seed(cfg.optim.seed + dp.rank)

    state = {"step": 0, "epoch": 0, "position": 0, "bad_in_a_row": 0, "skipped_steps": 0, "epochs_seen": 1}
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler, teacher=teacher,
                                     rng=sampling_rng, rank=dp.rank, world_size=dp.world_size, sharded=sharded)
        console.print(f"resumed from {resume_from} (step {state['step']})")
    metrics_log = (MetricsLog(run_dir, cfg.output.loggers, truncate_after=state["step"]) if dp.is_main
                   else NullLog())

    # Teacher forwards run inside the forward/backward phase; their seconds and tokens are
    # accumulated here so each step record can split that phase into teacher and student.
    teacher_meter = {"s": 0.0, "tokens": 0, "scored": 0}

    def teacher_forward(view, hidden_layer):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad(), teacher.activated(model) as tmodel, record_function("unisd/teacher_forward"):
            out = completion_outputs(tmodel, view, hidden_layer=hidden_layer)
        _sync(device)
        teacher_meter["s"] += time.perf_counter() - t
        teacher_meter["tokens"] += int(view.attention_mask.sum())
        teacher_meter["scored"] += int(view.targets.numel())
        return out

    order = epoch_order(len(rows), state["epoch"], cfg.optim.seed, cfg.data.shuffle)
    snapshot = os.environ.get("UNISD_CUDA_MEMORY_SNAPSHOT") if device.type == "cuda" else None
    if snapshot:  # profiling aid: every CUDA allocation of the training phase, with its stack
        torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    micro = cfg.optim.micro_batch_size  # halved on out-of-memory under optim.auto_micro_batch
    score_samples = sample_scorer(task, tokenizer)  # answer rate, sample accuracy (not for code tasks)
    watch = CollapseWatch()  # completion length, student entropy, repetition (reference restarts on resume)
    progress = _step_progress(show_progress, total, state["step"])
    profiler = StepProfiler(cfg.output.profile_steps, run_dir / "profile", device, dp.rank, dp.world_size)
    # GPU energy (NVML counter), time, tokens and peak memory of the training phase, measured
    with progress, ResourceMeter(device) as train_meter, profiler:
        bar = progress.add_task("training", total=total, completed=state["step"])
        while state["step"] < total:
            step = state["step"]
            # ---- the batch: next `batch_size` rows of the (seeded) epoch order; rank r of W takes
            # positions r, r+W, ... of it, so the data order does not depend on W ----
            batch_idx = []
            while len(batch_idx) < cfg.optim.batch_size:
                if state["position"] >= len(order):
                    state["epoch"] += 1
                    state["position"] = 0
                    state["epochs_seen"] = state["epoch"] + 1
                    order = epoch_order(len(rows), state["epoch"], cfg.optim.seed, cfg.data.shuffle)
                batch_idx.append(order[state["position"]])
                state["position"] += 1
            positions = list(range(dp.rank, cfg.optim.batch_size, dp.world_size))
            batch_rows = [rows[batch_idx[p]] for p in positions]
            profiler.start(step + 1)

            t0 = time.perf_counter()
            try:
                with fsdp.full_weights(model), record_function("unisd/rollout"):  # (sampling: whole weights)
                    rolled, roll_counts = rollout(model, batch_rows, cfg, generator, stops=stops, pad_id=pad_id,
                                                  step=step, sampling_rng=sampling_rng, positions=positions,
                                                  score=score_samples)
            except torch.OutOfMemoryError as err:
                metrics_log.close()
                raise ResourceError(oom_message(cfg, "rollout", step + 1)) from err
            if cfg.rollout.release_memory and hasattr(generator, "clear"):
                generator.clear()  # KV caches, graphs, fused weights: not alive during the backward
            t_gen = time.perf_counter() - t0

            # ---- accumulate over micro-batches; the loss is normalised by the global token count
            # (summed over ranks, so that the ranks' gradients add up to the batch gradient) ----
            n_tokens = int(distributed.all_reduce_sum(torch.tensor(count_loss_tokens(rolled))))
            # model.compile: lengths rounded to a multiple of 16, because SDPA's CUDA kernels pad an
            # unaligned mask length, a shape test that recompiles the layers whenever a batch's
            # length turns out divisible by 16 (seen on the H200 mid-run; torch's pad_last_dim)
            ctx = StepContext(cfg.objective, pad_id, device, float(n_tokens),
                              teacher_forward if needs_teacher else None, needs_teacher,
                              pad_to_multiple_of=16 if cfg.model.compile else 1)
            t1 = time.perf_counter()
            while True:
                teacher_meter.update(s=0.0, tokens=0, scored=0)
                try:
                    with training_attention(device, cfg.model.cudnn_attention):
                        sums, student_tokens, student_scored = _accumulate(model, rolled, ctx, micro,
                                                                           compiled=compiled, sharded=sharded)
                    break
                except torch.OutOfMemoryError as err:
                    if not cfg.optim.auto_micro_batch or micro == 1 or sharded:
                        metrics_log.close()
                        raise ResourceError(oom_message(cfg, "forward/backward", step + 1)) from err
                # auto_micro_batch: drop this attempt's gradients and redo the step in halves (the
                # result does not depend on the micro-batch size; the smaller one is kept from here on)
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                console.print(f"[yellow]step {step + 1}: out of memory with micro-batch {micro}; "
                              f"redoing the step with {micro // 2} (optim.auto_micro_batch)")
                micro //= 2
            _sync(device)  # backward kernels are asynchronous on CUDA
            t_fb = time.perf_counter() - t1

            # ---- sum gradients and metric sums over ranks (no-ops in a single process) ----
            t2 = time.perf_counter()
            if n_tokens:  # with no loss token anywhere every rank has no gradient: nothing to sum
                distributed.sync_gradients(p for _, p in replicas)
            counters = {"student_tokens": student_tokens, "student_scored": student_scored,
                        "teacher_tokens": teacher_meter["tokens"], "teacher_scored": teacher_meter["scored"]}
            sums, roll_counts, counters = distributed.sum_over_ranks(sums, roll_counts, counters)
            _sync(device)
            t_sync = time.perf_counter() - t2

            # ---- guarded optimizer step (identical on every rank: same gradients, same sums) ----
            t2 = time.perf_counter()
            grad_norm = fsdp.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
            loss_value = sums.get("loss/total_sum", sums.get("loss/nll_sum", 0.0)) / max(n_tokens, 1)
            finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
            if finite:
                with record_function("unisd/optimizer_step"):
                    optimizer.step()
                state["bad_in_a_row"] = 0
            else:
                state["bad_in_a_row"] += 1
                state["skipped_steps"] += 1
                batch_ids = [i for ids in distributed.all_gather_object(rolled.ids) for i in ids]
                console.print(f"[red]step {step + 1}: non-finite loss or gradient (loss={loss_value}, "
                              f"grad_norm={float(grad_norm)}); update skipped; batch ids: "
                              f"{escape(', '.join(batch_ids))}[/]")
            optimizer.zero_grad(set_to_none=True)  # also drops the NaN/inf gradients of a skipped step
            scheduler.step()
            if teacher is not None and finite:
                teacher.update(step + 1)
            _sync(device)
            t_opt = time.perf_counter() - t2
            state["step"] = step + 1

            # Times are rank 0's (its step waits for the slowest rank at every sum); counts are global.
            record = _step_record(state["step"], sums, n_tokens, rollout_stats(roll_counts), grad_norm, scheduler,
                                  (t_gen, t_fb, t_sync, t_opt), finite, cfg.optim.batch_size)
            record.update({"time/teacher_s": teacher_meter["s"], "time/student_s": t_fb - teacher_meter["s"],
                           "processes": dp.world_size, "micro_batch_size": micro,
                           "tokens/student_forward": counters["student_tokens"],
                           "tokens/student_scored": counters["student_scored"],
                           "tokens/teacher_forward": counters["teacher_tokens"],
                           "tokens/teacher_scored": counters["teacher_scored"]})
            if not finite:
                record["skipped_ids"] = batch_ids
            for warning in watch.update(record):
                console.print(f"[yellow]step {step + 1}: possible collapse, {warning}", soft_wrap=True)
            metrics_log.write(record)
            profiler.stop(step + 1, header=", ".join(f"{k} {record[k]:.3f}" for k in (
                "time/generate_s", "time/teacher_s", "time/student_s", "time/optimizer_s") if k in record))
            train_meter.add_tokens(record.get("tokens") or 0)
            metrics_log.write_sample(state["step"], rolled.ids[0],
                                     tokenizer.decode(rolled.completions[0], skip_special_tokens=True))
            progress.update(bar, advance=1, description=f"training  loss {record['loss']:.4f}")
            if state["bad_in_a_row"] >= cfg.optim.max_bad_steps:
                # Skipped steps never change the weights, so the latest checkpoint holds good ones.
                metrics_log.close()
                last = ckpt.latest_checkpoint(run_dir)
                raise TrainingStopped(
                    f"{state['bad_in_a_row']} non-finite steps in a row (optim.max_bad_steps="
                    f"{cfg.optim.max_bad_steps}); stopped at step {state['step']}. "
                    + (f"The last good checkpoint is {last}. " if last else "No checkpoint was written yet. ")
                    + "Try a lower optim.lr or objective.temperature.")
            if dp.enabled and (state["step"] % distributed.CHECK_EVERY == 0 or state["step"] == total):
                distributed.check_replicas_equal(replicas, f"after step {state['step']}")
            if state["step"] % cfg.output.checkpoint_every == 0 or state["step"] == total:
                # every rank's random streams, so that a resumed run samples what this one would have
                rank_rngs = (distributed.all_gather_object(ckpt.rank_rng_state(sampling_rng)) if dp.enabled
                             else None)
                full = fsdp.full_state(model, optimizer) if sharded else None  # gathered from every rank
                if dp.is_main:
                    ckpt.save_checkpoint(run_dir, state["step"], model=model, optimizer=optimizer,
                                         scheduler=scheduler, teacher=teacher, state=state, rng=sampling_rng,
                                         keep=cfg.output.keep_last, rank_rngs=rank_rngs, sharded_state=full)
    metrics_log.close()
    if snapshot:  # open with https://pytorch.org/memory_viz or benchmarks/memory_peak.py
        torch.cuda.memory._dump_snapshot(snapshot)
        torch.cuda.memory._record_memory_history(enabled=None)
    if dp.enabled and os.environ.get("UNISD_DEBUG_RANK_DUMP"):  # tests: every rank's final weights
        distributed.dump_rank_params(replicas, run_dir / "debug" / f"rank-{dp.rank}.pt")

    afters: dict[str, dict] = {}
    # sharded: every rank gathers the weights (a collective), rank 0 alone evaluates
    with fsdp.full_weights(model) if cfg.eval.after else contextlib.nullcontext():
        if dp.is_main and cfg.eval.after:
            afters = evals.evaluate_after(targets, run_dir, evals.make_run_eval(
                model, tokenizer, cfg, show_progress, retention_after=cfg.model.finetune == "lora"), console)
    after = afters.get(cfg.data.task)
    summary = {"recipe": cfg.recipe, "task": cfg.data.task, "model": cfg.model.name, "steps": state["step"],
               "skipped_steps": state["skipped_steps"], "data": report.as_dict(),
               "seconds": time.perf_counter() - t_start, "device": str(device), "processes": dp.world_size,
               "peak_memory_gb": max(
                   [peak_memory_gb(), train_meter.process_peak_memory_gb] + [e["aggregate"].get("resources", {}).get("process_peak_memory_gb", 0.0)
                                         for e in (before, after) if e]),
               "resources": train_meter.as_dict(), "run_dir": str(run_dir),
               "before": before["aggregate"] if before else None, "after": after["aggregate"] if after else None,
               "extra_tasks": {name: {"before": befores[name]["aggregate"] if name in befores else None,
                                      "after": afters[name]["aggregate"] if name in afters else None}
                               for name in cfg.eval.extra_tasks}}
    if dp.is_main:
        write_json(run_dir / "summary.json", summary)
        try:
            from unisd.reporting.plots import plot_run

            plot_run(run_dir)
        except ImportError:  # matplotlib is a dependency, but a broken install should not lose the run
            pass
    distributed.barrier()  # the other ranks wait for rank 0's evaluation and files
    return RunResult(run_dir, state["step"], before, after, summary)


def training_attention(device: torch.device, cudnn: bool) -> contextlib.AbstractContextManager:
    """The SDPA backends the training forwards and backward may use (`model.cudnn_attention`): on
    CUDA without cuDNN's attention unless asked for (it plans per new shape; see the config field),
    elsewhere unchanged. Held over the backward too, so a checkpointed layer's recomputation picks the
    same kernel as its forward."""
    if device.type != "cuda" or cudnn:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _accumulate(model, rolled, ctx: StepContext, micro: int, *, compiled, sharded: bool
                ) -> tuple[dict[str, float], int, int]:
    """Forward and backward over `rolled` in micro-batches of `micro` rows, gradients accumulating;
    returns the metric sums and the student's forward and scored token counts (for MFU)."""
    sums: dict[str, float] = {}
    student_tokens = student_scored = 0
    parts = [rolled.select(list(range(lo, min(lo + micro, len(rolled))))) for lo in range(0, len(rolled), micro)]
    # A micro-batch without loss tokens is skipped; sharded, only where no rank has any, since
    # each forward and backward is then a collective (a rank without tokens adds zeros).
    counts = torch.tensor([count_loss_tokens(part) for part in parts])
    parts = [part for part, n in zip(parts, distributed.all_reduce_sum(counts) if sharded else counts) if n]
    for i, part in enumerate(parts):
        fsdp.set_gradient_sync(model, i == len(parts) - 1)  # reduce-scatter once per step
        with compiled.active() if compiled else contextlib.nullcontext():
            with record_function("unisd/student_forward"):  # (its teacher forward is inside, named too)
                loss, m = micro_batch_loss(model, part, ctx)
            with record_function("unisd/student_backward"):
                loss.backward()
        student_tokens += sum(map(len, part.student_prompts)) + sum(map(len, part.completions))
        student_scored += sum(len(c) for c in part.completions)
        for key, value in m.items():
            sums[key] = value if key.endswith("_last") else sums.get(key, 0.0) + value
    return sums, student_tokens, student_scored


def oom_message(cfg: RunConfig, phase: str, step: int) -> str:
    """What to lower after running out of GPU memory in `phase` ("rollout" or "forward/backward"),
    with the current values, so the user can pick without reading the config."""
    lower = [f"rollout.max_new_tokens (now {cfg.rollout.max_new_tokens})",
             f"data.max_prompt_tokens (now {cfg.data.max_prompt_tokens})"]
    if phase == "rollout":  # the whole optimizer batch is sampled at once
        lower.insert(0, f"optim.batch_size (now {cfg.optim.batch_size}; rollout samples the whole batch at once)")
    else:
        lower.insert(0, f"optim.micro_batch_size (now {cfg.optim.micro_batch_size})")
        if cfg.teacher.aux.kind != "none":  # K auxiliary teacher forwards per row
            lower.append(f"teacher.aux.k (now {cfg.teacher.aux.k})")
    text = f"out of GPU memory in the {phase} of step {step}; lower {', '.join(lower)}"
    if not cfg.model.gradient_checkpointing:
        text += ", or set model.gradient_checkpointing=true (now false)"
    if phase != "rollout" and not cfg.optim.auto_micro_batch and cfg.distributed.strategy != "fsdp":
        text += ", or set optim.auto_micro_batch=true to halve the micro-batch on the spot"
    if (phase != "rollout" and cfg.rollout.source != "gold" and cfg.rollout.backend in ("auto", "fast")
            and not cfg.rollout.release_memory):
        text += ", or set rollout.release_memory=true to free the generator's KV caches before it"
    return text + f". Evaluation has its own setting: eval.batch_size (now {cfg.eval.batch_size})."


def _step_record(step, sums, n_tokens, roll_stats, grad_norm, scheduler, times, finite, rows) -> dict:
    t_gen, t_fb, t_sync, t_opt = times
    t_step = max(t_gen + t_fb + t_sync + t_opt, 1e-9)
    n = max(n_tokens, 1)
    record: dict[str, Any] = {"step": step}
    record["loss"] = sums.get("loss/total_sum", sums.get("loss/nll_sum", 0.0)) / n
    for key, value in sorted(sums.items()):
        if key.endswith("_last"):
            record[key[:-5]] = value
        elif key.startswith(("loss/", "divergence", "student/")) and key.endswith("_sum"):
            record[key[:-4]] = value / n
    if "clip/clipped_sum" in sums:
        record["clip/rate"] = sums["clip/clipped_sum"] / n
    if "agreement/weight_sum" in sums:
        record["agreement/weight_mean"] = sums["agreement/weight_sum"] / n
        record["agreement/rows_scored"] = sums.get("agreement/rows_scored_sum", 0.0)
    if "contrastive/rows_without_negative_sum" in sums:
        record["contrastive/rows_without_negative"] = sums["contrastive/rows_without_negative_sum"]
    record.update(roll_stats)
    record.update({"tokens": n_tokens, "rows": rows, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                   "finite": finite, "time/generate_s": t_gen, "time/forward_backward_s": t_fb,
                   "time/sync_s": t_sync, "time/optimizer_s": t_opt,
                   "tokens_per_s": n_tokens / t_step, "rows_per_s": rows / t_step,
                   "peak_memory_gb": peak_memory_gb()})
    return record


def _step_progress(show: bool, total: int, done: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not show, transient=False)
