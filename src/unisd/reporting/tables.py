"""The numbers of a report, read from run directories only.

`load_runs(paths)` finds run directories (a folder holding config.yaml and summary.json, at any
depth under the given paths) and reads their files; the table functions turn a list of runs
into rows (plain dicts, ready for Markdown or CSV):

- `accuracy_rows`: accuracy after training per (task, model, method), plus the base model as
  method "base" (from eval/before.json); over several seeds, the mean of the seed accuracies,
  their spread, and an item bootstrap interval over the pooled (seed, item) units.
- `paired_rows`: a focus method against the strongest other method of each (task, model),
  paired on the same (seed, item id) units (`evaluation.stats.paired_bootstrap`).
- `retention_rows`, `cost_rows`, `collapse_rows`: one row per run.

Nothing here is estimated: a value a run did not record (energy on a CPU, retention of a run
evaluated without its base) is None and printed as "n/a". Items are matched on (seed, id)
because an eval set may depend on the seed (the arithmetic task draws new problems per seed
under the same ids), so "test-0" of seed 1 and of seed 2 are different questions.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from unisd.evaluation.collapse import METRICS, RULE
from unisd.evaluation.stats import mean_ci, paired_bootstrap

BASE = "base"


@dataclass
class Run:
    path: Path
    method: str
    task: str
    model: str
    seed: int
    summary: dict
    before: dict | None = None
    after: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    label: str = ""
    """How tables name the run: its folder name, with the parent's when two runs share it."""
    model_label: str = ""
    """How tables name the model: the basename of model.name, or all of it when two models share it."""
    transfer: bool = False
    """A view of a run's evaluation on one of its eval.extra_tasks: task is "<extra> (from <trained>)";
    it has no metrics or cost of its own."""

    @property
    def name(self) -> str:
        return self.path.name


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories at or under `paths`, sorted, each once; checkpoints are not searched."""
    found: dict[Path, None] = {}
    for top in map(Path, paths):
        if not top.exists():
            raise FileNotFoundError(f"{top}: no such file or directory")
        for folder, dirs, files in os.walk(top):
            if "config.yaml" in files and "summary.json" in files:
                found[Path(folder).resolve()] = None
                dirs[:] = []  # a run's own subfolders hold no runs
            else:
                dirs.sort()
    return sorted(found)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: the rest is not trusted
                break
    return rows


def load_run(path: str | Path) -> Run:
    path = Path(path)
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    summary = json.loads((path / "summary.json").read_text())
    return Run(path=path, method=str(config.get("recipe") or summary.get("recipe")),
               task=str(config.get("data", {}).get("task") or summary.get("task")),
               model=str(config.get("model", {}).get("name") or summary.get("model")),
               seed=int(config.get("optim", {}).get("seed", 0)), summary=summary,
               before=_read_json(path / "eval" / "before.json"),
               after=_read_json(path / "eval" / "after.json"),
               metrics=_read_metrics(path / "metrics.jsonl"))


def transfer_runs(run: Run) -> list[Run]:
    """One view per extra (out-of-distribution) task the run was evaluated on."""
    views = []
    for name, agg in sorted((run.summary.get("extra_tasks") or {}).items()):
        folder = run.path / "eval" / name
        views.append(Run(path=run.path, method=run.method, task=f"{name} (from {run.task})", model=run.model,
                         seed=run.seed, summary={"before": (agg or {}).get("before"),
                                                 "after": (agg or {}).get("after")},
                         before=_read_json(folder / "before.json"), after=_read_json(folder / "after.json"),
                         transfer=True))
    return views


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    trained = [load_run(p) for p in find_run_dirs(paths)]
    runs = trained + [view for run in trained for view in transfer_runs(run)]
    names = [r.name for r in trained]
    short = {m: Path(m.rstrip("/")).name or m for m in {r.model for r in runs}}
    for run in runs:
        run.label = run.name if names.count(run.name) == 1 else f"{run.path.parent.name}/{run.name}"
        run.model_label = short[run.model] if list(short.values()).count(short[run.model]) == 1 else run.model
    return sorted(runs, key=lambda r: (r.task, r.model, r.method, r.seed, r.label))


def duplicate_notes(runs: list[Run]) -> list[str]:
    """Runs that the tables cannot tell apart: same recipe, task, model and seed (e.g. one recipe
    with different --set values). They are counted as extra seeds of one method, so say so."""
    seen: dict[tuple, list[str]] = {}
    for run in runs:
        if run.transfer:
            continue
        seen.setdefault((run.task, run.model_label, run.method, run.seed), []).append(run.label)
    return [f"runs {', '.join(names)} share task {key[0]}, model {key[1]}, recipe {key[2]} and seed "
            f"{key[3]}: the tables count them as seeds of one method; give the variants their own recipe "
            "files to separate them" for key, names in seen.items() if len(names) > 1]


# ---- per-seed evaluations of each (task, model, method), the base included ----

@dataclass
class SeedEval:
    seed: int
    run: str
    aggregate: dict
    items: dict[tuple[int, str], float]
    """(seed, item id) -> correctness in [0, 1]; empty when only the aggregate was kept."""


def _seed_eval(run: Run, result: dict | None, fallback: dict | None) -> SeedEval | None:
    aggregate = (result or {}).get("aggregate") or fallback
    if not aggregate or "accuracy" not in aggregate:
        return None
    items = {(run.seed, str(it["id"])): float(it["correct"]) for it in (result or {}).get("items", [])}
    return SeedEval(run.seed, run.label or run.name, aggregate, items)


def evaluations(runs: list[Run]) -> dict[tuple[str, str, str], list[SeedEval]]:
    """(task, model, method) -> one SeedEval per seed. The base model's rows come from the
    runs' eval/before.json, one per (task, model, seed), from the first such run (every
    run of that seed evaluated the same base weights on the same items)."""
    out: dict[tuple[str, str, str], list[SeedEval]] = {}
    for run in runs:
        after = _seed_eval(run, run.after, run.summary.get("after"))
        if after is not None:
            out.setdefault((run.task, run.model, run.method), []).append(after)
        base = _seed_eval(run, run.before, run.summary.get("before"))
        group = out.setdefault((run.task, run.model, BASE), [])
        if base is not None and run.seed not in {e.seed for e in group}:
            group.append(base)
    return {k: sorted(v, key=lambda e: e.seed) for k, v in out.items() if v}


def _pooled_items(evals: list[SeedEval]) -> dict[tuple[int, str], float]:
    pooled: dict[tuple[int, str], float] = {}
    for e in evals:
        pooled.update(e.items)
    return pooled


def accuracy_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Accuracy per (task, model, method); fractions in [0, 1]."""
    labels = {r.model: r.model_label for r in runs}
    rows = []
    for (task, model, method), evals in evaluations(runs).items():
        seed_means = [e.aggregate["accuracy"]["mean"] for e in evals]
        if len(evals) == 1:
            ci = evals[0].aggregate["accuracy"]
        elif all(e.items for e in evals):
            ci = mean_ci(list(_pooled_items(evals).values()))
        else:
            ci = {"lo": math.nan, "hi": math.nan}
        rows.append({"task": task, "model": labels[model], "model_name": model, "method": method,
                     "seeds": [e.seed for e in evals], "n_seeds": len(evals),
                     "n": [int(e.aggregate["accuracy"]["n"]) for e in evals],
                     "accuracy": float(np.mean(seed_means)), "ci_lo": ci["lo"], "ci_hi": ci["hi"],
                     "seed_sd": float(np.std(seed_means, ddof=1)) if len(evals) > 1 else None,
                     "seed_min": min(seed_means), "seed_max": max(seed_means), "seed_accuracies": seed_means,
                     "runs": [e.run for e in evals]})
    return sorted(rows, key=lambda r: (r["task"], r["model_name"], r["method"] != BASE, r["method"]))


