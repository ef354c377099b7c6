"""Every shipped recipe trains 2 steps on the tiny model on CPU, through the real loop."""

from __future__ import annotations

import json

import pytest

from unisd.config import load_config, recipe_names
from unisd.training.loop import train

RECIPES = [r for r in recipe_names() if r != "quickstart"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_two_steps(recipe, tiny_model_dir, tmp_path):
    cfg = load_config(recipe, [f"model.name={tiny_model_dir}", "data.task=arithmetic", "data.train_limit=16",
                               "optim.steps=2", "optim.batch_size=4", "optim.micro_batch_size=2",
                               "rollout.max_new_tokens=6", "teacher.negative.max_new_tokens=24",
                               "eval.before=false", "eval.after=false", f"output.root={tmp_path}",
                               "output.name=r", "model.lora_r=4"])
    result = train(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["finite"] for r in rows)
    if cfg.objective.agreement.granularity != "none":
        assert "agreement/weight_mean" in rows[0]
    if cfg.objective.clip.mode != "none":
        assert "clip/rate" in rows[0]
    if cfg.objective.contrastive.weight > 0:
        assert "contrastive/rows_without_negative" in rows[0]
        data = json.loads((result.run_dir / "summary.json").read_text())["data"]
        assert data["used"] == 16  # examples without a usable negative are kept (and counted)
