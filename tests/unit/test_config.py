"""Config: recipes load and validate, overrides coerce types, errors name the field."""

from __future__ import annotations

import pytest

from unisd.config import ConfigError, load_config, recipe_dict, recipe_names
from unisd.config.io import dump_config, read_run_config

EXPECTED_RECIPES = {"sft", "ssd", "sdft", "gkd", "opsd", "agreement_tok", "agreement_seq", "ema", "contrastive",
                    "match_joint", "match_repr", "clip", "unisd_star", "quickstart"}


def test_every_architecture_preset_ships_and_validates():
    assert EXPECTED_RECIPES <= set(recipe_names())
    for name in recipe_names():
        cfg = load_config(name)
        assert cfg.description, f"recipe {name} has no description line"
        assert "base" not in recipe_dict(name)


def test_presets_set_what_their_name_says():
    assert load_config("sft").objective.loss == "nll" and load_config("sft").rollout.source == "gold"
    assert load_config("ssd").objective.loss == "nll" and load_config("ssd").rollout.source == "student"
    assert load_config("gkd").rollout.source == "mixed" and load_config("gkd").objective.divergence == "jsd"
    assert load_config("opsd").teacher.weights == "live" and load_config("opsd").teacher.context == "answer"
    assert load_config("ema").teacher.weights == "ema"
    assert load_config("agreement_seq").objective.agreement.granularity == "sequence"
    assert load_config("match_repr").objective.features.only
    assert load_config("clip").objective.clip.mode == "quantile"
    star = load_config("unisd_star")
    assert star.teacher.weights == "ema" and star.objective.agreement.granularity == "token"
    assert star.objective.contrastive.weight > 0 and star.objective.features.weight > 0
    assert star.teacher.negative.enabled and star.teacher.aux.kind == "retrieval"


def test_overrides_are_typed():
    cfg = load_config("sdft", ["optim.lr=1e-5", "optim.steps=7", "data.train_limit=null",
                               "output.loggers=[tensorboard]", "model.name=some/model"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.steps == 7 and cfg.data.train_limit is None
    assert cfg.output.loggers == ["tensorboard"] and cfg.model.name == "some/model"


@pytest.mark.parametrize("override, fragment", [
    ("optim.lr=abc", "optim.lr: expected a number"),
    ("optim.lrr=1", "optim: unknown field(s) lrr; valid fields:"),
    ("objective.divergence=kl", "objective.divergence: got 'kl'; allowed values: 'forward_kl', 'reverse_kl', 'jsd'"),
    ("teacher.weights=ghost", "teacher.weights: got 'ghost'; allowed values:"),
    ("optim.micro_batch_size=3", "optim.batch_size (16) must be a multiple of optim.micro_batch_size (3)"),
    ("objective.clip.quantile=1.5", "objective.clip.quantile: got 1.5; must lie in (0, 1]"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("rollout.decode_attention=cudnn", "rollout.decode_attention"),
    ("output.profile_steps=[0]", "output.profile_steps: expected a list of step numbers >= 1, got [0]"),
    ("output.profile_steps=3", "output.profile_steps: expected a list"),
    ("objective.agreement.granularity=token", "needs auxiliary teachers"),
    ("objective.contrastive.weight=0.1", "teacher.negative.enabled=true"),
    ("nonsense", "expected the form section.field=value"),
    ("optim.steps.deep=1", "optim.steps"),
])
def test_errors_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("sdft", [override])
    assert fragment in str(info.value)


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'sdtf'; valid recipes: .*sdft"):
        load_config("sdtf")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("unisd_star", ["optim.lr=3e-4"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = read_run_config(tmp_path)
    assert again == cfg


def test_auto_micro_batch_is_refused_under_fsdp():
    from unisd.config import load_config
    from unisd.config.schema import ConfigError

    with pytest.raises(ConfigError, match="optim.auto_micro_batch with distributed.strategy='fsdp'"):
        load_config("sdft", ["optim.auto_micro_batch=true", "distributed.strategy=fsdp"])
    assert load_config("sdft", ["optim.auto_micro_batch=true"]).optim.auto_micro_batch is True