def paired_rows(runs: list[Run], focus: str) -> tuple[list[dict[str, Any]], list[str]]:
    """`focus` against the other method (base included) with the highest accuracy on each
    (task, model), on their common (seed, item) units; the accuracies in a row are those on the
    common units, so they differ by exactly `diff`. Returns the rows and notes on what could not
    be compared."""
    labels = {r.model: r.model_label for r in runs}
    evals = evaluations(runs)
    accuracy = {(r["task"], r["model_name"], r["method"]): r["accuracy"] for r in accuracy_rows(runs)}
    rows, notes = [], []
    pairs = sorted({(t, m) for t, m, _ in evals})
    if not any(meth == focus for _, _, meth in evals):
        notes.append(f"focus method {focus!r} is not among these runs "
                     f"(methods: {', '.join(sorted({m for _, _, m in evals}))})")
        return rows, notes
    for task, model in pairs:
        if (task, model, focus) not in evals:
            continue
        others = [(accuracy[(task, model, m)], m) for t, mo, m in evals
                  if (t, mo) == (task, model) and m != focus]
        if not others:
            notes.append(f"{task} / {model}: no other method to compare {focus} with")
            continue
        _, best = min(others, key=lambda am: (-am[0], am[1]))  # ties: the first name
        pair = _paired(evals[(task, model, focus)], evals[(task, model, best)])
        if pair is None:
            notes.append(f"{task} / {model}: {focus} and {best} share no (seed, item) pairs (per-item files "
                         "missing, or no seed in common)")
            continue
        a, b, seeds = pair
        res = paired_bootstrap(a, b)
        rows.append({"task": task, "model": labels[model], "focus": focus,
                     "focus_accuracy": float(np.mean(a)), "other": best, "other_accuracy": float(np.mean(b)),
                     "diff": res["diff"], "ci_lo": res["lo"], "ci_hi": res["hi"], "n": res["n"],
                     "seeds": seeds, "p_not_better": res["p_not_better"], "verdict": _verdict(res["lo"], res["hi"])})
    return rows, notes


