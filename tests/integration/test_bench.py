"""`unisd bench` end to end on CPU with the tiny model: every section runs and bench.json has every
key. No timing assertions: speed targets live in docs/benchmarks.md, measured on the GPU."""

from __future__ import annotations

import json

from unisd.cli.main import main

PHASES = {"generate", "teacher", "student", "optimizer"}


def test_bench_writes_every_section(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "sdft", "--model", str(tiny_model_dir), "--task", "arithmetic", "--batch-size", "4",
            "--new-tokens", "8", "--steps", "2", "--out", str(out), "--set", "model.lora_r=4"]
    assert main(argv) == 0
    assert "generation" in capsys.readouterr().out
    res = json.loads((out / "bench.json").read_text())
    assert {"schema", "device", "date", "versions", "config", "settings", "ceilings", "model", "generation",
            "generation_prompts", "training", "mfu_formula", "errors"} <= set(res)
    assert {"torch", "transformers"} <= set(res["versions"]) and res["device"]["name"]
    assert res["ceilings"]["matmul"]["tflops"] > 0 and res["ceilings"]["matmul"]["dtype"] == "float32"
    assert res["ceilings"]["copy_bandwidth"]["gb_per_s"] > 0
    assert res["config"]["data"]["task"] == "arithmetic"

    gen = {r["backend"]: r for r in res["generation"]}
    assert set(gen) == {"fast", "fast_unfused", "fast_graph_prefill", "hf", "hf_static"}
    for name in ("fast", "hf"):  # the static cache may fail on CPU; then its error is recorded
        r = gen[name]
        assert r["error"] is None and r["batch"] == 4 and r["tokens_per_s"] > 0
        assert {"seconds", "prefill_s", "decode_step_s", "bound_step_s", "x_bound",
                "bound_tokens_per_s"} <= set(r)
    assert gen["hf_static"]["error"] is None or "generation/hf_static/b4" in res["errors"]

    (t,) = res["training"]
    assert t["batch"] == 4 and t["steps_run"] == 2 and t["steps_measured"] == [2]
    assert set(t["split_s"]) == PHASES and set(t["split_share"]) == PHASES
    assert t["split_s"]["teacher"] > 0 and t["split_s"]["student"] > 0
    for key in ("step_s", "samples_per_s", "tokens_per_s", "peak_memory_gb", "flops_per_step", "mfu"):
        assert t[key] > 0, key
    step = t["per_step"][-1]
    assert abs(step["time/teacher_s"] + step["time/student_s"] - step["time/forward_backward_s"]) < 1e-9
    assert step["tokens/teacher_forward"] > 0 and step["tokens/student_forward"] > 0
