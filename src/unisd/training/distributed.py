"""Data parallelism by hand: one process per device, each holding a full replica of the model.

Started by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment); without it, or with
WORLD_SIZE=1, every function here is a no-op and the loop runs as a single process. Each rank
samples and scores its own slice of the optimizer batch; its loss is divided by the *global*
completion-token count (the sum over ranks), so the SUM of the ranks' gradients is exactly the
gradient of the whole batch in one process. `sync_gradients` forms that sum after accumulation,
so every rank clips and steps on identical gradients and the replicas stay identical.

Why not torch DDP: the student forward calls the decoder and the LM head directly
(`unisd.scoring.completion_outputs`), not the wrapped module's forward, where DDP prepares its
gradient reducer. An explicit all-reduce after accumulation is also what gradient accumulation
wants anyway (one sync per step, not one per micro-batch). Not covered here: several nodes (it
would work through torchrun, untested), the vLLM backend (refused). Sharded weights are
`distributed.strategy="fsdp"` (`training.fsdp`), which reuses this module for the tensors it
keeps whole (embedding, final norm, LM head) and for every collective outside the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Bucket size of the gradient all-reduce: large enough to amortise the per-call latency, small
# enough that the flat copy costs little memory (25M fp32 = 100 MB; DDP's default is 25 MB).
BUCKET_ELEMENTS = 25_000_000
# Rank 0 alone evaluates and builds caches while the others wait at a barrier; NCCL's default
# 10-minute timeout would kill a long base-model eval.
TIMEOUT = timedelta(hours=2)
# Steps between checks that the replicas still hold identical trainable weights (and the last step).
CHECK_EVERY = 100


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistContext:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        return cls(rank, world, local, device)


def init() -> DistContext:
    """Join the process group described by the torchrun environment (idempotent).

    NCCL on CUDA (one GPU per process, picked by LOCAL_RANK), gloo on CPU."""
    ctx = DistContext.from_env()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=ctx.device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return ctx


def shutdown() -> None:
    """Leave the process group once every rank is done: rank 0 prints the summary after the run
    while the others would otherwise tear their side down under it (a gloo rank was seen to abort
    in its C++ threads, "terminate called without an active exception", after a finished run)."""
    if dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over ranks (a new tensor on `tensor`'s device; `tensor` itself when alone)."""
    if not _active():
        return tensor
    buf = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects; `[obj]` when alone)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_over_ranks(*parts: dict[str, float]) -> tuple[dict[str, float], ...]:
    """Each dict of additive metric sums, summed key by key over ranks (one gather for all of them).

    Keys ending in "_last" (a value of the last micro-batch, not a sum) keep the first rank's value
    that has one. Alone, the dicts come back unchanged."""
    if not _active():
        return parts
    gathered = all_gather_object(parts)  # [rank][part] -> dict
    merged: list[dict[str, float]] = []
    for i in range(len(parts)):
        out: dict[str, float] = {}
        for rank_parts in gathered:
            for key, value in rank_parts[i].items():
                if key.endswith("_last"):
                    out.setdefault(key, value)
                else:
                    out[key] = out.get(key, 0) + value
        merged.append(out)
    return tuple(merged)


def barrier() -> None:
    if _active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (downloads, model conversion, context caches), the others after
    it, so they find its caches instead of building them concurrently."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def sync_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every `.grad` by its sum over ranks, in flat buckets of ~BUCKET_ELEMENTS per dtype.

    A parameter without a gradient on this rank (its rows had no loss tokens) contributes zeros:
    every rank must enter the same all-reduces in the same order, whatever its data."""
    if not _active():
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():  # dict order = first-seen order: identical on every rank
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in group:
            bucket.append(p)
            size += p.grad.numel()
            if size >= BUCKET_ELEMENTS:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)


def _reduce_bucket(bucket: list[torch.nn.Parameter]) -> None:
    grads = [p.grad for p in bucket]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def check_replicas_equal(named_params: list[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise RuntimeError on every rank unless every rank holds rank 0's values of these tensors.

    Compares a per-tensor float64 checksum (sum and sum of squares) bit for bit: cheap, and
    identical replicas give identical sums because each rank runs the same kernels on the same data."""
    if not _active() or not named_params:  # none: e.g. a LoRA adapter that FSDP shards whole
        return
    with torch.no_grad():
        local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                             for _, p in named_params]).to(_comm_device())
    reference = local.clone()
    dist.broadcast(reference, src=0)
    differs = (local != reference).any(dim=1)
    bad = all_reduce_sum(differs.any().to(torch.int64))
    if int(bad):
        names = [name for (name, _), d in zip(named_params, differs.tolist()) if d][:5]
        raise RuntimeError(f"data-parallel replicas differ ({what}): {int(bad)} rank(s) disagree with rank 0"
                           + (f", e.g. in {', '.join(names)}" if names else "")
                           + "; the model, LoRA init and data must be identical on every rank")


def dump_rank_params(named_params: list[tuple[str, torch.Tensor]], path: str | os.PathLike) -> None:
    """Save this rank's copy of the tensors (a debugging aid: UNISD_DEBUG_RANK_DUMP in the loop)."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: p.detach().cpu().clone() for name, p in named_params}, path)


def check_config(cfg, world_size: int) -> None:
    """The global batch must split evenly into ranks, and each rank's share into micro-batches;
    vLLM keeps its own engine per process and is not wired for this."""
    from unisd.config.schema import ConfigError

    if world_size <= 1:
        return
    batch_size, micro_batch_size = cfg.optim.batch_size, cfg.optim.micro_batch_size
    if batch_size % world_size:
        raise ConfigError(f"optim.batch_size ({batch_size}) must be a multiple of the number of processes "
                          f"({world_size}): it is the global batch, split evenly across ranks")
    if (batch_size // world_size) % micro_batch_size:
        per_rank = batch_size // world_size
        raise ConfigError(f"optim.batch_size / processes ({batch_size} / {world_size} = {per_rank} rows per rank) "
                          f"must be a multiple of optim.micro_batch_size ({micro_batch_size})")
    if cfg.rollout.backend == "vllm":
        raise ConfigError("rollout.backend: 'vllm' is not supported with several processes (torchrun); "
                          "use 'fast' or 'hf'")
