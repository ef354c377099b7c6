"""Reliability on the tiny model: a non-finite step is skipped and logged and too many stop the run
with the last good checkpoint kept; out of memory names the settings to lower; overlong prompts
are dropped, truncated or refused as configured and always counted; the summary says what ran."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch

import unisd.training.loop as loop
import unisd.training.step as step
from unisd.cli.main import main
from unisd.config import load_config
from unisd.errors import ResourceError, TrainingStopped
from unisd.objectives import HeadLogits
from unisd.tasks.base import DataError
from unisd.training.loop import train

LIMIT = 300  # prompt tokens: the byte-level tiny tokenizer puts short rows near 190, long ones above


def tiny_sets(model_dir, root, recipe_extra=()) -> list[str]:
    return [f"model.name={model_dir}", "data.task=arithmetic", "data.train_limit=16", "optim.steps=3",
            "optim.batch_size=2", "optim.micro_batch_size=2", "rollout.max_new_tokens=4", "eval.before=false",
            "eval.after=false", f"output.root={root}", "output.name=run", "model.lora_r=4", *recipe_extra]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted((ckpt / "weights").rglob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    assert out
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- numerical guard ----------------------------------------------------------------------------

def test_non_finite_steps_are_skipped_logged_and_stop_the_run(tiny_model_dir, tmp_path, monkeypatch):
    """NaN student logits at steps 2, 4 and 5: each update is skipped, its NaN gradients do not leak
    into step 3, and the second bad step in a row (max_bad_steps=2) stops the run at step 5 with
    the step-4 checkpoint (the weights of step 3) kept."""
    bad_steps, calls = {2, 4, 5}, []
    real = step.completion_outputs

    def poisoned(model, view, **kwargs):  # the student forward; one micro-batch per step here
        calls.append(1)
        logits, hidden = real(model, view, **kwargs)
        if len(calls) not in bad_steps:
            return logits, hidden
        if isinstance(logits, HeadLogits):  # the step's student logits: hidden states + head
            return dataclasses.replace(logits, hidden=logits.hidden * float("nan")), hidden
        return logits * float("nan"), hidden

    monkeypatch.setattr(step, "completion_outputs", poisoned)
    cfg = load_config("sft", tiny_sets(tiny_model_dir, tmp_path, ["optim.steps=8", "optim.max_bad_steps=2",
                                                                  "output.checkpoint_every=1",
                                                                  "output.keep_last=10"]))
    out = io.StringIO()
    from rich.console import Console

    with pytest.raises(TrainingStopped) as info:
        train(cfg, console=Console(file=out, width=400), show_progress=False)
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    message = str(info.value)
    assert "2 non-finite steps in a row (optim.max_bad_steps=2); stopped at step 5" in message
    assert f"last good checkpoint is {ckpts / 'step-000004'}" in message

    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["finite"] for r in records] == [True, False, True, False, False]
    assert torch.isfinite(torch.tensor(records[2]["grad_norm"])) and records[2]["grad_norm"] > 0
    console = out.getvalue()
    for r in records:
        if not r["finite"]:
            assert len(r["skipped_ids"]) == 2
            assert f"step {r['step']}: non-finite loss or gradient" in console
            assert f"batch ids: {', '.join(r['skipped_ids'])}" in console

    # skipped updates leave the weights as they were; a good step changes them
    w = {n: _weights(ckpts / f"step-{n:06d}") for n in (1, 2, 3, 4)}
    assert _same(w[1], w[2]) and not _same(w[2], w[3]) and _same(w[3], w[4])
    assert all(torch.isfinite(t).all() for t in w[4].values())
    assert not (ckpts / "step-000005").exists()
    assert not (run / "summary.json").exists()  # a stopped run is not a finished one (`unisd sweep` retries it)


# --- out of memory --------------------------------------------------------------------------------

def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_in_forward_backward_names_the_settings(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(step, "completion_outputs", _out_of_memory)
    sets = tiny_sets(tiny_model_dir, tmp_path, ["eval.batch_size=3"])
    assert main(["train", "sft", *[x for s in sets for x in ("--set", s)]]) == 2
    err = capsys.readouterr().err  # also holds transformers' weight-loading progress bar
    assert "Traceback" not in err
    (err,) = [line for line in err.splitlines() if line.startswith("unisd train: error: ")]
    for text in ("out of GPU memory in the forward/backward of step 1", "optim.micro_batch_size (now 2)",
                 "rollout.max_new_tokens (now 4)", "data.max_prompt_tokens (now 1024)",
                 "model.gradient_checkpointing=true (now false)", "eval.batch_size (now 3)"):
        assert text in err
    assert "release_memory" not in err  # sft trains on gold completions: nothing sampled


def test_out_of_memory_in_rollout_names_the_batch_size(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "rollout", _out_of_memory)
    cfg = load_config("sdft", tiny_sets(tiny_model_dir, tmp_path))
    with pytest.raises(ResourceError, match=r"rollout of step 1.*optim\.batch_size \(now 2"):
        train(cfg, show_progress=False)


def test_out_of_memory_with_auxiliary_teachers_names_k(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(step, "completion_outputs", _out_of_memory)
    cfg = load_config("agreement_tok", tiny_sets(tiny_model_dir, tmp_path, ["teacher.aux.k=2",
                                                                            "model.gradient_checkpointing=true"]))
    with pytest.raises(ResourceError) as info:
        train(cfg, show_progress=False)
    assert "teacher.aux.k (now 2)" in str(info.value) and "gradient_checkpointing" not in str(info.value)
    assert "rollout.release_memory=true" in str(info.value)  # it samples on-policy (sft does not)


# --- overlong prompts and the summary -------------------------------------------------------------

def _overlong_data(path: Path) -> Path:
    rows = [{"id": f"short-{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1),
             "demonstration": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(6)]
    for n in (1, 2):  # over the limit in the student view and in the teacher view
        rows.insert(3 * n, {"id": f"long-{n}", "prompt": "What is 1 + 1? " + "Think carefully. " * 20,
                            "answer": "2", "demonstration": "1 + 1 = 2\n#### 2"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _overlong_sets(model_dir, tmp_path, policy) -> list[str]:
    data = _overlong_data(tmp_path / "rows.jsonl")
    sets = tiny_sets(model_dir, tmp_path, ["data.task=jsonl", f"data.task_args.path={data}",
                                           f"data.max_prompt_tokens={LIMIT}", f"data.overlong={policy}",
                                           "optim.steps=2"])
    return [s for s in sets if not s.startswith("data.train_limit")]


def test_overlong_drop_is_counted_in_the_summary(tiny_model_dir, tmp_path, capsys):
    sets = _overlong_sets(tiny_model_dir, tmp_path, "drop")
    assert main(["train", "sft", *[x for s in sets for x in ("--set", s)]]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]
    assert data["loaded"] == 8 and data["used"] == 6
    assert data["dropped"] == {f"student prompt over {LIMIT} tokens": 2, f"teacher prompt over {LIMIT} tokens": 2}
    assert data["dropped_ids_head"] == ["long-1", "long-2"] and data["truncated"] == {}
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0 and summary["seconds"] > 0
    assert summary["run_dir"] == str(run)
    out = capsys.readouterr().out
    assert "examples: 6 used of 8 loaded" in out and f"student prompt over {LIMIT} tokens" in out
    assert f"outputs: {run}" in out


def test_overlong_truncate_is_counted(tiny_model_dir, tmp_path):
    cfg = load_config("sft", _overlong_sets(tiny_model_dir, tmp_path, "truncate"))
    data = train(cfg, show_progress=False).summary["data"]
    assert data["loaded"] == data["used"] == 8 and data["dropped"] == {}
    assert data["truncated"] == {f"student prompt over {LIMIT} tokens": 2, f"teacher prompt over {LIMIT} tokens": 2}


def test_overlong_error_names_the_example_and_lengths(tiny_model_dir, tmp_path):
    cfg = load_config("sft", _overlong_sets(tiny_model_dir, tmp_path, "error"))
    with pytest.raises(DataError, match=rf"example long-1: the student, teacher prompt is longer than "
                                        rf"data.max_prompt_tokens={LIMIT} \(\d+ tokens\)"):
        train(cfg, show_progress=False)


def test_checkpoint_that_does_not_fit_the_model_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    """Evaluating a LoRA run with another LoRA rank: the weights do not fit, and the CLI says so."""
    from unisd.cli.main import main
    from unisd.config import load_config

    cfg = load_config("sft", [f"model.name={tiny_model_dir}", "data.task=arithmetic", "data.train_limit=4",
                              "optim.steps=1", "optim.batch_size=2", "optim.micro_batch_size=2",
                              "eval.before=false", "eval.after=false", f"output.root={tmp_path}", "output.name=r",
                              "model.lora_r=4"])
    run = train(cfg, show_progress=False).run_dir
    assert main(["eval", "--adapter", str(run), "--limit", "2", "--set", "model.lora_r=8"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "Traceback" not in err


def test_auto_micro_batch_halves_on_out_of_memory_and_trains_the_same(tiny_model_dir, tmp_path, monkeypatch):
    real = step.completion_outputs

    def small_only(model, view, **kwargs):  # a GPU that holds at most 2 rows per forward
        if view.input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(model, view, **kwargs)

    def losses(name, micro, sets=()):
        cfg = load_config("sft", tiny_sets(tiny_model_dir, tmp_path / name, [f"optim.micro_batch_size={micro}",
                                                                            "optim.batch_size=4", *sets]))
        records = _metrics(train(cfg, show_progress=False).run_dir)
        return [r["loss"] for r in records], [r["micro_batch_size"] for r in records]

    reference, _ = losses("two", 2)
    monkeypatch.setattr(step, "completion_outputs", small_only)
    auto, micro = losses("auto", 4, ["optim.auto_micro_batch=true"])
    assert auto == pytest.approx(reference, rel=1e-5) and micro == [2, 2, 2]  # halved in step 1, kept
    with pytest.raises(ResourceError, match="optim.auto_micro_batch=true"):
        losses("off", 4)
