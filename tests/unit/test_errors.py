"""Bad input gets one precise line from the CLI (exit status 2, no traceback), while a bug keeps
its traceback; unknown names list the valid ones; evaluation out of memory names its settings.

None of these trains: data and names are checked before any model loads."""

from __future__ import annotations

import pytest
import torch

from unisd.cli.main import main
from unisd.errors import ResourceError, TrainingStopped, UnknownNameError


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _jsonl(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_unknown_names_are_key_errors_with_plain_messages():
    from unisd.models import registry
    from unisd.models.loading import resolve
    from unisd.tasks import get_task

    for call, valid in ((lambda: get_task("nosuchtask"), "arithmetic, cose"),
                        (lambda: registry.get("nosuchmodel"), "smollm2-135m-instruct"),
                        (lambda: resolve("nosuchmodel"), "smollm2-135m-instruct")):
        with pytest.raises(UnknownNameError) as info:
            call()
        assert isinstance(info.value, KeyError)  # `except KeyError` callers keep working
        assert valid in str(info.value) and not str(info.value).startswith(("'", '"'))


def test_malformed_jsonl_line_names_file_and_line(capsys, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "1+1?", "answer": "2"}', '{"prompt": "2+2?", "answer": '])
    err = _one_line_error(capsys, ["train", "sft", "--task", "jsonl", "--set", f"data.task_args.path={data}",
                                   "--out", str(tmp_path / "runs")])
    assert f"{data}:2: malformed JSON" in err


def test_missing_field_names_field_and_line(capsys, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "1+1?", "answer": "2"}', '{"prompt": "2+2?"}'])
    err = _one_line_error(capsys, ["train", "sft", "--task", "jsonl", "--set", f"data.task_args.path={data}",
                                   "--out", str(tmp_path / "runs")])
    assert f"{data}:2: missing field 'answer'" in err


def test_empty_split(capsys, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ["", "  "])  # blank lines carry no row
    err = _one_line_error(capsys, ["train", "sft", "--task", "jsonl", "--set", f"data.task_args.path={data}",
                                   "--out", str(tmp_path / "runs")])
    assert "split 'train' has no rows" in err and str(data) in err


@pytest.mark.parametrize("argv, expected", [
    (["train", "--task", "nosuchtask"], ["unknown task 'nosuchtask'; valid tasks:", "arithmetic", "gsm8k", "jsonl"]),
    (["train", "nosuchrecipe"], ["unknown recipe 'nosuchrecipe'; valid recipes:", "sdft", "sft", "unisd_star"]),
    (["train", "--task", "arithmetic", "--model", "nosuchmodel"],
     ["unknown model 'nosuchmodel'; packaged aliases:", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]),
    (["eval", "--task", "arithmetic", "--model", "nosuchmodel"], ["unknown model 'nosuchmodel'"]),
])
def test_unknown_names_list_the_valid_ones(capsys, tmp_path, argv, expected):
    out = ["--out", str(tmp_path)] if argv[0] == "train" else ["--output", str(tmp_path / "e.json")]
    err = _one_line_error(capsys, argv + out)
    for text in expected:
        assert text in err


def test_data_dir_in_the_wrong_layout_says_what_was_expected_where(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    err = _one_line_error(capsys, ["train", "--task", "gsm8k", "--data-dir", str(empty), "--out", str(tmp_path)])
    assert f"GSM8K file not found: {empty / 'gsm8k' / 'train.jsonl'}" in err


@pytest.mark.parametrize("exc", [TrainingStopped("3 non-finite steps in a row (optim.max_bad_steps=3)"),
                                 ResourceError("out of GPU memory; lower optim.micro_batch_size (now 4)")])
def test_stopped_runs_are_one_line_errors(capsys, monkeypatch, exc):
    import unisd.training.loop

    def stopped(cfg, **kwargs):
        raise exc

    monkeypatch.setattr(unisd.training.loop, "train", stopped)
    err = _one_line_error(capsys, ["train", "sft"])
    assert err.strip() == f"unisd train: error: {exc}"


def test_a_key_error_from_a_bug_keeps_its_traceback(monkeypatch):
    import unisd.cli.main

    def buggy(args):
        return {}["oops"]

    monkeypatch.setattr(unisd.cli.main, "cmd_recipes", buggy)
    with pytest.raises(KeyError, match="oops"):
        main(["recipes"])


def test_evaluation_out_of_memory_names_eval_settings():
    from unisd.evaluation.runner import evaluate
    from unisd.models.tiny import tiny_model
    from unisd.tasks import get_task

    model, tokenizer = tiny_model("llama", seed=0)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.train()
    model.forward = out_of_memory
    task = get_task("arithmetic")
    with pytest.raises(ResourceError) as info:
        evaluate(model, tokenizer, task, task.load("test", limit=2), max_new_tokens=4, batch_size=2,
                 show_progress=False, description="eval (base)")
    message = str(info.value)
    assert "eval (base)" in message and "eval.batch_size (now 2)" in message
    assert "eval.max_new_tokens (now 4)" in message
    assert model.training  # the mode is restored on the way out
