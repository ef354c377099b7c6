"""The collapse watch flags shrinking, looping or over-confident on-policy samples, once per kind."""

import pytest

from unisd.evaluation.collapse import CollapseRule
from unisd.training.collapse import CollapseWatch


def rec(length, entropy=2.0, repetition=0.0, rows=8):
    return {"rollout/on_policy_rows": rows, "rollout/completion_len": length, "student/entropy": entropy,
            "rollout/repetition": repetition}


def test_length_collapse_is_flagged_once_and_marked_on_every_step():
    watch = CollapseWatch(CollapseRule(window=2))
    assert [watch.update(rec(14.0)) for _ in range(2)] == [[], []]
    first = watch.update(rec(5.0))
    assert first == []  # not enough steps after the reference window yet
    new = watch.update(rec(5.0))
    assert len(new) == 1 and new[0].startswith("completion length: 5 over the last 2 steps")
    r = rec(5.0)
    assert watch.update(r) == [] and r["collapse/flags"].startswith("completion length")


def test_entropy_and_repetition_flags_and_healthy_runs_stay_quiet():
    watch = CollapseWatch(CollapseRule(window=2))
    for _ in range(2):
        watch.update(rec(10.0, entropy=2.0))
    out = [watch.update(rec(10.0, entropy=0.1, repetition=0.6)) for _ in range(2)]
    kinds = sorted(f.split(":")[0] for f in out[0] + out[1])
    assert kinds == ["repetition", "student entropy"]
    quiet = CollapseWatch(CollapseRule(window=2))
    assert all(quiet.update(rec(10.0 + i % 3)) == [] for i in range(10))


def test_steps_without_samples_are_ignored():
    watch = CollapseWatch(CollapseRule(window=1))
    watch.update(rec(10.0))
    assert watch.update(rec(0.0, rows=0)) == [] and watch.history["length"] == [10.0]


def test_repetition_that_starts_high_and_stays_is_not_a_collapse():
    # JSON tool calls repeat 4-grams by construction (ToolAlpaca starts at ~0.33): only a rise counts
    steady, rising = CollapseWatch(CollapseRule(window=2)), CollapseWatch(CollapseRule(window=2))
    assert all(steady.update(rec(10.0, repetition=0.33 + 0.02 * (i >= 2))) == [] for i in range(6))
    out = [rising.update(rec(10.0, repetition=0.33 if i < 2 else 0.45)) for i in range(4)]
    assert out[:3] == [[], [], []]  # flagged once a full window follows the reference window
    assert len(out[3]) == 1 and out[3][0].startswith("repetition: 0.45") and "up from 0.33" in out[3][0]


def test_rule_by_hand():
    rule = CollapseRule()
    assert rule.collapsed("length", 20.0, 9.9) and not rule.collapsed("length", 20.0, 10.0)
    assert rule.collapsed("entropy", 1.0, 0.29) and not rule.collapsed("entropy", 0.0, 0.0)
    assert rule.collapsed("repetition", 0.2, 0.31) and not rule.collapsed("repetition", 0.25, 0.31)
    assert not rule.collapsed("length", None, 1.0)
    with pytest.raises(ValueError, match="unknown collapse kind"):
        rule.collapsed("speed", 1.0, 1.0)


def test_answer_rate_collapse_and_what_feeds_it():
    from unisd.models.tiny import tiny_tokenizer
    from unisd.tasks import get_task
    from unisd.tasks.base import Example
    from unisd.training.rollout import rollout_stats, sample_scorer

    watch = CollapseWatch(CollapseRule(window=2))
    out = [watch.update({**rec(10.0), "rollout/answered_rate": a}) for a in (0.8, 0.8, 0.3, 0.3)]
    assert out[:3] == [[], [], []] and out[3][0].startswith("answer rate: 0.3 over the last 2 steps")
    stats = rollout_stats({"on_policy_rows": 4.0, "completion_tokens": 40.0, "truncated_rows": 0.0,
                           "repeated_4grams": 0.0, "4grams": 10.0, "scored_rows": 4.0, "answered_rows": 3.0,
                           "correct_rows": 1.0})
    assert (stats["rollout/answered_rate"], stats["rollout/sample_accuracy"]) == (0.75, 0.25)
    assert "rollout/answered_rate" not in rollout_stats({"on_policy_rows": 0.0, "completion_tokens": 0.0,
                                                         "truncated_rows": 0.0, "repeated_4grams": 0.0,
                                                         "4grams": 0.0})
    tok = tiny_tokenizer()
    gsm8k = get_task("gsm8k")
    score = sample_scorer(gsm8k, tok)
    example = Example(id="1", prompt="What is 2 + 3?", answer="5")
    assert score(example, tok.encode("2 + 3 = 5\n#### 5")).correct == 1.0
    assert score(example, tok.encode("I like the example.")).extracted is None
    assert sample_scorer(get_task("mbpp"), tok) is None  # code is never run during training
