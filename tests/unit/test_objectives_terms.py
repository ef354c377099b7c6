"""Contrastive and feature-matching terms in `unisd.objectives`."""

from __future__ import annotations

import math

import pytest
import torch

from unisd.objectives import distribution_contrastive, feature_matching, hinge_contrastive, token_divergence


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ----- contrastive ------------------------------------------------------------------------------

def test_hinge_hand_computed():
    # token 0: 0.5 + |-2 - -0.5| - |-2 - -2.2| = 0.5 + 1.5 - 0.2 = 1.8
    # token 1: 0.5 + |-1 - -0.5| - |-1 - -3.0| = 0.5 + 0.5 - 2.0 < 0 -> 0
    s = torch.tensor([-2.0, -1.0], requires_grad=True)
    g = torch.tensor([-0.5, -0.5], requires_grad=True)
    b = torch.tensor([-2.2, -3.0], requires_grad=True)
    h = hinge_contrastive(s, g, b, margin=0.5)
    torch.testing.assert_close(h, torch.tensor([1.8, 0.0]))
    h.sum().backward()
    # token 0: d/ds |s - g| = sign(s - g) = -1, d/ds -|s - b| = -sign(s - b) = -1; token 1 inactive
    torch.testing.assert_close(s.grad, torch.tensor([-2.0, 0.0]))
    assert g.grad is None and b.grad is None  # teachers are detached


def test_hinge_matches_naive_reference():
    s, g, b = -_randn(20, seed=1).abs() * 3, -_randn(20, seed=2).abs() * 3, -_randn(20, seed=3).abs() * 3
    got = hinge_contrastive(s, g, b, margin=0.3)
    want = [max(0.0, 0.3 + abs(s[i].item() - g[i].item()) - abs(s[i].item() - b[i].item()))
            for i in range(20)]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert (got > 0).any() and (got == 0).any()
    assert hinge_contrastive(s.bfloat16(), g, b, margin=0.3).dtype == torch.float32


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_distribution_contrastive_matches_definition_and_only_student_gets_gradient(kind):
    n, v = 8, 11
    s = _randn(n, v, seed=4, scale=2).requires_grad_(True)
    good = _randn(n, v, seed=5, scale=2).requires_grad_(True)
    bad = _randn(n, v, seed=6, scale=2).requires_grad_(True)
    got = distribution_contrastive(s, good, bad, margin=0.2, kind=kind, temperature=0.7,
                                   beta=0.3, chunk=3)
    s_ref = s.detach().clone().requires_grad_(True)
    opts = {"kind": kind, "temperature": 0.7, "beta": 0.3}
    # teachers on the teacher side: D(good, S) = token_divergence(S, good)
    want = torch.relu(0.2 + token_divergence(s_ref, good, **opts) - token_divergence(s_ref, bad, **opts))
    torch.testing.assert_close(got, want)
    assert (want > 0).any() and (want == 0).any()
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(s.grad, s_ref.grad)
    assert good.grad is None and bad.grad is None


def test_distribution_contrastive_is_zero_when_student_is_the_good_teacher():
    good = _randn(5, 7, seed=7, scale=2)
    bad = _randn(5, 7, seed=8, scale=2)
    assert torch.all(distribution_contrastive(good.clone(), good, bad, margin=0.0, kind="jsd") == 0)
    # a student equal to the bad teacher pays margin + D(good, bad)
    got = distribution_contrastive(bad.clone(), good, bad, margin=0.1, kind="forward_kl")
    torch.testing.assert_close(got, 0.1 + token_divergence(bad, good, kind="forward_kl"),
                               atol=1e-6, rtol=1e-6)


# ----- features ---------------------------------------------------------------------------------

def test_feature_mse_and_cosine_match_naive_reference():
    s, t = _randn(6, 5, seed=9), _randn(6, 5, seed=10)
    mse = feature_matching(s, t, kind="mse")
    cos = feature_matching(s, t, kind="cosine")
    for i in range(6):
        a, b = s[i].tolist(), t[i].tolist()
        want_mse = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
        dot = sum(x * y for x, y in zip(a, b))
        want_cos = 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
        assert mse[i].item() == pytest.approx(want_mse, abs=1e-6)
        assert cos[i].item() == pytest.approx(want_cos, abs=1e-6)


def test_feature_hand_values_and_invariants():
    s = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    t = torch.tensor([[3.0, 2.0], [0.0, 1.0]])
    torch.testing.assert_close(feature_matching(s, t, kind="mse"), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(feature_matching(s, t, kind="cosine"),
                               torch.tensor([1 - 7 / (math.sqrt(5) * math.sqrt(13)), 1.0]))
    x = _randn(4, 8, seed=11)
    torch.testing.assert_close(feature_matching(x, x.clone(), kind="mse"), torch.zeros(4))
    torch.testing.assert_close(feature_matching(x, 3 * x, kind="cosine"), torch.zeros(4), atol=1e-6, rtol=0)
    out = feature_matching(x.bfloat16(), x.bfloat16(), kind="mse")
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="mse.*cosine"):
        feature_matching(x, x, kind="l1")
    with pytest.raises(ValueError, match="same shape"):
        feature_matching(x, x[:, :3], kind="mse")


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_gradient_reaches_only_student(kind):
    s = _randn(4, 6, seed=12).requires_grad_(True)
    t = _randn(4, 6, seed=13).requires_grad_(True)
    feature_matching(s, t, kind=kind).sum().backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    if kind == "mse":
        torch.testing.assert_close(s.grad, 2 * (s - t).detach() / 6)
