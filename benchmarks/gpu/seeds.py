"""Write the seed-replication grid once the one-seed grid has results: UniSD* and the strongest
baseline (highest mean accuracy over the tasks it finished, among sft, ssd, sdft, gkd, opsd; sdft
when none finished) get seeds 2 and 3, with qwen_baselines.yaml's settings.

    python benchmarks/gpu/seeds.py SWEEP_ROOT OUT.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

from unisd.reporting import tables as T

BASELINES = ("sft", "ssd", "sdft", "gkd", "opsd")


def strongest(root: str) -> tuple[str, dict]:
    try:
        runs = [r for r in T.load_runs([root]) if "qwen" in r.model.lower() and not r.transfer]
    except FileNotFoundError:
        runs = []
    scores: dict[str, list[float]] = {}
    for row in T.accuracy_rows(runs) if runs else []:
        if row["method"] in BASELINES and row["accuracy"] is not None:
            scores.setdefault(row["method"], []).append(row["accuracy"])
    most = max((len(v) for v in scores.values()), default=0)
    means = {m: float(np.mean(v)) for m, v in scores.items() if len(v) == most and most > 0}
    return (max(means, key=means.get) if means else "sdft"), means


def main() -> None:
    root, out = sys.argv[1], sys.argv[2]
    best, means = strongest(root)
    spec = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "qwen_baselines.yaml").read_text())
    spec.update(recipes=["unisd_star", best], seeds=[2, 3])
    Path(out).write_text(yaml.safe_dump(spec, sort_keys=False))
    print(f"strongest baseline {best} (mean accuracy over tasks: "
          f"{', '.join(f'{m} {100 * v:.1f}' for m, v in sorted(means.items()))}); wrote {out}")


if __name__ == "__main__":
    main()
