"""`unisd sweep` on the tiny model: a 2-cell grid runs, a second call skips both cells, a cell
without its summary resumes from its checkpoint, and `unisd report` reads the sweep root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unisd.cli.main import main
from unisd.config.schema import ConfigError
from unisd.training.sweep import plan_cells, read_sweep

SMALL = {"data.train_limit": 8, "optim.steps": 2, "optim.batch_size": 2, "optim.micro_batch_size": 1,
         "rollout.max_new_tokens": 4, "eval.limit": 3, "eval.max_new_tokens": 4, "eval.batch_size": 3}


def write_sweep(path: Path, model_dir, root: Path, recipes=("sft", "sdft"), **extra) -> Path:
    spec = {"recipes": list(recipes), "tasks": ["arithmetic"], "seeds": [1], "models": [str(model_dir)],
            "set": dict(SMALL), "root": str(root), **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_skip_resume_and_report(tiny_model_dir, tmp_path, capsys):
    root = tmp_path / "grid"
    sweep = write_sweep(tmp_path / "grid.yaml", tiny_model_dir, root)
    model = Path(tiny_model_dir).name
    cells = [root / f"{r}__arithmetic__{model}__s1" for r in ("sft", "sdft")]

    assert main(["sweep", str(sweep)]) == 0
    out = capsys.readouterr().out
    for cell in cells:
        summary = json.loads((cell / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["after"]["n"] == 3
        assert cell.name in out
    assert out.count("trained") >= 2 and "accuracy after" in out
    assert yaml.safe_load((cells[1] / "config.yaml").read_text())["optim"]["seed"] == 1
    stamps = [(c / "summary.json").stat().st_mtime_ns for c in cells]

    assert main(["sweep", str(sweep)]) == 0  # everything done: nothing runs again
    out = capsys.readouterr().out
    assert out.count("skipped (done)") == 2 and "2 already done, 0 to run" in out
    assert [(c / "summary.json").stat().st_mtime_ns for c in cells] == stamps

    (cells[1] / "summary.json").unlink()  # as if killed after its last checkpoint
    assert main(["sweep", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and out.count("skipped (done)") == 1
    assert "config changed" not in out  # the stored config.yaml reads back equal to the sweep's
    assert json.loads((cells[1] / "summary.json").read_text())["steps"] == 2

    report = tmp_path / "report"
    assert main(["report", str(root), "--out", str(report), "--focus", "sdft"]) == 0
    md = (report / "report.md").read_text()
    for method in ("| sft |", "| sdft |", "| base |"):
        assert method in md, method
    assert {p.name for p in report.glob("*.png")} >= {"accuracy.png", "training_curves.png"}


def test_sweep_on_a_device_runs_a_child_process(tiny_model_dir, tmp_path, capsys):
    # On a CPU-only machine CUDA_VISIBLE_DEVICES=0 changes nothing, but the child path is real:
    # `python -m unisd train` with the cell's overrides, its output in the cell's sweep.log.
    root = tmp_path / "grid"
    sweep = write_sweep(tmp_path / "grid.yaml", tiny_model_dir, root, recipes=["sft"])
    assert main(["sweep", str(sweep), "--devices", "0"]) == 0
    cell = root / f"sft__arithmetic__{Path(tiny_model_dir).name}__s1"
    assert json.loads((cell / "summary.json").read_text())["recipe"] == "sft"
    assert "sft on arithmetic" in (cell / "sweep.log").read_text()
    assert "trained" in capsys.readouterr().out


def test_sweep_file_errors_name_the_problem(tmp_path, tiny_model_dir):
    base = {"recipes": ["sft"], "tasks": ["arithmetic"], "seeds": [1], "models": [str(tiny_model_dir)]}
    cases = [({**base, "seed": [1]}, "unknown key(s) seed"),
             ({**base, "tasks": []}, "tasks must be a non-empty list"),
             ({**base, "set": {"optim.seed": 3}}, "optim.seed is chosen per cell"),
             ({**base, "recipes": ["nosuch"]}, "unknown recipe 'nosuch'"),
             ({**base, "set": {"optim": {"lr": -1}}}, "optim.lr"),
             ({**base, "models": ["/a/tiny", "/b/tiny"]}, "would share the run directory")]
    for spec, message in cases:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            plan_cells(read_sweep(path))


def test_plan_names_cells_and_sees_what_is_done(tmp_path, tiny_model_dir):
    root = tmp_path / "grid"
    path = write_sweep(tmp_path / "grid.yaml", tiny_model_dir, root, recipes=["sft", "sdft", "ema"],
                       seeds=[1, 2])
    done = root / f"sft__arithmetic__{Path(tiny_model_dir).name}__s2"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    killed = root / f"ema__arithmetic__{Path(tiny_model_dir).name}__s1" / "checkpoints" / "step-000001"
    killed.mkdir(parents=True)
    (killed / "COMPLETE").write_text("")
    cells = plan_cells(read_sweep(path))
    assert len(cells) == 6
    actions = {(c.recipe, c.seed): c.action for c in cells}
    assert actions[("sft", 2)] == "skip" and actions[("ema", 1)] == "resume" and actions[("sdft", 1)] == "new"
    cfg = next(c.cfg for c in cells if (c.recipe, c.seed) == ("sdft", 2))
    assert (cfg.optim.seed, cfg.optim.steps, cfg.data.task) == (2, 2, "arithmetic")
    assert cfg.output.root == str(root)
    assert read_sweep(tmp_path / "grid.yaml")["root"] == str(root)


def test_devices_get_one_child_each_at_a_time(tmp_path, tiny_model_dir, monkeypatch):
    # The scheduler alone: each child only records its device and its time span, then writes
    # the summary a finished cell leaves behind.
    import sys

    from unisd.training import sweep as sweep_mod

    child = ("import json, os, sys, time; t0 = time.time(); time.sleep(0.3); "
             "open(os.path.join(sys.argv[1], 'summary.json'), 'w').write(json.dumps("
             "{'device': os.environ['CUDA_VISIBLE_DEVICES'], 'span': [t0, time.time()]}))")
    monkeypatch.setattr(sweep_mod, "_command", lambda cell: [sys.executable, "-c", child, str(cell.run_dir)])
    path = write_sweep(tmp_path / "grid.yaml", tiny_model_dir, tmp_path / "grid",
                       recipes=["sft", "sdft", "ema"])
    cells = sweep_mod.run_sweep(path, devices=["0", "1"], poll_s=0.05)
    assert [c.status for c in cells] == ["trained"] * 3
    done = [json.loads((c.run_dir / "summary.json").read_text()) for c in cells]
    assert sorted(d["device"] for d in done) == ["0", "0", "1"]
    spans = sorted(d["span"] for d in done if d["device"] == "0")
    assert spans[0][1] <= spans[1][0]  # never two cells on one device at once


def test_a_failed_child_is_reported_and_the_sweep_exits_1(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import sys

    from unisd.training import sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "_command", lambda cell: [sys.executable, "-c", "raise SystemExit(3)"])
    path = write_sweep(tmp_path / "grid.yaml", tiny_model_dir, tmp_path / "grid", recipes=["sft"])
    assert main(["sweep", str(path), "--devices", "0"]) == 1
    assert "failed" in capsys.readouterr().out


def test_duplicate_devices_run_cells_side_by_side(tmp_path, tiny_model_dir, monkeypatch):
    # "0,0" is two slots on one GPU: two children overlap in time there.
    import sys

    from unisd.training import sweep as sweep_mod

    child = ("import json, os, sys, time; t0 = time.time(); time.sleep(0.5); "
             "open(os.path.join(sys.argv[1], 'summary.json'), 'w').write(json.dumps("
             "{'device': os.environ['CUDA_VISIBLE_DEVICES'], 'span': [t0, time.time()]}))")
    monkeypatch.setattr(sweep_mod, "_command", lambda cell: [sys.executable, "-c", child, str(cell.run_dir)])
    path = write_sweep(tmp_path / "grid.yaml", tiny_model_dir, tmp_path / "grid", recipes=["sft", "sdft"])
    cells = sweep_mod.run_sweep(path, devices=["0", "0"], poll_s=0.05)
    assert [c.status for c in cells] == ["trained"] * 2
    spans = sorted(json.loads((c.run_dir / "summary.json").read_text())["span"] for c in cells)
    assert spans[0][1] > spans[1][0]  # overlapping


def test_per_task_settings_several_files_and_the_shared_base_cache(tmp_path, tiny_model_dir):
    from unisd.training.sweep import run_sweep

    root = tmp_path / "grid"
    first = write_sweep(tmp_path / "a.yaml", tiny_model_dir, root, recipes=["sft"],
                        per_task={"arithmetic": {"optim.steps": 1}})
    second = write_sweep(tmp_path / "b.yaml", tiny_model_dir, root, recipes=["sft", "sdft"])
    spec = read_sweep(first)
    assert spec["set"]["eval.base_cache"] == str(root / "base_evals")
    assert plan_cells(spec)[0].cfg.optim.steps == 1
    bad = write_sweep(tmp_path / "c.yaml", tiny_model_dir, root, per_task={"gsm8k": {"optim.steps": 1}})
    with pytest.raises(ConfigError, match="per_task names gsm8k, which tasks does not list"):
        read_sweep(bad)

    cells = run_sweep([first, second], show_progress=False)  # sft is in both files: it runs once
    assert [(c.recipe, c.status) for c in cells] == [("sft", "trained"), ("sdft", "trained")]
    assert json.loads((cells[0].run_dir / "summary.json").read_text())["steps"] == 1
    cached = list((root / "base_evals").glob("arithmetic-*.json"))
    assert len(cached) == 1  # one base evaluation, shared by both cells
    befores = [json.loads((c.run_dir / "eval" / "before.json").read_text()) for c in cells]
    shared = json.loads(cached[0].read_text())
    assert befores[0] == shared and "reused_from" not in befores[0]
    assert befores[1] == {**shared, "reused_from": str(cached[0])}  # the second run paid nothing for it
