"""Per-step profiles of the training loop (`output.profile_steps`), with torch.profiler.

Each listed step (1-based) is recorded on its own, from the start of its rollout to the end of its
optimizer step, so a slow step can be set beside a fast one: `profile/step-N.txt` (a table of the
operators and kernels by their own device time, or CPU time without a GPU, with input shapes) and
`profile/step-N.json.gz` (a Chrome / Perfetto trace, gzipped) in the run directory. Every process
records (a rank's files carry its rank: `step-N.rank-R.*`). The loop names its phases with
`record_function` ranges (`unisd/rollout`, `unisd/teacher_forward`, `unisd/student_forward`,
`unisd/student_backward`, `unisd/optimizer_step`): spans of the trace, and rows of the table when
they are among its longest. Profiling slows the step it records; the other steps run as without it.

Not here: the CUDA allocation history (`UNISD_CUDA_MEMORY_SNAPSHOT`, in the loop), timing of the
phases (every step's metrics.jsonl record has them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch


class StepProfiler:
    """Starts and stops a `torch.profiler.profile` around the steps in `steps` (1-based)."""

    def __init__(self, steps: Iterable[int], out_dir: Path, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        self.steps = set(steps)
        self.out_dir = out_dir
        self.on_cuda = device.type == "cuda"
        self.suffix = f".rank-{rank}" if world_size > 1 else ""
        self._prof: Any = None

    def start(self, step: int) -> None:
        """Begin recording if `step` is one of the profiled steps."""
        if step not in self.steps:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.on_cuda else [])
        self._prof = profile(activities=activities, record_shapes=True)
        self._prof.__enter__()

    def stop(self, step: int, header: str = "") -> Path | None:
        """End the recording of `step` (if one runs) and write its table and trace; returns the table."""
        if self._prof is None:
            return None
        prof, self._prof = self._prof, None
        if self.on_cuda:
            torch.cuda.synchronize()
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / f"step-{step}{self.suffix}"
        sort = "self_device_time_total" if self.on_cuda else "self_cpu_time_total"
        tables = [f"# step {step}{(': ' + header) if header else ''}",
                  f"## by {sort}", prof.key_averages().table(sort_by=sort, row_limit=60),
                  f"## by {sort}, grouped by input shapes",
                  prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=40)]
        table = stem.with_suffix(".txt")
        table.write_text("\n\n".join(tables) + "\n")
        prof.export_chrome_trace(f"{stem}.json.gz")
        return table

    def __enter__(self) -> "StepProfiler":
        return self

    def __exit__(self, *exc: Any) -> None:
        """A recording still running here belongs to a step that failed: stop it, write nothing."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.__exit__(None, None, None)
