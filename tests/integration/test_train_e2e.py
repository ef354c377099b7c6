"""A tiny model through the whole product on CPU: train -> checkpoint -> eval -> run directory."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from unisd.cli.main import main
from unisd.config import load_config
from unisd.training.loop import train


def tiny_cfg(model_dir, tmp_path, recipe="sdft", *extra):
    return load_config(recipe, [f"model.name={model_dir}", "data.task=arithmetic", "data.train_limit=32",
                                "optim.steps=3", "optim.batch_size=4", "optim.micro_batch_size=2",
                                "rollout.max_new_tokens=8", "eval.limit=6", "eval.max_new_tokens=8",
                                "eval.batch_size=4", f"output.root={tmp_path}", "output.name=run",
                                "output.checkpoint_every=2", "model.lora_r=4", *extra])


def test_train_checkpoint_eval_files(tiny_model_dir, tmp_path):
    result = train(tiny_cfg(tiny_model_dir, tmp_path), show_progress=False)
    run = result.run_dir
    for name in ("config.yaml", "fingerprint.json", "metrics.jsonl", "summary.json", "eval/before.json",
                 "eval/after.json", "training.png"):
        assert (run / name).exists(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for r in lines:
        assert r["finite"] and r["tokens"] > 0 and r["loss"] >= 0
        assert {"time/generate_s", "rollout/completion_len", "grad_norm", "lr"} <= set(r)
        assert 0.0 <= r["rollout/sample_accuracy"] <= r["rollout/answered_rate"] <= 1.0  # samples scored
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000003"]
    after = json.loads((run / "eval" / "after.json").read_text())
    assert after["aggregate"]["n"] == 6 and len(after["items"]) == 6
    assert 0.0 <= after["aggregate"]["accuracy"]["lo"] <= after["aggregate"]["accuracy"]["hi"] <= 1.0


def test_cli_eval_of_a_run_and_export(tiny_model_dir, tmp_path, capsys):
    run = train(tiny_cfg(tiny_model_dir, tmp_path, "sft", "eval.before=false", "eval.after=false"),
                show_progress=False).run_dir
    assert main(["eval", "--adapter", str(run), "--limit", "3"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert json.loads((run / "eval" / "arithmetic-test.json").read_text())["aggregate"]["n"] == 3
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("argv, message", [
    (["train", "nosuchrecipe"], "unknown recipe 'nosuchrecipe'; valid recipes:"),
    (["train", "--task", "nosuchtask", "--model", "x"], "unknown task 'nosuchtask'; valid tasks:"),
    (["train", "--set", "optim.lr=-1"], "optim.lr: got -1.0"),
    (["eval", "--task", "gsm8k", "--data-dir", "/nonexistent-dir", "--model", "m"], "/nonexistent-dir"),
])
def test_cli_errors_are_one_clear_line(argv, message, capsys, tiny_model_dir):
    if "--model" in argv:
        argv = [a if a not in ("x", "m") else str(tiny_model_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_extra_tasks_are_evaluated_before_and_after_and_reported(tiny_model_dir, tmp_path):
    """eval.extra_tasks: the run also scores another task's items (out-of-distribution transfer),
    and `unisd report` shows it as its own column "<task> (from <trained task>)"."""
    from unisd.config.io import load_config
    from unisd.reporting.report import build_report
    from unisd.training.loop import train

    fixtures = Path(__file__).parents[1] / "fixtures" / "data"
    cfg = load_config("sft", [f"model.name={tiny_model_dir}", "data.task=arithmetic", f"data.data_dir={fixtures}",
                              "data.train_limit=4", "optim.steps=1", "optim.batch_size=2",
                              "optim.micro_batch_size=2", "eval.limit=2", "eval.max_new_tokens=4",
                              "eval.extra_tasks=[gsm8k]", f"output.root={tmp_path}", "output.name=run"])
    result = train(cfg, show_progress=False)
    run = tmp_path / "run"
    for which in ("before", "after"):
        extra = json.loads((run / "eval" / "gsm8k" / f"{which}.json").read_text())
        assert extra["aggregate"]["accuracy"]["n"] == 2
        assert len(extra["items"]) == 2 and [it["id"] for it in extra["items"]] == ["test-0", "test-1"]
        assert result.summary["extra_tasks"]["gsm8k"][which]["accuracy"]["n"] == 2
    out = build_report([run], tmp_path / "report", focus="sft")
    tasks = {r["task"] for r in out["accuracy"]}
    assert tasks == {"arithmetic", "gsm8k (from arithmetic)"}
    assert len(out["cost"]) == 1  # the transfer view has no cost of its own
    assert "gsm8k (from arithmetic)" in (tmp_path / "report" / "report.md").read_text()


def test_an_unknown_extra_task_fails_before_a_run_directory_exists(tiny_model_dir, tmp_path):
    from unisd.config.io import load_config
    from unisd.errors import UnknownNameError

    cfg = load_config("sft", [f"model.name={tiny_model_dir}", "data.task=arithmetic", "eval.extra_tasks=[nosuch]",
                              f"output.root={tmp_path}", "output.name=run"])
    with pytest.raises(UnknownNameError, match="nosuch"):
        train(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_code_task_without_the_sandbox_opt_in_is_a_config_error_naming_the_flag(tiny_model_dir, tmp_path):
    # also for an extra (out-of-distribution) task; the CLI prints ConfigError as one line
    from unisd.config.io import load_config
    from unisd.config.schema import ConfigError

    fixtures = Path(__file__).parents[1] / "fixtures" / "data"
    cfg = load_config("sft", [f"model.name={tiny_model_dir}", "data.task=arithmetic", f"data.data_dir={fixtures}",
                              "eval.extra_tasks=[humaneval]", f"output.root={tmp_path}", "output.name=run"])
    with pytest.raises(ConfigError, match="'humaneval' is scored by running model-written code; pass --execute-code"):
        train(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on CPU needs a C++ compiler")
def test_compiled_layers_train_like_eager(tiny_model_dir, tmp_path):
    import torch

    def losses(flag):
        torch._dynamo.reset()
        cfg = tiny_cfg(tiny_model_dir, tmp_path / flag, "sdft", "optim.steps=2", "eval.before=false",
                       "eval.after=false", f"model.compile={flag}")
        run = train(cfg, show_progress=False).run_dir
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    eager, compiled = losses("false"), losses("true")
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6)
    torch._dynamo.reset()


def test_release_memory_frees_the_generator_after_each_rollout(tiny_model_dir, tmp_path, monkeypatch):
    from unisd.generation.fast import FastGenerator

    cleared = []
    real_clear = FastGenerator.clear
    monkeypatch.setattr(FastGenerator, "clear", lambda self: cleared.append(len(self._workspaces)) or real_clear(self))
    runs = {}
    for release in (False, True):
        cfg = tiny_cfg(tiny_model_dir, tmp_path / str(release), "sdft", "rollout.backend=fast", "eval.before=false",
                       "eval.after=false", f"rollout.release_memory={str(release).lower()}")
        run = train(cfg, show_progress=False).run_dir
        runs[release] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert cleared == [1, 1, 1]  # once per step, each time with the step's workspace alive
    for key in ("loss", "rollout/completion_len", "grad_norm"):  # the same samples and updates
        assert [r[key] for r in runs[True]] == [r[key] for r in runs[False]], key


def test_rollout_options_reach_the_fast_generator(tiny_model_dir, tmp_path, monkeypatch):
    from unisd import generation

    made = []
    real = generation.get_generator

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(generation, "get_generator", spy)
    cfg = tiny_cfg(tiny_model_dir, tmp_path, "sdft", "rollout.backend=fast", "eval.before=false",
                   "eval.after=false", "optim.steps=1", "rollout.decode_attention=sdpa",
                   "rollout.graph_prefill=false")
    train(cfg, show_progress=False)
    (gen,) = made
    assert gen.attention == () and gen.graph_prefill is False  # torch's SDPA choice, eager prompt pass


def test_profile_steps_record_the_listed_steps_and_change_nothing(tiny_model_dir, tmp_path):
    """output.profile_steps: a table and a trace for each listed step, none for the others, and the
    run's losses the same as without profiling."""
    quiet = ("eval.before=false", "eval.after=false")
    plain = train(tiny_cfg(tiny_model_dir, tmp_path / "a", "sdft", *quiet), show_progress=False).run_dir
    run = train(tiny_cfg(tiny_model_dir, tmp_path / "b", "sdft", *quiet, "output.profile_steps=[2]"),
                show_progress=False).run_dir
    assert sorted(p.name for p in (run / "profile").iterdir()) == ["step-2.json.gz", "step-2.txt"]
    table = (run / "profile" / "step-2.txt").read_text()
    assert table.startswith("# step 2: time/generate_s") and "aten::" in table
    assert "grouped by input shapes" in table
    trace = json.loads(gzip.decompress((run / "profile" / "step-2.json.gz").read_bytes()))
    names = {e.get("name") for e in trace["traceEvents"]}
    for phase in ("rollout", "teacher_forward", "student_forward", "student_backward", "optimizer_step"):
        assert f"unisd/{phase}" in names, phase  # the loop's phases, named in the trace

    def losses(d):
        return [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert losses(run) == losses(plain)
