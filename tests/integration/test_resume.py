"""Crash safety: `kill -9` mid-run, `unisd train --resume`, and the metrics match a run that was
never interrupted, step by step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DETERMINISTIC_KEYS = ("loss", "tokens", "rollout/completion_len", "grad_norm", "lr", "loss/divergence")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unisd", *args]


def _overrides(model_dir: Path, root: Path, name: str, recipe_extra=()) -> list[str]:
    sets = [f"model.name={model_dir}", "data.task=arithmetic", "data.train_limit=24", "optim.steps=6",
            "optim.batch_size=4", "optim.micro_batch_size=2", "rollout.max_new_tokens=8", "eval.before=false",
            "eval.after=false", f"output.root={root}", f"output.name={name}", "output.checkpoint_every=2",
            "model.lora_r=4", *recipe_extra]
    return [x for s in sets for x in ("--set", s)]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.parametrize("recipe", ["sdft", "ema"])
def test_kill_and_resume_matches_uninterrupted(tiny_model_dir, tmp_path, recipe):
    ref = subprocess.run(_cli("train", recipe, *_overrides(tiny_model_dir, tmp_path, "ref")), env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(_cli("train", recipe, *_overrides(tiny_model_dir, tmp_path, "crash")), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "crash"
    deadline = time.time() + 300
    try:
        # kill -9 once step 3 is logged: after the step-2 checkpoint, before the step-4 one
        while time.time() < deadline:
            if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("training finished or died before it could be killed")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert len(_metrics(run)) < 6

    resumed = subprocess.run(_cli("train", "--resume", str(run)), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, want = _metrics(run), _metrics(tmp_path / "ref")
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(got, want):
        for key in DETERMINISTIC_KEYS:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)


def test_partial_checkpoint_is_ignored(tiny_model_dir, tmp_path):
    """A checkpoint folder without its COMPLETE marker (crash mid-write) is never resumed from."""
    from unisd.training.checkpoint import latest_checkpoint

    run = tmp_path / "r"
    (run / "checkpoints" / "step-000004").mkdir(parents=True)
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "checkpoints" / "step-000002" / "COMPLETE").write_text("2")
    assert latest_checkpoint(run).name == "step-000002"
