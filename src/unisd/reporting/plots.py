"""Pictures of one run, made from its run directory alone.

`plot_run(run_dir)` writes `training.png`: the loss, the sampled completion length (a collapse
signal: self-distillation can teach a student to skip its reasoning) and the repetition of
sampled text per step, and beside them the before/after accuracy with 95% intervals. It reads
only files in the run directory (metrics.jsonl, eval/*.json), so it can be rebuilt anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def plot_run(run_dir: str | Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir)
    evals = {name: json.loads((run_dir / "eval" / f"{name}.json").read_text())["aggregate"]
             for name in ("before", "after") if (run_dir / "eval" / f"{name}.json").exists()}
    if not rows and not evals:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    steps = [r["step"] for r in rows]
    panels = [("loss", "training loss"), ("rollout/completion_len", "sampled completion length (tokens)"),
              ("rollout/repetition", "repeated 4-grams in samples")]
    for ax, (key, title) in zip(axes[:3], panels):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(steps, [float("nan") if v is None else v for v in values], marker=".", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax = axes[3]
    if evals:
        names = list(evals)
        means = [100 * evals[n]["accuracy"]["mean"] for n in names]
        lo = [m - 100 * evals[n]["accuracy"]["lo"] for m, n in zip(means, names)]
        hi = [100 * evals[n]["accuracy"]["hi"] - m for m, n in zip(means, names)]
        ax.bar(names, means, yerr=[lo, hi], capsize=6, color=["#999999", "#3b7dd8"][: len(names)])
        for i, m in enumerate(means):
            ax.text(i, m + 1, f"{m:.1f}%", ha="center", fontsize=9)
        n = evals[names[0]]["accuracy"]["n"]
        ax.set_title(f"accuracy, 95% CI (n={n})", fontsize=10)
        ax.set_ylim(0, 100)
    fig.suptitle(run_dir.name, fontsize=11)
    fig.tight_layout()
    out = run_dir / "training.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
