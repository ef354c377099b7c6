"""The run directory's bookkeeping: its name, fingerprint, and the per-step metrics log.

`metrics.jsonl` always gets one JSON line per optimizer step; TensorBoard and Weights & Biases
get the same scalars when asked for (`output.loggers`) and installed. On resume the log is cut
back to the checkpoint's step, so the file matches an uninterrupted run line for line.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from unisd.fileio import write_json  # noqa: F401  (re-exported: the loop writes run files with it)


def make_run_dir(cfg) -> Path:
    name = cfg.output.name or f"{cfg.recipe}-{cfg.data.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.output.root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def peak_memory_gb() -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in GB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


def fingerprint() -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "torch": torch.__version__, "transformers": transformers.__version__,
                            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            info["git_sha"] = sha.stdout.strip()
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    from unisd import __version__

    info["unisd"] = __version__
    return info


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (the resumed checkpoint); drop a line cut mid-write."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            break
    path.write_text("".join(k + "\n" for k in kept))


class MetricsLog:
    """Appends step records to metrics.jsonl (and optional TensorBoard / W&B)."""

    def __init__(self, run_dir: str | Path, loggers: list[str], *, truncate_after: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        samples_path = Path(run_dir) / "samples.jsonl"
        for path in (self.path, samples_path):
            _truncate_jsonl(path, truncate_after)
        self.fh = open(self.path, "a")
        # one sampled completion per step, to read what the student is learning to say
        self.samples = open(samples_path, "a")
        self.tb = self.wandb = None
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("output.loggers has 'tensorboard' but it is not installed: "
                                  "pip install 'unisd[tensorboard]'") from err
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in loggers:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("output.loggers has 'wandb' but it is not installed: pip install 'unisd[wandb]'") from err
            self.wandb = wandb.init(project="unisd", name=Path(run_dir).name, dir=str(run_dir), resume="allow")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        scalars = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def write_sample(self, step: int, example_id: str, completion: str) -> None:
        self.samples.write(json.dumps({"step": step, "id": example_id, "completion": completion}) + "\n")
        self.samples.flush()

    def close(self) -> None:
        self.fh.close()
        self.samples.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class NullLog:
    """What the ranks other than 0 log under data parallelism: nothing (rank 0 logs global sums)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def write_sample(self, step: int, example_id: str, completion: str) -> None:
        pass

    def close(self) -> None:
        pass
