"""Measured resource use of a block of work: time, tokens/s, peak memory, GPU energy.

`ResourceMeter` is a context manager around one phase (an eval, a training run). It measures,
never estimates: the reference derives energy from wall time x TDP x utilisation x PUE
(spec §6); here energy is the difference of NVML's total-energy counter
(`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded) over the visible GPUs,
and is None, with the reason, when there is no GPU, no `nvidia-ml-py` (imported lazily) or the
GPU does not report it. Nothing is converted to CO2 or kWh.

Peak memory is CUDA `max_memory_allocated` (its counter is reset on entry, so it is this
phase's peak; `process_peak_memory_gb` keeps the maximum with the peak before entry, since the
counter cannot be restored) or, on CPU, the process's peak resident set size (`ru_maxrss`, a
lifetime peak that cannot be reset: it bounds this phase's peak from above).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any

import torch


def _visible_nvml_handles(pynvml) -> list:
    """NVML handles of the GPUs this process can see (CUDA_VISIBLE_DEVICES as indices or UUIDs;
    NVML itself enumerates every GPU of the host)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    handles = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        if entry.isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)))
        else:
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(entry))
    return handles


class _Energy:
    """Sum of NVML total-energy counters (mJ) over visible GPUs; `error` says why it is unavailable."""

    def __init__(self) -> None:
        self.pynvml = None
        self.handles: list = []
        self.error: str | None = None
        if not torch.cuda.is_available():
            self.error = "no CUDA device"
            return
        try:
            import pynvml  # from the nvidia-ml-py package
        except ImportError:
            self.error = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.handles = _visible_nvml_handles(pynvml)
        except Exception as err:  # NVMLError subclasses; a missing driver library
            self.error = f"NVML unavailable: {err}"
            self.pynvml = None

    def read_mj(self) -> int | None:
        if self.pynvml is None:
            return None
        try:
            return sum(int(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles)
        except Exception as err:  # e.g. NVML_ERROR_NOT_SUPPORTED on pre-Volta GPUs or MIG slices
            self.error = f"NVML energy counter unavailable: {err}"
            return None

    def processes(self) -> int | None:
        """Compute processes on the visible GPUs now (the energy counter is per GPU, so it also
        counts whatever else runs there)."""
        if self.pynvml is None:
            return None
        try:
            return max(len(self.pynvml.nvmlDeviceGetComputeRunningProcesses(h)) for h in self.handles)
        except Exception:  # not supported in some containers
            return None

    def close(self) -> None:
        if self.pynvml is not None:
            try:
                self.pynvml.nvmlShutdown()
            except Exception:
                pass
            self.pynvml = None


def _rss_peak_gb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes on macOS, KiB on Linux


class ResourceMeter:
    """Measures a block: `with ResourceMeter() as meter: ...; meter.add_tokens(n)`; then `as_dict()`.

    Args:
        device: the torch device the work runs on; CUDA memory is read there (None: the current
            CUDA device when CUDA is available, else CPU).
        energy: read the NVML energy counters (on by default; ignored without a GPU).
    """

    def __init__(self, device: torch.device | str | None = None, *, energy: bool = True):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.use_energy = energy
        self.tokens = 0
        self._energy: _Energy | None = None
        self._start = self._cpu_start = 0.0
        self._energy_start: int | None = None
        self.wall_s = self.cpu_s = 0.0
        self.peak_memory_gb = self.process_peak_memory_gb = 0.0
        self.energy_j: float | None = None
        self.energy_error: str | None = None
        self.gpu_processes: int | None = None
        self._peak_before = 0.0

    def add_tokens(self, n: int) -> None:
        """Count `n` tokens processed (generated, or trained on) inside the block."""
        self.tokens += int(n)

    def __enter__(self) -> "ResourceMeter":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._peak_before = torch.cuda.max_memory_allocated(self.device) / 1e9
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.use_energy:
            self._energy = _Energy()
            self._energy_start = self._energy.read_mj()
            self.gpu_processes = self._energy.processes()
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # queued kernels belong to this block's time and energy
        self.wall_s = time.perf_counter() - self._start
        self.cpu_s = time.process_time() - self._cpu_start
        if self.cuda:
            self.peak_memory_gb = torch.cuda.max_memory_allocated(self.device) / 1e9
            self.process_peak_memory_gb = max(self.peak_memory_gb, self._peak_before)
        else:
            self.peak_memory_gb = self.process_peak_memory_gb = _rss_peak_gb()
        if self._energy is not None:
            end = self._energy.read_mj()
            if end is not None and self._energy_start is not None:
                self.energy_j = (end - self._energy_start) / 1000.0
            self.energy_error = self._energy.error
            seen = [n for n in (self.gpu_processes, self._energy.processes()) if n is not None]
            self.gpu_processes = max(seen) if seen else None
            self._energy.close()
        else:
            self.energy_error = "not measured (energy=False)"
        return False

    def as_dict(self) -> dict[str, Any]:
        """The measurements, JSON-ready. energy_j is None (with energy_unavailable saying why)
        whenever it was not measured; it is never estimated."""
        out: dict[str, Any] = {
            "wall_s": self.wall_s, "cpu_s": self.cpu_s, "tokens": self.tokens,
            "tokens_per_s": self.tokens / self.wall_s if self.wall_s > 0 else 0.0,
            "peak_memory_gb": self.peak_memory_gb, "process_peak_memory_gb": self.process_peak_memory_gb,
            "peak_memory_kind": "cuda_max_allocated" if self.cuda else "process_peak_rss",
            "device": str(self.device), "energy_j": self.energy_j,
        }
        if self.energy_j is None:
            out["energy_unavailable"] = self.energy_error
        else:
            out["energy_source"] = "nvml_total_energy"
            out["gpu_processes"] = self.gpu_processes  # >1: the GPU's counter also counted other processes
            out["joules_per_token"] = self.energy_j / self.tokens if self.tokens else None
        return out
