"""The aggregate tables of docs/results.md's issue-7 section, from the grid's run directories.

`unisd report` prints per-run tables and the focus method's comparisons; this prints what the
results page adds on top, from the same files through `unisd.reporting.tables`: the task-averaged
paired difference of every method against sdft, base and sft, the per-task differences of each
UniSD component against sdft, and per-method means of retention and cost, for one model.

Usage: tar -xJf benchmarks/results/sweep_h200.tar.xz -C /tmp
       python benchmarks/grid_aggregates.py /tmp/sweep_h200 [--model qwen]
"""

from __future__ import annotations

import argparse

import numpy as np

from unisd.reporting import tables as T

METHODS = ["sft", "ssd", "sdft", "gkd", "opsd", "ema", "agreement_tok", "agreement_seq", "contrastive",
           "match_joint", "match_repr", "clip", "unisd_star"]
COMPONENTS = ["ema", "agreement_tok", "agreement_seq", "contrastive", "match_joint", "match_repr", "clip",
              "unisd_star"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--model", default="qwen", help="a substring of the model name (default: qwen)")
    args = ap.parse_args()
    runs = [r for r in T.load_runs([args.runs]) if args.model.lower() in r.model.lower()]

    print("== paired, average over the tasks (pp, 95% CI)")
    for m in METHODS:
        for other in ("sdft", "base", "sft"):
            if m == other:
                continue
            for r in T.paired_against(runs, m, other):
                if r["task"].startswith("average"):
                    print(f"{m:14s} - {other:5s}: {100 * r['diff']:+.1f} [{100 * r['ci_lo']:+.1f}, "
                          f"{100 * r['ci_hi']:+.1f}] {r['verdict']} ({r['task']})")
    print("== per task, against sdft (pp, 95% CI)")
    for m in COMPONENTS:
        rows = [r for r in T.paired_against(runs, m, "sdft") if not r["task"].startswith("average")]
        print(m, " | ".join(f"{r['task']}: {100 * r['diff']:+.1f} [{100 * r['ci_lo']:+.1f}, {100 * r['ci_hi']:+.1f}]"
                            for r in rows))
    print("== retention, mean over the trained tasks' runs")
    by: dict[str, list] = {}
    for r in T.retention_rows(runs):
        if "(from " not in str(r["task"]):
            by.setdefault(r["method"], []).append(r)
    for m in METHODS:
        if rs := by.get(m):
            print(f"{m:14s} runs={len(rs)} ppl_ret={np.mean([x['ppl_ret_mean'] for x in rs]):.2f} "
                  f"jsd={np.mean([x['jsd_mean'] for x in rs]):.4f} gold_fit={np.mean([x['gold_fit_ppl_mean'] for x in rs]):.2f}")
    print("== cost, mean over runs (energy: runs not resumed)")
    byc: dict[str, list] = {}
    for r in T.cost_rows(runs):
        byc.setdefault(r["method"], []).append(r)
    for m in METHODS:
        if rs := byc.get(m):
            energy = [x["train_energy_j"] for x in rs if x["train_energy_j"] is not None and not x["partial"]]
            print(f"{m:14s} runs={len(rs)} step_s={np.mean([x['step_seconds'] for x in rs]):.0f} "
                  f"tokens={np.mean([x['tokens'] for x in rs]):.0f} peak_gb={np.mean([x['peak_memory_gb'] for x in rs]):.1f} "
                  f"energy_kj={np.mean(energy) / 1000 if energy else float('nan'):.1f} (runs={len(energy)})")


if __name__ == "__main__":
    main()