def _paired(mine: list[SeedEval], theirs: list[SeedEval]) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """Per-item correctness of two methods on their common (seed, item) units, and those seeds."""
    a_items, b_items = _pooled_items(mine), _pooled_items(theirs)
    common = sorted(set(a_items) & set(b_items))
    if not common:
        return None
    return (np.array([a_items[k] for k in common]), np.array([b_items[k] for k in common]),
            sorted({s for s, _ in common}))


def _verdict(lo: float, hi: float) -> str:
    return "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"


def paired_against(runs: list[Run], focus: str, against: str, *, n_boot: int = 5000, seed: int = 0
                   ) -> list[dict[str, Any]]:
    """`focus` against one named method on every (task, model) both have, paired on common
    (seed, item) units, plus per model an "average" row: the difference of the accuracies averaged
    over those tasks (the paper's Avg column), with a 95% interval from a bootstrap that resamples
    items within each task."""
    labels = {r.model: r.model_label for r in runs}
    evals = evaluations(runs)
    rows, per_model = [], {}
    for task, model in sorted({(t, m) for t, m, _ in evals}):
        if (task, model, focus) not in evals or (task, model, against) not in evals:
            continue
        pair = _paired(evals[(task, model, focus)], evals[(task, model, against)])
        if pair is None:
            continue
        a, b, seeds = pair
        res = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
        rows.append({"task": task, "model": labels[model], "focus": focus, "against": against,
                     "focus_accuracy": float(a.mean()), "other_accuracy": float(b.mean()), "diff": res["diff"],
                     "ci_lo": res["lo"], "ci_hi": res["hi"], "n": res["n"],
                     "seeds": seeds, "p_not_better": res["p_not_better"]})
        per_model.setdefault(model, []).append((a, b))
    rng = np.random.default_rng(seed)
    for model, pairs in per_model.items():
        boots = np.mean([(a - b)[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
                         for a, b in pairs], axis=0)
        diff = float(np.mean([(a - b).mean() for a, b in pairs]))
        rows.append({"task": f"average ({len(pairs)} tasks)", "model": labels[model], "focus": focus,
                     "against": against, "focus_accuracy": float(np.mean([a.mean() for a, _ in pairs])),
                     "other_accuracy": float(np.mean([b.mean() for _, b in pairs])), "diff": diff,
                     "ci_lo": float(np.percentile(boots, 2.5)), "ci_hi": float(np.percentile(boots, 97.5)),
                     "n": int(sum(a.size for a, _ in pairs)), "seeds": [],
                     "p_not_better": float((boots <= 0).mean())})
    for row in rows:
        row["verdict"] = _verdict(row["ci_lo"], row["ci_hi"])
    return rows


# ---- one row per run ----

def _run_keys(run: Run) -> dict[str, Any]:
    acc = ((run.after or {}).get("aggregate") or run.summary.get("after") or {}).get("accuracy")
    return {"run": run.label, "task": run.task, "model": run.model_label, "model_name": run.model,
            "method": run.method, "seed": run.seed, "accuracy": acc["mean"] if acc else None}


RETENTION_KEYS = ("ppl_ret_mean", "ppl_ret_corpus", "jsd_mean", "gold_fit_ppl_mean", "gold_fit_ppl_corpus")


def retention_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """aggregate["retention"] of each run's eval/after.json (runs without one are left out)."""
    rows = []
    for run in runs:
        ret = ((run.after or {}).get("aggregate") or run.summary.get("after") or {}).get("retention")
        if ret:
            rows.append({**_run_keys(run), "against": ret.get("base"),
                         **{k: ret.get(k) for k in RETENTION_KEYS}})
    return rows


def _energy(*resources: dict | None) -> float | None:
    measured = [r["energy_j"] for r in resources if r and r.get("energy_j") is not None]
    return float(sum(measured)) if measured else None


def _step_seconds(record: dict) -> float:
    return sum(float(record.get(k) or 0.0) for k in ("time/generate_s", "time/forward_backward_s",
                                                    "time/sync_s", "time/optimizer_s"))


def cost_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Steps, seconds, tokens (sum of metrics.jsonl "tokens"), peak memory and measured energy:
    training energy where the summary recorded resources, eval energy from the NVML counters of
    eval/before.json and eval/after.json. `step_seconds` sums the per-step phase times of
    metrics.jsonl, which survive a resume; `seconds` and the training energy cover the last
    process only, so a resumed run is marked `partial` (its training-meter tokens fall short of
    metrics.jsonl's). `gpu_processes` > 1: the GPU's energy counter also counted other processes."""
    rows = []
    for run in (r for r in runs if not r.transfer):
        # a base evaluation reused from a sweep's shared cache was paid for by another run
        own = [e for e in (run.before, run.after) if e and "reused_from" not in e]
        evals = [(e.get("aggregate") or {}).get("resources") for e in own]
        kind = next((r.get("peak_memory_kind") for r in evals if r), None)
        tokens = [r["tokens"] for r in run.metrics if isinstance(r.get("tokens"), (int, float))]
        train = run.summary.get("resources") or {}
        rows.append({**_run_keys(run), "steps": run.summary.get("steps"),
                     "seconds": run.summary.get("seconds"),
                     "step_seconds": sum(_step_seconds(r) for r in run.metrics) if run.metrics else None,
                     "tokens": int(sum(tokens)) if tokens else None,
                     "partial": bool(train) and int(train.get("tokens") or 0) < int(sum(tokens)),
                     "peak_memory_gb": run.summary.get("peak_memory_gb"), "memory_kind": kind,
                     "train_energy_j": _energy(train), "gpu_processes": train.get("gpu_processes"),
                     "eval_energy_j": _energy(*evals)})
    return rows


def _window_means(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values[:RULE.window])), float(np.mean(values[-RULE.window:]))


def collapse_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Completion length, repetition and student entropy of the sampled rollouts, first vs last
    `RULE.window` steps, flagged by the same rule as the training loop's live watch.
    Steps without on-policy samples (SFT, GKD's gold half of a batch decided per row) are left
    out: their completion length is 0 by construction, not a collapse."""
    rows = []
    for run in (r for r in runs if not r.transfer):
        sampled = [r for r in run.metrics if r.get("rollout/on_policy_rows", 1) > 0]
        means = {kind: _window_means([r[key] for r in sampled if r.get(key) is not None])
                 for kind, key in METRICS.items()}
        (len_first, len_last), (rep_first, rep_last) = means["length"], means["repetition"]
        (ent_first, ent_last), (ans_first, ans_last) = means["entropy"], means["answers"]
        flags = []
        if RULE.collapsed("length", len_first, len_last):
            flags.append(f"length < {RULE.length_drop:.0%} of start")
        if RULE.collapsed("repetition", rep_first, rep_last):
            flags.append(f"repetition > {RULE.repetition_max}, up {rep_last - rep_first:.2f}")
        if RULE.collapsed("entropy", ent_first, ent_last):
            flags.append(f"entropy < {RULE.entropy_drop:.0%} of start")
        if RULE.collapsed("answers", ans_first, ans_last):
            flags.append(f"answer rate < {RULE.answers_drop:.0%} of start")
        rows.append({**_run_keys(run), "sampled_steps": len(sampled), "len_first": len_first,
                     "len_last": len_last, "rep_first": rep_first, "rep_last": rep_last,
                     "ent_first": ent_first, "ent_last": ent_last, "ans_first": ans_first, "ans_last": ans_last,
                     "warned": sum(1 for r in sampled if r.get("collapse/flags")),
                     "collapse": "; ".join(flags)})
    return rows


def group_means(rows: list[dict[str, Any]], keys: Iterable[str]) -> dict[tuple, dict[str, Any]]:
    """Per-run `rows` averaged over the seeds of each (task, model name, method), None-aware."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["model_name"], row["method"]), []).append(row)
    out = {}
    for group, members in groups.items():
        out[group] = {}
        for key in keys:
            values = [m[key] for m in members if m.get(key) is not None]
            out[group][key] = float(np.mean(values)) if values else None
    return out
