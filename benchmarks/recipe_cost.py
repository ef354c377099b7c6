"""Per-step cost of every recipe relative to `sdft`, on a tiny random model on CPU.

For each recipe this trains a few steps of the same tiny Llama on the same arithmetic prompts
(with the same seed, hence the same rollouts for on-policy recipes) and reports, per optimizer
step: model forward passes outside generation (student + teacher-weight forwards), the sequences
they scored, and the wall time of the step split into generation and forward/backward. It
measures mechanics (how many extra forwards a mechanism costs), not quality.

    python benchmarks/recipe_cost.py [--steps 4] [--json benchmarks/results/recipe_cost_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import unisd.training.step as step_module
from unisd.config import load_config, recipe_names
from unisd.models.tiny import tiny_model
from unisd.training.loop import train

COUNTS = {"forwards": 0, "sequences": 0}
_original = step_module.completion_outputs


def counting_completion_outputs(model, view, **kwargs):
    COUNTS["forwards"] += 1
    COUNTS["sequences"] += int(view.input_ids.shape[0])
    return _original(model, view, **kwargs)


def scripted_negatives(examples, **_):
    """The tiny random model cannot write a usable negative, so the cost benchmark uses a scripted
    wrong demonstration per example (the gold one with the final number changed). The cost of the
    contrastive term does not depend on what the negative says."""
    from unisd.contexts.negatives import NegativeSet

    by_id = {ex.id: ex.demonstration.rsplit("####", 1)[0] + f"#### {int(ex.answer) + 1}" for ex in examples}
    return NegativeSet(by_id=by_id, missing=[], reasons={}, answers={ex.id: str(int(ex.answer) + 1)
                                                                      for ex in examples})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    step_module.completion_outputs = counting_completion_outputs
    import unisd.training.loop as loop_module

    loop_module.completion_outputs = counting_completion_outputs  # the teacher forward lives in loop.py
    import unisd.contexts

    unisd.contexts.build_negatives = scripted_negatives
    root = Path(tempfile.mkdtemp(prefix="recipe-cost-"))
    model, tokenizer = tiny_model("llama", seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = []
    recipes = [r for r in recipe_names() if r != "quickstart"]
    for recipe in ["sdft"] + [r for r in recipes if r != "sdft"]:
        overrides = [f"model.name={root / 'model'}", "data.task=arithmetic", "data.train_limit=64",
                     f"optim.steps={args.steps}", "optim.batch_size=8", "optim.micro_batch_size=4",
                     "rollout.max_new_tokens=16", "rollout.backend=hf", "eval.before=false", "eval.after=false",
                     f"output.root={root / 'runs'}", f"output.name={recipe}", "output.checkpoint_every=1000"]
        if recipe == "unisd_star":  # retrieval needs the packaged embedder; random keeps the bench self-contained
            overrides.append("teacher.aux.kind=random")
        cfg = load_config(recipe, overrides)
        COUNTS.update(forwards=0, sequences=0)
        start = time.perf_counter()
        result = train(cfg, show_progress=False)
        wall = time.perf_counter() - start
        metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        steady = metrics[1:] or metrics
        step_s = statistics.mean(m["time/generate_s"] + m["time/forward_backward_s"] + m["time/optimizer_s"]
                                 for m in steady)
        rows.append({"recipe": recipe, "forwards_per_step": COUNTS["forwards"] / args.steps,
                     "sequences_per_step": COUNTS["sequences"] / args.steps, "step_s": step_s,
                     "generate_s": statistics.mean(m["time/generate_s"] for m in steady),
                     "forward_backward_s": statistics.mean(m["time/forward_backward_s"] for m in steady),
                     "run_s_incl_setup": wall})
    base = rows[0]
    print(f"{'recipe':<14} {'fwd/step':>9} {'seqs/step':>10} {'step s':>8} {'x sdft':>7} {'gen s':>7} {'f+b s':>7}")
    for r in rows:
        r["time_vs_sdft"] = r["step_s"] / base["step_s"]
        print(f"{r['recipe']:<14} {r['forwards_per_step']:>9.1f} {r['sequences_per_step']:>10.1f} {r['step_s']:>8.3f} "
              f"{r['time_vs_sdft']:>7.2f} {r['generate_s']:>7.3f} {r['forward_backward_s']:>7.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"steps": args.steps, "batch_size": 8, "micro_batch_size": 4,
                                               "max_new_tokens": 16, "model": "tiny llama (2 layers, hidden 64)",
                                               "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
