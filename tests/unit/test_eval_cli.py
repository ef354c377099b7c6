"""`unisd eval` end to end on a tiny model folder: per-item JSON with an aggregate, retention
(the base row without --adapter, the adapter-disabled base for a LoRA run), cloze scoring on a
multiple-choice JSONL file, and resources."""

from __future__ import annotations

import json

import pytest

from unisd.cli.main import main

MC_ROWS = [
    {"prompt": "Which animal barks?", "choices": ["dog", "cat", "fish"], "answer": "A",
     "demonstration": "Dogs bark."},
    {"prompt": "What is 3 + 4?", "choices": ["12", "7"], "answer": 1},
    {"prompt": "The opposite of hot is", "choices": ["warm", "cold", "tepid", "boiling"], "answer": "cold"},
    {"prompt": "Water freezes at", "choices": ["0 C", "100 C"], "answer": "A"},
]


def test_eval_arithmetic_base_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--task", "arithmetic", "--model", str(tiny_model_dir), "--limit", "3",
                 "--set", "eval.max_new_tokens=6", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "PPL_ret" in printed and "resources:" in printed
    result = json.loads(out.read_text())
    agg = result["aggregate"]
    assert agg["n"] == 3 and len(result["items"]) == 3 and agg["weights"] == "base"
    assert 0.0 <= agg["accuracy"]["lo"] <= agg["accuracy"]["mean"] <= agg["accuracy"]["hi"] <= 1.0
    ret = agg["retention"]
    assert ret["base"] == "self" and ret["jsd_mean"] == 0.0  # the base row: JSD 0 by construction
    assert ret["ppl_ret_corpus"] == pytest.approx(ret["ppl_tuned_corpus"])
    assert ret["gold_n"] == 3 and ret["gold_fit_ppl_corpus"] > 1
    res = agg["resources"]
    assert res["wall_s"] > 0 and res["tokens"] == sum(it["completion_tokens"] for it in result["items"])
    assert res["energy_j"] is None  # CPU: not measured, never estimated
    assert "cloze" not in agg  # not multiple choice


def test_eval_without_retention(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--task", "arithmetic", "--model", str(tiny_model_dir), "--limit", "2",
                 "--set", "eval.max_new_tokens=4", "--no-retention", "--output", str(out)]) == 0
    agg = json.loads(out.read_text())["aggregate"]
    assert "retention" not in agg and "retention" not in json.loads(out.read_text())["items"][0]


def test_eval_jsonl_multiple_choice_reports_cloze(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "mc"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    out = tmp_path / "mc.json"
    assert main(["eval", "--task", "jsonl", "--model", str(tiny_model_dir), "--limit", "3",
                 "--set", f"data.task_args.path={data}/{{split}}.jsonl", "--set", "eval.max_new_tokens=6",
                 "--output", str(out)]) == 0
    assert "cloze" in capsys.readouterr().out
    result = json.loads(out.read_text())
    agg = result["aggregate"]
    assert agg["n"] == 3 and agg["cloze"]["n"] == 3 and agg["cloze_sum"]["n"] == 3
    assert agg["cloze_norm"] == "mean_token"
    assert 0.0 <= agg["cloze"]["mean"] <= 1.0
    for it in result["items"]:
        assert it["cloze"]["choice"] in "ABCD"
        assert it["details"]["cloze"] == float(it["cloze"]["choice"] == it["answer"])
    assert agg["strict"]["n"] == 3  # the generative scores are still there beside it


def test_eval_of_a_lora_run_uses_the_adapter_disabled_base(tiny_model_dir, tmp_path):
    from unisd.config import load_config
    from unisd.training.loop import train

    cfg = load_config("sft", [f"model.name={tiny_model_dir}", "data.task=arithmetic", "data.train_limit=8",
                              "optim.steps=2", "optim.batch_size=4", "optim.micro_batch_size=4",
                              "optim.lr=1e-2",
                              "eval.before=false", "eval.after=false", f"output.root={tmp_path}",
                              "output.name=run", "model.lora_r=4"])
    run = train(cfg, show_progress=False).run_dir
    assert main(["eval", "--adapter", str(run), "--limit", "2", "--set", "eval.max_new_tokens=6"]) == 0
    agg = json.loads((run / "eval" / "arithmetic-test.json").read_text())["aggregate"]
    ret = agg["retention"]
    assert ret["base"] == "adapter_disabled" and ret["n"] == 2
    assert ret["jsd_mean"] > 0  # the trained adapter moved the distribution


def test_train_summary_table_skips_aggregate_dicts_without_a_ci(capsys):
    from unisd.cli.main import _print_summary

    ci = {"mean": 0.5, "lo": 0.25, "hi": 0.75, "n": 4}
    agg = {"accuracy": ci, "cloze": ci, "resources": {"wall_s": 1.0}, "retention": {"base": "self"}}
    _print_summary({"recipe": "sdft", "task": "t", "model": "m", "before": agg, "after": agg,
                    "data": {"used": 1, "loaded": 1, "dropped": 0, "truncated": 0, "without_negative": 0},
                    "steps": 1, "skipped_steps": 0, "seconds": 1.0, "peak_memory_gb": 0.1, "device": "cpu",
                    "run_dir": "x"})
    out = capsys.readouterr().out
    assert "cloze" in out and "resources" not in out
