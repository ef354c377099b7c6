"""The collapse watch flags shrinking, looping or over-confident on-policy samples, once per kind."""

from unisd.training.collapse import CollapseWatch


def rec(length, entropy=2.0, repetition=0.0, rows=8):
    return {"rollout/on_policy_rows": rows, "rollout/completion_len": length, "student/entropy": entropy,
            "rollout/repetition": repetition}


def test_length_collapse_is_flagged_once_and_marked_on_every_step():
    watch = CollapseWatch(window=2)
    assert [watch.update(rec(14.0)) for _ in range(2)] == [[], []]
    first = watch.update(rec(5.0))
    assert first == []  # not enough steps after the reference window yet
    new = watch.update(rec(5.0))
    assert len(new) == 1 and new[0].startswith("completion length: 5 over the last 2 steps")
    r = rec(5.0)
    assert watch.update(r) == [] and r["collapse/flags"].startswith("completion length")


def test_entropy_and_repetition_flags_and_healthy_runs_stay_quiet():
    watch = CollapseWatch(window=2)
    for _ in range(2):
        watch.update(rec(10.0, entropy=2.0))
    out = [watch.update(rec(10.0, entropy=0.1, repetition=0.6)) for _ in range(2)]
    kinds = sorted(f.split(":")[0] for f in out[0] + out[1])
    assert kinds == ["repetition", "student entropy"]
    quiet = CollapseWatch(window=2)
    assert all(quiet.update(rec(10.0 + i % 3)) == [] for i in range(10))


def test_steps_without_samples_are_ignored():
    watch = CollapseWatch(window=1)
    watch.update(rec(10.0))
    assert watch.update(rec(0.0, rows=0)) == [] and watch.history["len"] == [10.0]


def test_repetition_that_starts_high_and_stays_is_not_a_collapse():
    # JSON tool calls repeat 4-grams by construction (ToolAlpaca starts at ~0.33): only a rise counts
    steady, rising = CollapseWatch(window=2), CollapseWatch(window=2)
    assert all(steady.update(rec(10.0, repetition=0.33 + 0.02 * (i >= 2))) == [] for i in range(6))
    out = [rising.update(rec(10.0, repetition=0.33 if i < 2 else 0.45)) for i in range(4)]
    assert out[:3] == [[], [], []]  # flagged once a full window follows the reference window
    assert len(out[3]) == 1 and out[3][0].startswith("repetition: 0.45") and "up from 0.33" in out[3][0]
