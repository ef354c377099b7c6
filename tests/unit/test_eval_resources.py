"""ResourceMeter: wall/CPU time, tokens/s, peak memory, and GPU energy read from NVML counters
(a fake pynvml here), never estimated."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from unisd.evaluation.resources import ResourceMeter


def test_cpu_meter_reports_time_rss_and_no_energy():
    with ResourceMeter("cpu") as meter:
        x = torch.randn(256, 256)
        for _ in range(20):
            x = x @ x.T / 256
        time.sleep(0.01)
        meter.add_tokens(50)
    out = meter.as_dict()
    assert out["wall_s"] >= 0.01 and out["cpu_s"] > 0
    assert out["tokens"] == 50 and out["tokens_per_s"] == pytest.approx(50 / out["wall_s"])
    assert out["peak_memory_kind"] == "process_peak_rss" and out["peak_memory_gb"] > 0
    assert out["energy_j"] is None and out["energy_unavailable"]
    assert "joules_per_token" not in out


def fake_pynvml(counters_mj: list[list[int]]):
    """A pynvml stand-in whose device i reports counters_mj[i] on successive reads."""
    mod = types.ModuleType("pynvml")
    reads = [iter(c) for c in counters_mj]
    mod.calls = []
    mod.nvmlInit = lambda: mod.calls.append("init")
    mod.nvmlShutdown = lambda: mod.calls.append("shutdown")
    mod.nvmlDeviceGetCount = lambda: len(counters_mj)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetHandleByUUID = lambda uuid: int(uuid.rsplit("-", 1)[-1])
    mod.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(reads[h])
    return mod


@pytest.mark.parametrize("visible, expected_j", [(None, 3.0 + 10.0), ("1", 10.0), ("GPU-x-0", 3.0)])
def test_energy_is_the_nvml_counter_difference_over_visible_gpus(monkeypatch, visible, expected_j):
    nvml = fake_pynvml([[1000, 4000], [50_000, 60_000]])  # mJ: device 0 uses 3 J, device 1 uses 10 J
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with ResourceMeter("cpu") as meter:  # memory on CPU; energy from the (fake) GPUs
        meter.add_tokens(13)
    out = meter.as_dict()
    assert out["energy_j"] == pytest.approx(expected_j)
    assert out["energy_source"] == "nvml_total_energy"
    assert out["joules_per_token"] == pytest.approx(expected_j / 13)
    assert nvml.calls == ["init", "shutdown"]


def test_missing_nvml_gives_none_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with ResourceMeter("cpu") as meter:
        pass
    out = meter.as_dict()
    assert out["energy_j"] is None and "nvidia-ml-py" in out["energy_unavailable"]


def test_unsupported_energy_counter_gives_none(monkeypatch):
    nvml = fake_pynvml([[1000, 2000]])

    def unsupported(handle):
        raise RuntimeError("Not Supported")

    nvml.nvmlDeviceGetTotalEnergyConsumption = unsupported
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with ResourceMeter("cpu") as meter:
        pass
    assert meter.as_dict()["energy_j"] is None
    assert "Not Supported" in meter.as_dict()["energy_unavailable"]
