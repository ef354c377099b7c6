"""Reference numbers: base models on every available task, through the same `evaluate` path as
tuned checkpoints. Loads each model once and runs all tasks, writing one JSON per (model, task)
and a markdown table.

    python benchmarks/base_models.py --models M1 [M2 ...] --data-dir DIR --out DIR [--limit N]

`--execute-code` is implied: the benchmark runs MBPP and HumanEval in the sandbox.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TASKS = {  # task -> (split, max_new_tokens)
    "arithmetic": ("test", 32),
    "gsm8k": ("test", 320),
    "cose": ("validation", 192),
    "gpqa": ("test", 256),
    "mbpp": ("test", 384),
    "humaneval": ("test", 384),
    "toolalpaca": ("test", 256),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    import torch

    from unisd.config.schema import ModelConfig
    from unisd.evaluation.runner import evaluate
    from unisd.models import load_model_and_tokenizer
    from unisd.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(ModelConfig(name=name), device=device)
        load_s = time.perf_counter() - t0
        label = Path(name).stem if name.endswith(".gguf") else name
        for task_name in args.tasks:
            split, max_new = TASKS[task_name]
            opts = {"execute": True} if task_name in ("mbpp", "humaneval") else {}
            task = get_task(task_name, **opts)
            examples = task.load(split, data_dir=args.data_dir, limit=args.limit, seed=0)
            t1 = time.perf_counter()
            result = evaluate(model, tokenizer, task, examples, max_new_tokens=max_new, batch_size=args.batch_size,
                              backend=args.backend, description=f"{label}/{task_name}", show_progress=False)
            agg = result["aggregate"]
            agg.update(model=label, split=split, max_new_tokens=max_new, wall_s=time.perf_counter() - t1,
                       model_load_s=load_s, device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu")
            (out / f"{label}__{task_name}.json").write_text(json.dumps(result))
            rows.append(agg)
            acc = agg["accuracy"]
            extra = "  ".join(f"{k} {100 * v['mean']:.1f}" for k, v in agg.items()
                              if isinstance(v, dict) and "mean" in v and k != "accuracy")
            print(f"{label:<40} {task_name:<11} n={agg['n']:<5} acc {100 * acc['mean']:5.1f} "
                  f"[{100 * acc['lo']:.1f}, {100 * acc['hi']:.1f}]  {extra}  ({agg['wall_s']:.0f} s)", flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
