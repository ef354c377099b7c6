"""Checkpoints that let a killed run continue exactly where it stopped.

A checkpoint is a folder `checkpoints/step-000123/` holding the trainable weights (the LoRA
adapter or the full model), the teacher's EMA state, optimizer and scheduler state, every RNG
state (python, numpy, torch, CUDA; of every rank under data parallelism), the data order and
position, and the step counters. It is
written to a temporary folder and renamed into place, so a crash mid-write leaves either the
previous checkpoint or the new one, never a half one; a folder without its `COMPLETE` marker is
ignored. Only the last `keep` checkpoints are kept.

This module does not decide *when* to save (the loop does) and does not know the model type:
weights go through `unisd.models.save_weights/load_weights`. Under FSDP (`training.fsdp`) rank 0
writes full tensors gathered from every rank, in the same files; such a checkpoint resumes only
under FSDP, since its optimizer state is keyed by parameter name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def rank_rng_state(rng: torch.Generator | None) -> dict[str, Any]:
    """This process's random streams: the global RNGs and the sampling generator `rng`."""
    return {"rng": rng_state(), "sampling_rng": rng.get_state() if rng is not None else None}


def save_checkpoint(run_dir: str | Path, step: int, *, model, optimizer, scheduler, teacher, state: dict[str, Any],
                    rng: torch.Generator | None, keep: int, rank_rngs: list[dict[str, Any]] | None = None,
                    sharded_state: tuple[dict, dict] | None = None) -> Path:
    """Write checkpoint `step` atomically and prune old ones. `state` is JSON-serialisable loop
    state (data order, position, counters); `rng` is the sampling generator. Under data
    parallelism rank 0 calls this with `rank_rngs`, every rank's `rank_rng_state` in rank order,
    and under FSDP with `sharded_state`, the full (weights, optimizer state) of `fsdp.full_state`."""
    from unisd.models import save_weights

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights, optimizer_state = sharded_state or (None, optimizer.state_dict())
    save_weights(model, tmp / "weights", state_dict=weights)
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                **rank_rng_state(rng), "ranks": rank_rngs, "sharded": sharded_state is not None},
               tmp / "trainer_state.pt")
    (tmp / "loop_state.json").write_text(json.dumps(state))
    (tmp / MARKER).write_text(str(step))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # leftovers of a crash during an earlier save
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler, teacher,
                    rng: torch.Generator | None, rank: int = 0, world_size: int = 1,
                    sharded: bool = False) -> dict[str, Any]:
    """Restore everything saved by `save_checkpoint`; returns the loop state. Under data
    parallelism each rank restores its own random streams, so the checkpoint must come from a run
    with the same number of processes. `sharded` (FSDP): the weights are not loaded here (the loop
    loads them into the whole model before sharding it) and the optimizer state is the full one."""
    from unisd.models import load_weights

    path = Path(path)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {MARKER} marker)")
    blob = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    ranks = blob.get("ranks") or [blob]
    if len(ranks) != world_size:
        from unisd.config.schema import ConfigError

        raise ConfigError(f"{path} was written by a run of {len(ranks)} process(es); resume it with the same "
                          f"number (torchrun --nproc_per_node {len(ranks)}), not {world_size}, so that every "
                          "random stream continues where it stopped")
    if bool(blob.get("sharded")) != sharded:
        from unisd.config.schema import ConfigError

        strategy = {True: "fsdp", False: "replicate"}
        raise ConfigError(f"{path} was written under distributed.strategy={strategy[not sharded]!r}; resume it "
                          f"with the same strategy, not {strategy[sharded]!r} (the optimizer state is stored "
                          "differently)")
    if sharded:
        from unisd.training import fsdp

        fsdp.load_optimizer_state(model, optimizer, blob["optimizer"])
    else:
        load_weights(model, path / "weights")
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if teacher is not None and blob["teacher"] is not None:
        teacher.load_state_dict(blob["teacher"])
    mine = ranks[rank]
    set_rng_state(mine["rng"])
    if rng is not None and mine["sampling_rng"] is not None:
        rng.set_state(mine["sampling_rng"])
    return json.loads((path / "loop_state.json").read_text())


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
