"""What is alive on the GPU at the peak of a training run, grouped by where it was allocated.

Reads a snapshot written by `UNISD_CUDA_MEMORY_SNAPSHOT=FILE unisd train ...` (torch's
`_record_memory_history` / `_dump_snapshot`), replays its allocation trace to find the moment of
peak allocated memory, and prints the blocks alive then, grouped by the innermost stack frame from
unisd (or else the innermost Python frame), largest first. Blocks allocated before recording began
(weights loaded before training) are counted from the snapshot's final segment state, as "before
recording".

    python benchmarks/memory_peak.py FILE [--top 25]
"""

from __future__ import annotations

import argparse
import pickle
from collections import defaultdict


def where(frames: list[dict]) -> str:
    for preferred in ("/unisd/", "/transformers/", "/peft/", "/torch/optim/"):
        for f in frames:
            name = f.get("filename", "")
            if preferred in name and "memory_peak" not in name:
                return f"{name.split(preferred)[-1]}:{f.get('line')} {f.get('name')} [{preferred.strip('/')}]"
    for f in frames:
        if f.get("filename", "").endswith(".py"):
            return f"{f['filename']}:{f.get('line')} {f.get('name')}"
    return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("snapshot")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    with open(args.snapshot, "rb") as fh:
        snap = pickle.load(fh)
    trace = [e for dev in snap["device_traces"] for e in dev]
    traced = {e["addr"] for e in trace if e["action"] == "alloc"}
    before = sum(b["size"] for seg in snap["segments"] for b in seg["blocks"]
                 if b["state"] == "active_allocated" and b["addr"] not in traced)
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    peak_live: dict[int, tuple[int, str]] = {}
    for e in trace:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], where(e.get("frames", [])))
            total += e["size"]
            if total > peak:
                peak, peak_live = total, dict(live)
        elif e["action"] == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    groups: dict[str, list[int]] = defaultdict(list)
    for size, site in peak_live.values():
        groups[site].append(size)
    print(f"allocated before recording: {before / 1e9:.3f} GB; traced peak: {peak / 1e9:.3f} GB; "
          f"sum: {(before + peak) / 1e9:.3f} GB")
    print(f"{'GB':>8} {'blocks':>7}  allocated at")
    for site, sizes in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:args.top]:
        print(f"{sum(sizes) / 1e9:8.3f} {len(sizes):7d}  {site}")


if __name__ == "__main__":
    main()
