"""`unisd report`: a Markdown report, a CSV and plots from run directories alone.

`build_report(paths, out)` reads every run directory at or under `paths` (see `tables`) and
writes into `out`: report.md (accuracy with CIs and seed spread, the focus method against the
strongest other method, retention, cost, collapse watch), results.csv (one row per task, model
and method) and accuracy.png, retention_vs_accuracy.png (when any run measured retention) and
training_curves.png. It imports no training or model code, so a report can be rebuilt
anywhere the folders are copied to.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable

from unisd.evaluation.collapse import RULE
from unisd.reporting import tables as T

CSV_COLUMNS = ("task", "model", "method", "n_seeds", "seeds", "n", "accuracy", "ci_lo", "ci_hi", "seed_sd",
               "seed_min", "seed_max", "ppl_ret_mean", "ppl_ret_corpus", "jsd_mean", "gold_fit_ppl_corpus",
               "steps", "seconds", "step_seconds", "tokens", "runs")
"""results.csv columns; accuracies are fractions, retention and cost are means over the seeds."""


def build_report(paths: Iterable[str | Path], out: str | Path = "report", *, focus: str = "unisd_star",
                 against: Iterable[str] = ("base",)) -> dict[str, Any]:
    """Write report.md, results.csv and the plots into `out`; returns the tables and the files."""
    paths = list(paths)
    runs = T.load_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no run directories (a folder with config.yaml and summary.json) under "
                                f"{', '.join(map(str, paths))}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    acc = T.accuracy_rows(runs)
    paired, notes = T.paired_rows(runs, focus)
    fixed = [row for method in against if method != focus for row in T.paired_against(runs, focus, method)]
    duplicates = T.duplicate_notes(runs)
    ret, cost, collapse = T.retention_rows(runs), T.cost_rows(runs), T.collapse_rows(runs)
    _write_csv(out / "results.csv", acc, ret, cost)
    plots = [p for p in (plot_accuracy(acc, out / "accuracy.png"),
                         plot_retention(ret, out / "retention_vs_accuracy.png"),
                         plot_cost(cost, out / "cost.png"),
                         plot_curves(runs, out / "training_curves.png")) if p is not None]
    md = render_markdown(runs, paths, focus, acc, duplicates, paired, notes, ret, cost, collapse, plots, fixed)
    (out / "report.md").write_text(md)
    return {"runs": runs, "accuracy": acc, "paired": paired, "paired_against": fixed, "notes": duplicates + notes, "retention": ret,
            "cost": cost, "collapse": collapse, "files": [out / "report.md", out / "results.csv", *plots]}


# ---- formatting ----

def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: Any, digits: int = 1) -> str:
    return "n/a" if _missing(x) else f"{100 * x:.{digits}f}"


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if _missing(x) else format(x, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(runs, paths, focus, acc, duplicates, paired, notes, ret, cost, collapse, plots,
                    fixed=()) -> str:
    parts = [f"# unisd report\n\n{len(runs)} run(s) read from {', '.join(f'`{p}`' for p in paths)}. "
             "Every number comes from the run directories' files; none is estimated.\n"]

    parts.append("## Accuracy\n\nAccuracy after training (%, the task's primary metric); `base` is the "
                 "model before training (eval/before.json). Over several seeds: the mean of the seed "
                 "accuracies, the sample standard deviation and range of those accuracies, and a 95% "
                 "item-bootstrap interval over the pooled (seed, item) results; n is the number of items per "
                 "seed.\n")
    header = ["task", "model", "method", "accuracy", "95% CI", "seeds", "seed sd", "seed range", "n"]
    parts.append(_table(header, [
        [r["task"], r["model"], r["method"], _pct(r["accuracy"]), f"[{_pct(r['ci_lo'])}, {_pct(r['ci_hi'])}]",
         f"{r['n_seeds']} ({', '.join(map(str, r['seeds']))})",
         "-" if r["seed_sd"] is None else _pct(r["seed_sd"]),
         "-" if r["n_seeds"] == 1 else f"{_pct(r['seed_min'])}-{_pct(r['seed_max'])}",
         "/".join(map(str, sorted(set(r["n"]))))] for r in acc]))
    if duplicates:
        parts.append("".join(f"- **warning:** {d}\n" for d in duplicates))
    for model, (header, rows) in method_task_tables(acc).items():
        parts.append(f"### {model}: methods × tasks\n\nMean accuracy (%) over seeds; `avg` is the mean over "
                     "the columns, given only for methods that have every column; `(from X)` columns evaluate "
                     "runs trained on X.\n")
        parts.append(_table(header, rows))

    parts.append(f"## Paired comparison: {focus} vs the strongest other method\n\nPer (task, model), "
                 f"`{focus}` against the other method with the highest accuracy (base included), on the "
                 "items both evaluated, matched by (seed, item id); both accuracies are on those pairs. "
                 "Paired bootstrap of the per-item difference (points of %). P(diff<=0) is the bootstrap "
                 "share of resamples where the focus is not better.\n")
    if paired:
        parts.append(_table(["task", "model", focus, "strongest other", "its accuracy", "diff (pp)", "95% CI",
                             "n pairs", "P(diff<=0)", "verdict"], [
            [r["task"], r["model"], _pct(r["focus_accuracy"]), r["other"], _pct(r["other_accuracy"]),
             _pct(r["diff"]), f"[{_pct(r['ci_lo'])}, {_pct(r['ci_hi'])}]", r["n"], _num(r["p_not_better"]),
             r["verdict"]] for r in paired]))
    if notes:
        parts.append("".join(f"- {n}\n" for n in notes))
    for method in dict.fromkeys(r["against"] for r in fixed):
        parts.append(f"## Paired comparison: {focus} vs {method}\n\nAs above, against `{method}` on every task "
                     "both have; the average row is the difference of the task-averaged accuracies, its interval "
                     "from a bootstrap that resamples items within each task.\n")
        parts.append(_table(["task", "model", focus, method, "diff (pp)", "95% CI", "n pairs", "P(diff<=0)",
                             "verdict"], [
            [r["task"], r["model"], _pct(r["focus_accuracy"]), _pct(r["other_accuracy"]), _pct(r["diff"]),
             f"[{_pct(r['ci_lo'])}, {_pct(r['ci_hi'])}]", r["n"], _num(r["p_not_better"]), r["verdict"]]
            for r in fixed if r["against"] == method]))

    parts.append("## Retention\n\nFrom eval/after.json `aggregate.retention`: the base model's perplexity on "
                 "the tuned model's own completions (PPL_ret, mean over examples and corpus-level; lower = "
                 "closer to the base), the mean JSD to the base (nats), and the perplexity of the gold "
                 "answers (gold fit).\n")
    if ret:
        parts.append(_table(["run", "method", "task", "model", "seed", "accuracy", "against", "ppl_ret_mean",
                             "ppl_ret_corpus", "jsd_mean", "gold_fit_ppl_mean", "gold_fit_ppl_corpus"], [
            [r["run"], r["method"], r["task"], r["model"], r["seed"], _pct(r["accuracy"]), r["against"],
             _num(r["ppl_ret_mean"]), _num(r["ppl_ret_corpus"]), _num(r["jsd_mean"], ".4g"),
             _num(r["gold_fit_ppl_mean"]), _num(r["gold_fit_ppl_corpus"])] for r in ret]))
    missing = len(runs) - len(ret)
    if missing:
        parts.append(f"{missing} run(s) recorded no retention (evaluated without the base, or "
                     "eval.after=false).\n")

    parts.append("## Cost\n\nSteps and seconds (whole run: loading, evaluations, training) from summary.json; "
                 "step seconds = the sum of the per-step phase times in metrics.jsonl (generation, "
                 "forward/backward, optimizer); tokens = sum of the per-step `tokens` (completion tokens in "
                 "the loss); peak memory from summary.json; energy only where NVML measured it (n/a "
                 "otherwise). NVML counts a whole GPU: `GPU procs` > 1 means other processes ran on it "
                 "during training and share the figure. `partial`: the run was resumed, so its seconds and "
                 "training energy cover the last process only.\n")
    parts.append(_table(["run", "method", "task", "model", "seed", "steps", "seconds", "step seconds", "tokens",
                         "peak memory GB", "memory kind", "train energy J", "GPU procs", "eval energy J"], [
        [r["run"], r["method"], r["task"], r["model"], r["seed"], _num(r["steps"], "d"),
         _num(r["seconds"], ".1f") + (" (partial)" if r["partial"] else ""), _num(r["step_seconds"], ".1f"),
         _num(r["tokens"], "d"), _num(r["peak_memory_gb"], ".2f"), r["memory_kind"] or "n/a",
         _num(r["train_energy_j"], ".0f") + (" (partial)" if r["partial"] else ""),
         "n/a" if r["gpu_processes"] is None else r["gpu_processes"],
         _num(r["eval_energy_j"], ".0f")] for r in cost]))

    parts.append(f"## Collapse watch\n\nSampled completion length (tokens) and share of repeated "
                 f"4-grams, mean of the first and of the last {RULE.window} steps with on-policy samples. "
                 f"Flagged when the length ends below {RULE.length_drop:.0%} of its start, the entropy below "
                 f"{RULE.entropy_drop:.0%} of its start, repetition ends above {RULE.repetition_max} after "
                 f"rising by at least {RULE.repetition_rise}, or the answer rate ends below "
                 f"{RULE.answers_drop:.0%} of its start (the rule the training loop warns by).\n")
    parts.append("Student entropy: mean entropy (nats) of the student's distribution on the tokens it "
                 "learns from; answers: share of the samples with an answer the task can read (n/a for code "
                 "tasks and runs from before it was logged); `steps warned`: steps the training loop flagged "
                 "live (collapse/flags in metrics.jsonl).\n")
    parts.append(_table(["run", "method", "task", "model", "seed", "accuracy", "length first",
                         "length last", "entropy first", "entropy last", "repetition first", "repetition last",
                         "answers first", "answers last", "steps warned", "flag"], [
        [r["run"], r["method"], r["task"], r["model"], r["seed"], _pct(r["accuracy"]),
         _num(r["len_first"], ".1f"), _num(r["len_last"], ".1f"), _num(r["ent_first"]), _num(r["ent_last"]),
         _num(r["rep_first"]), _num(r["rep_last"]), _num(r["ans_first"], ".2f"), _num(r["ans_last"], ".2f"),
         r["warned"],
         f"**{r['collapse']}**" if r["collapse"] else ("no samples" if not r["sampled_steps"] else "ok")]
        for r in collapse]))

    parts.append("## Plots\n\n" + "".join(f"![{p.stem}]({p.name})\n\n" for p in plots))
    return "\n".join(parts)


def method_task_tables(acc: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per model, the paper's layout: a row per method (base first), a column per task, and the
    average over the tasks."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in acc):
        rows = [r for r in acc if r["model"] == model]
        tasks = sorted({r["task"] for r in rows}, key=lambda t: ("(from" in t, t))
        methods = sorted({r["method"] for r in rows}, key=lambda m: (m != T.BASE, m))
        value = {(r["method"], r["task"]): r["accuracy"] for r in rows}
        body = []
        for method in methods:
            cells = [value.get((method, t)) for t in tasks]
            avg = None if any(_missing(c) for c in cells) else sum(cells) / len(cells)
            body.append([method, *[_pct(c) for c in cells], _pct(avg)])
        out[model] = (["method", *tasks, "avg"], body)
    return out


def _write_csv(path: Path, acc, ret, cost) -> None:
    means = T.group_means(ret, T.RETENTION_KEYS)
    costs = T.group_means(cost, ("steps", "seconds", "step_seconds", "tokens"))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in acc:
            key = (r["task"], r["model_name"], r["method"])
            row = {k: r.get(k) for k in CSV_COLUMNS}
            row.update({k: ";".join(map(str, r[k])) for k in ("seeds", "n", "runs")})
            row.update({k: v for k, v in means.get(key, {}).items() if k in CSV_COLUMNS})
            row.update(costs.get(key, {}))
            writer.writerow({k: "" if _missing(v) else v for k, v in row.items()})


# ---- plots (matplotlib, Agg) ----

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(acc: list[dict], path: Path) -> Path | None:
    """A grid of panels, a row per model and a column per task: a bar per method with its 95% CI
    (base in grey), dots for the seeds when there are several; the y axis fits the task."""
    if not acc:
        return None
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in acc))
    tasks = sorted({r["task"] for r in acc}, key=lambda t: ("(from" in t, t))
    methods = sorted({r["method"] for r in acc}, key=lambda m: (m != T.BASE, m))
    panel_width = max(3.2, 0.42 * len(methods) + 1.2)
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(panel_width * len(tasks), 3.3 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            by_method = {r["method"]: r for r in acc if r["model"] == model and r["task"] == task}
            if not by_method:
                ax.set_axis_off()
                continue
            rows = [by_method[m] for m in methods if m in by_method]
            means = [100 * r["accuracy"] for r in rows]
            err = [[0 if _missing(r["ci_lo"]) else m - 100 * r["ci_lo"] for m, r in zip(means, rows)],
                   [0 if _missing(r["ci_hi"]) else 100 * r["ci_hi"] - m for m, r in zip(means, rows)]]
            colors = ["#999999" if r["method"] == T.BASE else "#3b7dd8" for r in rows]
            ax.bar(range(len(rows)), means, yerr=err, capsize=3, color=colors)
            for k, r in enumerate(rows):
                if r["n_seeds"] > 1:
                    ax.plot([k] * r["n_seeds"], [100 * a for a in r["seed_accuracies"]], "k.", ms=3)
            ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=45, ha="right", fontsize=7)
            top = max(100 * (r["ci_hi"] if not _missing(r["ci_hi"]) else r["accuracy"]) for r in rows)
            ax.set_ylim(0, min(100, max(10, 1.15 * top)))
            ax.set_title(f"{task}\n{model}" if len(models) > 1 else task, fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel("accuracy % (95% CI)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_retention(ret: list[dict], path: Path) -> Path | None:
    """PPL_ret (mean over examples) against accuracy, one point per run, a colour per method."""
    points = [r for r in ret if not _missing(r["ppl_ret_mean"]) and not _missing(r["accuracy"])]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for method in sorted({r["method"] for r in points}):
        mine = [r for r in points if r["method"] == method]
        ax.scatter([r["ppl_ret_mean"] for r in mine], [100 * r["accuracy"] for r in mine], label=method, s=30)
    ax.set_xlabel("PPL_ret (base perplexity of own completions; lower = closer to base)")
    ax.set_ylabel("accuracy after %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COST_PANELS = (("step_seconds", "training seconds (sum of steps)", 1.0),
               ("tokens", "completion tokens in the loss", 1.0),
               ("peak_memory_gb", "peak memory (GB)", 1.0),
               ("train_energy_j", "training energy (kJ, NVML)", 1e-3))
"""(cost-row key, panel title, scale) for the cost plot."""


def plot_cost(cost: list[dict], path: Path) -> Path | None:
    """A panel per cost measure, a bar per (method, model): the mean over that method's runs (all
    tasks and seeds); energy over the runs that measured it and were not resumed."""
    if not cost:
        return None
    plt = _pyplot()
    keys = sorted({(r["method"], r["model"]) for r in cost}, key=lambda k: (k[1], k[0]))  # by model, then method
    models = list(dict.fromkeys(model for _, model in keys))
    palette = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, len(COST_PANELS), figsize=(max(3.5, 0.45 * len(keys) + 1.5) * len(COST_PANELS), 3.8),
                             squeeze=False)
    for ax, (field, title, scale) in zip(axes[0], COST_PANELS):
        values = []
        for meth, model in keys:
            rows = [r for r in cost if (r["method"], r["model"]) == (meth, model) and not _missing(r.get(field))
                    and not (field == "train_energy_j" and r.get("partial"))]
            values.append(scale * sum(r[field] for r in rows) / len(rows) if rows else 0.0)
        ax.bar(range(len(keys)), values, color=[palette[model] for _, model in keys])
        ax.set_xticks(range(len(keys)), [meth for meth, _ in keys], rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        from matplotlib.patches import Patch

        axes[0][-1].legend([Patch(color=palette[m]) for m in models], models, fontsize=7,
                           loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


CURVES = (("loss", "training loss", False), ("rollout/completion_len", "sampled completion length", True),
          ("student/entropy", "student entropy (nats)", True), ("rollout/repetition", "repeated 4-grams", True),
          ("rollout/sample_accuracy", "accuracy of the samples", True))
"""(metrics key, panel title, only steps with on-policy samples) for the training-curve panels; a
panel no run logged (sample accuracy before it existed, or code tasks only) is left out."""


def _mean_curve(runs: list[T.Run], key: str, sampled_only: bool) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for m in run.metrics:
            if key in m and m[key] is not None and not (sampled_only and m.get("rollout/on_policy_rows", 1) <= 0):
                by_step.setdefault(int(m["step"]), []).append(float(m[key]))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def plot_curves(runs: list[T.Run], path: Path) -> Path | None:
    """A row per (task, model), a panel per signal (loss, completion length, student entropy,
    repetition), a line per method (the mean over its seeds at each step)."""
    runs = [r for r in runs if r.metrics and not r.transfer]
    if not runs:
        return None
    plt = _pyplot()
    groups: dict[tuple[str, str], list[T.Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.model_label), []).append(run)
    several_models = len({m for _, m in groups}) > 1
    curves = [c for c in CURVES if any(c[0] in m for run in runs for m in run.metrics)]
    fig, axes = plt.subplots(len(groups), len(curves), figsize=(3.6 * len(curves) + 1.6, 2.6 * len(groups)),
                             squeeze=False)
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(sorted({r.method for r in runs}))}
    for row, ((task, model), members) in enumerate(sorted(groups.items())):
        methods = sorted({r.method for r in members})
        for col, (key, title, sampled_only) in enumerate(curves):
            ax = axes[row][col]
            for method in methods:
                steps, values = _mean_curve([r for r in members if r.method == method], key, sampled_only)
                if steps:
                    ax.plot(steps, values, lw=1.2, color=colors[method], label=method)
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{task}\n{model}" if several_models else task, fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if row == len(groups) - 1:
                ax.set_xlabel("step", fontsize=8)
        handles, labels = axes[row][0].get_legend_handles_labels()
        axes[row][-1].legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
