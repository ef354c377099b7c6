"""`unisd report` on hand-written run directories: every number in the tables is known."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from unisd.cli.main import main
from unisd.evaluation.stats import mean_ci, paired_bootstrap
from unisd.reporting import tables as T
from unisd.reporting.report import CSV_COLUMNS, build_report


def _eval(correct, *, ids=None, ci=None, retention=None, energy=None) -> dict:
    ids = ids or [f"test-{i}" for i in range(len(correct))]
    acc = {**mean_ci(correct), **(ci or {})}
    agg = {"task": "arithmetic", "n": len(correct), "accuracy": acc,
           "resources": {"peak_memory_gb": 1.0, "peak_memory_kind": "process_peak_rss", "energy_j": energy}}
    if retention:
        agg["retention"] = retention
    return {"aggregate": agg, "items": [{"id": i, "correct": float(c)} for i, c in zip(ids, correct)]}


def make_run(root: Path, name: str, *, recipe: str, seed: int = 1, task: str = "arithmetic",
             model: str = "/models/tiny", before=(0, 0, 0, 0), after=(1, 0, 0, 0), metrics=None,
             **eval_kw) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": recipe, "data": {"task": task},
                                                     "model": {"name": model}, "optim": {"seed": seed}}))
    before_eval = _eval(list(before))
    after_eval = _eval(list(after), **eval_kw)
    (run / "eval" / "before.json").write_text(json.dumps(before_eval))
    (run / "eval" / "after.json").write_text(json.dumps(after_eval))
    metrics = metrics if metrics is not None else [
        {"step": s, "loss": 1.0 / s, "tokens": 10, "rollout/on_policy_rows": 2.0,
         "rollout/completion_len": 20.0, "rollout/repetition": 0.0} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "summary.json").write_text(json.dumps({
        "recipe": recipe, "task": task, "model": model, "steps": len(metrics), "seconds": 12.5,
        "peak_memory_gb": 1.5, "before": before_eval["aggregate"], "after": after_eval["aggregate"]}))
    return run


def _row(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def test_accuracy_over_seeds_and_the_base_row(tmp_path):
    make_run(tmp_path, "sdft-s1", recipe="sdft", seed=1, before=(0, 0, 0, 0), after=(1, 1, 0, 0))
    make_run(tmp_path, "sdft-s2", recipe="sdft", seed=2, before=(1, 0, 0, 0), after=(1, 1, 1, 0))
    make_run(tmp_path, "sft-s1", recipe="sft", seed=1, after=(1, 0, 0, 0), ci={"lo": 0.01, "hi": 0.9})
    rows = T.accuracy_rows(T.load_runs([tmp_path]))
    assert [r["method"] for r in rows] == ["base", "sdft", "sft"]  # base first, then by name

    sdft = _row(rows, method="sdft")
    assert sdft["accuracy"] == pytest.approx(0.625) and sdft["seeds"] == [1, 2] and sdft["n"] == [4, 4]
    assert sdft["seed_sd"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    assert (sdft["seed_min"], sdft["seed_max"]) == (0.5, 0.75)
    pooled = mean_ci([1, 1, 0, 0, 1, 1, 1, 0])  # (seed, item) units of both seeds
    assert (sdft["ci_lo"], sdft["ci_hi"]) == (pooled["lo"], pooled["hi"])

    sft = _row(rows, method="sft")  # one seed: the run's own interval, unchanged
    assert (sft["accuracy"], sft["ci_lo"], sft["ci_hi"], sft["seed_sd"]) == (0.25, 0.01, 0.9, None)

    base = _row(rows, method="base")  # one before.json per seed, not one per run
    assert base["seeds"] == [1, 2] and base["accuracy"] == pytest.approx(0.125) and len(base["runs"]) == 2


def test_paired_comparison_picks_the_strongest_other_and_matches_items(tmp_path):
    n = 20
    ids = [f"test-{i}" for i in range(n)]
    star = [1.0 if i < 15 else 0.0 for i in range(n)]
    sdft = [1.0 if i < 10 else 0.0 for i in range(n)]
    order = list(range(n))
    random.Random(0).shuffle(order)  # the other run lists its items in another order
    make_run(tmp_path, "star", recipe="unisd_star", before=[0] * n, after=star + [1.0], ids=ids + ["extra"])
    make_run(tmp_path, "sdft", recipe="sdft", before=[0] * n, after=[sdft[i] for i in order],
             ids=[ids[i] for i in order])
    make_run(tmp_path, "sft", recipe="sft", before=[0] * n, after=[1.0 if i < 5 else 0.0 for i in range(n)])
    # a second seed of the focus only: its items (same ids, other problems) must not be paired
    make_run(tmp_path, "star-s2", recipe="unisd_star", seed=2, before=[0] * n, after=[0.0] * n)

    rows, notes = T.paired_rows(T.load_runs([tmp_path]), "unisd_star")
    assert notes == [] and len(rows) == 1
    row = rows[0]
    assert row["other"] == "sdft" and row["other_accuracy"] == 0.5 and row["n"] == n and row["seeds"] == [1]
    common = sorted(ids)  # pairs are taken in (seed, id) order, whatever the files' order
    expected = paired_bootstrap([star[ids.index(i)] for i in common], [sdft[ids.index(i)] for i in common])
    assert row["diff"] == pytest.approx(0.25) == pytest.approx(expected["diff"])
    assert (row["ci_lo"], row["ci_hi"], row["p_not_better"]) == (expected["lo"], expected["hi"],
                                                                 expected["p_not_better"])
    assert row["verdict"] == ("better" if expected["lo"] > 0 else "no clear difference")

    rows, notes = T.paired_rows(T.load_runs([tmp_path]), "gkd")
    assert rows == [] and "'gkd' is not among these runs" in notes[0]


def test_collapse_flags_length_drop_and_repetition(tmp_path):
    def steps(lengths, reps, on_policy=2.0):
        return [{"step": i + 1, "loss": 0.5, "tokens": 8, "rollout/on_policy_rows": on_policy,
                 "rollout/completion_len": ln, "rollout/repetition": rp}
                for i, (ln, rp) in enumerate(zip(lengths, reps))]

    make_run(tmp_path, "short", recipe="sdft", metrics=steps([20] * 5 + [15] * 5 + [9] * 5, [0.0] * 15))
    make_run(tmp_path, "steady", recipe="ema", metrics=steps([20] * 5 + [11] * 5, [0.1] * 10))
    make_run(tmp_path, "loops", recipe="opsd", metrics=steps([20] * 10, [0.0] * 5 + [0.5] * 5))
    make_run(tmp_path, "gold", recipe="sft", metrics=steps([0] * 10, [0] * 10, on_policy=0.0))
    make_run(tmp_path, "json", recipe="sdft", metrics=steps([20] * 10, [0.33] * 5 + [0.36] * 5))
    rows = T.collapse_rows(T.load_runs([tmp_path]))
    short, steady, loops, gold, json_ = (_row(rows, run=r) for r in ("short", "steady", "loops", "gold", "json"))
    assert (short["len_first"], short["len_last"]) == (20.0, 9.0) and short["collapse"].startswith("length <")
    assert steady["len_last"] == 11.0 and steady["collapse"] == ""  # 55% of the start: not flagged
    assert (loops["rep_first"], loops["rep_last"]) == (0.0, 0.5) and loops["collapse"] == "repetition > 0.3, up 0.50"
    assert json_["collapse"] == ""  # above 0.3 from the start (structured output), not rising
    assert gold["sampled_steps"] == 0 and gold["len_first"] is None and gold["collapse"] == ""
    assert short["accuracy"] == 0.25  # shown next to the accuracy after


def test_retention_and_cost_are_read_never_estimated(tmp_path):
    ret = {"base": "adapter_disabled", "ppl_ret_mean": 1.5, "ppl_ret_corpus": 1.4, "jsd_mean": 0.02,
           "gold_fit_ppl_mean": 3.0, "gold_fit_ppl_corpus": 2.5}
    make_run(tmp_path, "gpu", recipe="sdft", retention=ret, energy=120.0)
    make_run(tmp_path, "cpu", recipe="sft")
    runs = T.load_runs([tmp_path])
    (row,) = T.retention_rows(runs)  # the run without retention is left out
    assert row["run"] == "gpu" and row["against"] == "adapter_disabled"
    assert {k: row[k] for k in T.RETENTION_KEYS} == {k: ret[k] for k in T.RETENTION_KEYS}
    cost = {r["run"]: r for r in T.cost_rows(runs)}
    assert cost["gpu"]["tokens"] == 60 and cost["gpu"]["steps"] == 6 and cost["gpu"]["seconds"] == 12.5
    assert cost["gpu"]["eval_energy_j"] == 120.0 and cost["gpu"]["train_energy_j"] is None
    assert cost["cpu"]["eval_energy_j"] is None and cost["cpu"]["peak_memory_gb"] == 1.5


def test_report_files_csv_and_plots(tmp_path):
    runs = tmp_path / "runs"
    ret = {"base": "adapter_disabled", "ppl_ret_mean": 1.5, "ppl_ret_corpus": 1.4, "jsd_mean": 0.02,
           "gold_fit_ppl_mean": 3.0, "gold_fit_ppl_corpus": 2.5}
    make_run(runs / "sweep-a", "star-s1", recipe="unisd_star", seed=1, after=(1, 1, 0, 0), retention=ret)
    make_run(runs / "sweep-a", "star-s2", recipe="unisd_star", seed=2, after=(1, 1, 1, 0),
             retention={**ret, "ppl_ret_mean": 2.5})
    make_run(runs / "deep" / "er", "sdft-s1", recipe="sdft", seed=1, after=(1, 0, 0, 0))
    (runs / "unfinished").mkdir()  # config but no summary: not a finished run
    (runs / "unfinished" / "config.yaml").write_text("recipe: x\n")
    out = tmp_path / "report"
    result = build_report([runs], out)

    assert {p.name for p in out.iterdir()} == {"report.md", "results.csv", "accuracy.png",
                                               "retention_vs_accuracy.png", "training_curves.png",
                                               "cost.png"}
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.csv") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = {r["method"]: r for r in reader}
    assert set(rows) == {"base", "sdft", "unisd_star"}
    star = rows["unisd_star"]
    assert (star["seeds"], star["n"], star["n_seeds"]) == ("1;2", "4;4", "2")
    assert float(star["accuracy"]) == pytest.approx(0.625)
    assert float(star["ppl_ret_mean"]) == pytest.approx(2.0)  # mean over the seeds
    assert float(star["tokens"]) == 60 and rows["base"]["ppl_ret_mean"] == ""

    md = (out / "report.md").read_text()
    for text in ("## Accuracy", "## Paired comparison: unisd_star", "## Retention", "## Cost",
                 "## Collapse watch", "| arithmetic | tiny | base |", "| 62.5 |",
                 "![accuracy](accuracy.png)"):
        assert text in md, text
    paired = result["paired"][0]
    assert paired["other"] == "sdft" and paired["seeds"] == [1] and paired["n"] == 4


def test_runs_the_tables_cannot_tell_apart_are_named(tmp_path):
    make_run(tmp_path / "a", "sdft-lr1", recipe="sdft", seed=1)
    make_run(tmp_path / "a", "sdft-lr2", recipe="sdft", seed=1)
    make_run(tmp_path / "a", "sdft-s2", recipe="sdft", seed=2)
    (note,) = T.duplicate_notes(T.load_runs([tmp_path]))
    assert "sdft-lr1, sdft-lr2" in note and "seed 1" in note
    build_report([tmp_path], tmp_path / "out")
    assert "**warning:** runs sdft-lr1, sdft-lr2" in (tmp_path / "out" / "report.md").read_text()


def test_cli_report_and_its_error(tmp_path, capsys):
    make_run(tmp_path / "runs", "sdft", recipe="sdft")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--focus", "sdft"]) == 0
    out = capsys.readouterr().out
    assert "sdft vs base" in out and (tmp_path / "out" / "report.md").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out2")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_reporting_reads_files_only():
    # a report can be rebuilt where only the run folders were copied: no torch, no training code
    import subprocess
    import sys

    code = ("import sys, unisd.reporting.report; "
            "print(sorted(m for m in sys.modules if m.startswith('unisd')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("['unisd', 'unisd.evaluation', 'unisd.evaluation.collapse', 'unisd.evaluation.stats', "
                           "'unisd.reporting', "
                           "'unisd.reporting.report', 'unisd.reporting.tables'] False")


def test_entropy_collapse_is_flagged(tmp_path):
    metrics = [{"step": i + 1, "tokens": 8, "rollout/on_policy_rows": 2.0, "rollout/completion_len": 20.0,
                "rollout/repetition": 0.0, "student/entropy": e, **({"collapse/flags": "x"} if e < 1 else {})}
               for i, e in enumerate([1.2] * 5 + [0.2] * 5)]
    make_run(tmp_path, "sharp", recipe="ssd", metrics=metrics)
    (row,) = T.collapse_rows(T.load_runs([tmp_path]))
    assert (row["ent_first"], row["ent_last"]) == (1.2, 0.2) and row["warned"] == 5
    assert row["collapse"] == "entropy < 30% of start"


def test_answer_rate_collapse_is_flagged(tmp_path):
    metrics = [{"step": i + 1, "tokens": 8, "rollout/on_policy_rows": 2.0, "rollout/completion_len": 20.0,
                "rollout/repetition": 0.0, "rollout/answered_rate": a} for i, a in enumerate([0.9] * 5 + [0.2] * 5)]
    make_run(tmp_path, "chatter", recipe="ema", metrics=metrics)
    (row,) = T.collapse_rows(T.load_runs([tmp_path]))
    assert (row["ans_first"], row["ans_last"]) == (0.9, 0.2) and row["collapse"] == "answer rate < 50% of start"


def test_cost_sums_step_times_and_marks_resumed_runs_partial(tmp_path):
    metrics = [{"step": s, "tokens": 10, "time/generate_s": 1.0, "time/forward_backward_s": 0.5,
                "time/optimizer_s": 0.25} for s in range(1, 5)]
    run = make_run(tmp_path, "resumed", recipe="sdft", metrics=metrics)
    summary = json.loads((run / "summary.json").read_text())
    # the last process trained 1 of the 4 steps (10 of 40 tokens): its energy covers that step only
    summary["resources"] = {"tokens": 10, "energy_j": 50.0, "gpu_processes": 2}
    (run / "summary.json").write_text(json.dumps(summary))
    (row,) = T.cost_rows(T.load_runs([tmp_path]))
    assert row["step_seconds"] == 7.0 and row["tokens"] == 40
    assert row["partial"] and row["train_energy_j"] == 50.0 and row["gpu_processes"] == 2


def test_paired_against_a_named_method_with_the_task_average(tmp_path):
    # two tasks; the focus beats sft by 2/4 items on one and ties on the other: average +25 points
    make_run(tmp_path, "u1", recipe="unisd_star", task="a", after=(1, 1, 1, 0))
    make_run(tmp_path, "s1", recipe="sft", task="a", after=(1, 0, 0, 0))
    make_run(tmp_path, "u2", recipe="unisd_star", task="b", after=(1, 0, 1, 0))
    make_run(tmp_path, "s2", recipe="sft", task="b", after=(1, 0, 1, 0))
    rows = T.paired_against(T.load_runs([tmp_path]), "unisd_star", "sft", n_boot=2000)
    by_task = {r["task"]: r for r in rows}
    assert by_task["a"]["diff"] == 0.5 and by_task["b"]["diff"] == 0.0
    avg = by_task["average (2 tasks)"]
    assert avg["diff"] == 0.25 and avg["n"] == 8
    assert (avg["focus_accuracy"], avg["other_accuracy"]) == (0.625, 0.375)
    assert avg["ci_lo"] <= 0.25 <= avg["ci_hi"]
    out = build_report([tmp_path], tmp_path / "rep", against=["sft", "base"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Paired comparison: unisd_star vs sft" in md and "average (2 tasks)" in md
    assert {r["against"] for r in out["paired_against"]} == {"sft", "base"}


def test_curves_show_sample_accuracy_only_when_logged(tmp_path):
    from unisd.reporting import report as R

    def width_px(png):  # the PNG header's width: 100 dpi x (3.6 in per panel + 1.6 in)
        return int.from_bytes(png.read_bytes()[16:20], "big")

    metrics = [{"step": i + 1, "loss": 0.5, "tokens": 8, "rollout/on_policy_rows": 2.0,
                "rollout/completion_len": 20.0, "rollout/repetition": 0.0, "student/entropy": 1.0} for i in range(3)]
    make_run(tmp_path / "old", "old", recipe="sdft", metrics=metrics)
    make_run(tmp_path / "new", "new", recipe="sdft", metrics=[{**m, "rollout/sample_accuracy": 0.25} for m in metrics])
    old = R.plot_curves(T.load_runs([tmp_path / "old"]), tmp_path / "old.png")
    new = R.plot_curves(T.load_runs([tmp_path / "new"]), tmp_path / "new.png")
    assert (width_px(old), width_px(new)) == (round(100 * (3.6 * 4 + 1.6)), round(100 * (3.6 * 5 + 1.6)))
