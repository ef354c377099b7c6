"""Divergence clipping and multi-teacher agreement weights in `unisd.objectives`."""

from __future__ import annotations

import math

import pytest
import torch

from unisd.objectives import (
    clip_divergence,
    disagreement,
    global_mean,
    masked_quantile,
    select_uncertain,
    sequence_weights,
    token_divergence,
    token_weights,
    weight_stats,
)

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _spread_logits(n=16, v=9, seed=0):
    """Student rows of increasing sharpness, so token divergences spread over a wide range."""
    g = torch.Generator().manual_seed(seed)
    sharp = torch.linspace(0.2, 6.0, n)[:, None]
    return torch.randn(n, v, generator=g) * sharp, torch.randn(n, v, generator=g)


def _d_and_grad_rows(kind, s, t):
    """Per-token divergence and, row by row, the gradient of each d_i w.r.t. student logits."""
    x = s.clone().requires_grad_(True)
    d = token_divergence(x, t, kind=kind, beta=0.5)
    (grad,) = torch.autograd.grad(d.sum(), x)  # row i of grad depends only on d_i
    return d.detach(), grad


# ----- clipping ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gradient", ["bound", "drop"])
def test_quantile_clip_binds_for_every_divergence(kind, gradient):
    s, t = _spread_logits()
    x = s.clone().requires_grad_(True)
    d = token_divergence(x, t, kind=kind)
    # mask out the largest and the smallest divergence: they must not set the cap or be clipped
    out = [int(d.argmax()), int(d.argmin())]
    mask = torch.ones(16)
    mask[out] = 0
    res = clip_divergence(d, mask, mode="quantile", quantile=0.75, gradient=gradient)
    want_cap = torch.quantile(d.detach()[mask.bool()], 0.75)
    torch.testing.assert_close(res.cap, want_cap)
    assert res.clipped.any() and not res.clipped[out].any()
    want_clipped = mask.bool() & (d.detach() > want_cap)
    assert torch.equal(res.clipped, want_clipped)
    assert res.rate == pytest.approx(want_clipped.sum().item() / 14)
    torch.testing.assert_close(res.values[res.clipped], res.cap.expand(int(res.clipped.sum())))
    torch.testing.assert_close(res.values[~res.clipped], d[~res.clipped])


@pytest.mark.parametrize("kind", KINDS)
def test_static_clip_binds_for_every_divergence(kind):
    s, t = _spread_logits(seed=1)
    d, _ = _d_and_grad_rows(kind, s, t)
    cap = float(d.median())  # below ln 2 for the JSD, so it binds there too
    res = clip_divergence(d, torch.ones(16), mode="static", value=cap)
    assert 0 < res.rate < 1 and res.cap.item() == pytest.approx(cap)
    assert torch.all(res.values <= cap + 1e-6)


def test_reference_static_cap_of_10_never_binds_for_jsd_but_quantile_does():
    s, t = _spread_logits(seed=2)
    s, t = s * 20, t * 5  # confident models: reverse KL far above 10, JSD still <= ln 2
    d_jsd = token_divergence(s, t, kind="jsd", beta=0.5)
    assert d_jsd.max() <= math.log(2) + 1e-6
    assert clip_divergence(d_jsd, torch.ones(16), mode="static", value=10.0).rate == 0.0
    assert clip_divergence(d_jsd, torch.ones(16), mode="quantile", quantile=0.9).rate > 0
    d_rev = token_divergence(s, t, kind="reverse_kl")
    assert clip_divergence(d_rev, torch.ones(16), mode="static", value=10.0).rate > 0


@pytest.mark.parametrize("kind", KINDS)
def test_drop_gives_zero_gradient_on_clipped_tokens(kind):
    s, t = _spread_logits(seed=3)
    _, grad_rows = _d_and_grad_rows(kind, s, t)
    x = s.clone().requires_grad_(True)
    res = clip_divergence(token_divergence(x, t, kind=kind), torch.ones(16), mode="quantile",
                          quantile=0.5, gradient="drop")
    res.values.sum().backward()
    assert res.clipped.sum() >= 4
    assert torch.all(x.grad[res.clipped] == 0)
    torch.testing.assert_close(x.grad[~res.clipped], grad_rows[~res.clipped])


@pytest.mark.parametrize("kind", KINDS)
def test_bound_keeps_gradient_direction_scaled_by_cap_over_d(kind):
    s, t = _spread_logits(seed=4)
    d, grad_rows = _d_and_grad_rows(kind, s, t)
    x = s.clone().requires_grad_(True)
    res = clip_divergence(token_divergence(x, t, kind=kind), torch.ones(16), mode="quantile",
                          quantile=0.5, gradient="bound")
    res.values.sum().backward()
    c = res.clipped
    assert c.sum() >= 4
    scale = (res.cap / d[c])[:, None]
    assert torch.all(scale < 1)
    torch.testing.assert_close(x.grad[c], grad_rows[c] * scale)
    assert torch.all(x.grad[c].norm(dim=-1) > 0)
    cos = torch.nn.functional.cosine_similarity(x.grad[c], grad_rows[c], dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    torch.testing.assert_close(x.grad[~c], grad_rows[~c])


def test_none_is_identity_and_invalid_modes_raise():
    d = torch.tensor([0.1, 5.0, 0.3], requires_grad=True)
    res = clip_divergence(d, torch.ones(3), mode="none")
    assert res.values is d and res.cap is None and res.rate == 0.0 and not res.clipped.any()
    res = clip_divergence(d, torch.zeros(3), mode="quantile", quantile=0.5)  # no tokens
    assert res.values is d and res.cap is None and res.rate == 0.0
    with pytest.raises(ValueError, match="static.*quantile"):
        clip_divergence(d, torch.ones(3), mode="adaptive")
    with pytest.raises(ValueError, match="bound.*drop"):
        clip_divergence(d, torch.ones(3), mode="static", gradient="zero")


def test_quantile_cap_is_floored_at_zero_and_matches_torch_quantile():
    # rounding can make a KL slightly negative; a negative cap would flip "bound" gradients
    d = torch.tensor([-1e-7, -2e-7, 0.5, 1.0], requires_grad=True)
    res = clip_divergence(d, torch.ones(4), mode="quantile", quantile=0.25, gradient="bound")
    assert res.cap.item() == 0.0
    res.values.sum().backward()
    assert torch.all(d.grad >= 0)
    x = torch.randn(101, generator=torch.Generator().manual_seed(0))
    m = torch.rand(101, generator=torch.Generator().manual_seed(1)) > 0.3
    for q in (0.0, 0.1, 0.5, 0.95, 1.0):
        torch.testing.assert_close(masked_quantile(x, m, q), torch.quantile(x[m], q))


# ----- agreement --------------------------------------------------------------------------------

def _aux(k=3, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(k, n, generator=g) * 4


def test_disagreement_var_and_range_match_naive():
    a = _aux()
    var = disagreement(a, stat="var")
    rng = disagreement(a, stat="range")
    for j in range(a.shape[1]):
        col = a[:, j].tolist()
        mean = sum(col) / len(col)
        assert var[j].item() == pytest.approx(sum((x - mean) ** 2 for x in col) / len(col), abs=1e-6)
        assert rng[j].item() == pytest.approx(max(col) - min(col), abs=1e-6)
    with pytest.raises(ValueError, match="var.*range"):
        disagreement(a, stat="std")


@pytest.mark.parametrize("stat", ["var", "range"])
def test_token_weights_match_formula(stat):
    a = _aux(n=12, seed=1)
    gamma, scale, floor = 3.0, {"var": 0.5, "range": 1.0}[stat], 0.2
    w = token_weights(a, stat=stat, gamma=gamma, scale=scale, min_weight=floor)
    for j in range(12):
        col = a[:, j].tolist()
        mean = sum(col) / len(col)
        d = sum((x - mean) ** 2 for x in col) / len(col) if stat == "var" else max(col) - min(col)
        assert w[j].item() == pytest.approx(max(floor, 1 / (1 + gamma * d / scale)), abs=1e-6)
    assert (w == floor).any() and (w > floor).any()  # the floor both binds and does not


def test_gamma_zero_gives_unit_weights():
    a = _aux()
    assert torch.equal(token_weights(a, gamma=0.0), torch.ones(10))
    mask = torch.ones(10, 5)
    assert torch.equal(sequence_weights(a[:, :, None].expand(3, 10, 5), mask, gamma=0.0),
                       torch.ones(10))


def test_token_weights_do_not_depend_on_batch_mates():
    example = _aux(n=6, seed=2)
    mate_x, mate_y = _aux(n=9, seed=3), _aux(n=4, seed=4) * 10  # very different disagreement
    w_x = token_weights(torch.cat([example, mate_x], 1), gamma=1.0, scale=0.5)[:6]
    w_y = token_weights(torch.cat([mate_y, example], 1), gamma=1.0, scale=0.5)[4:]
    assert torch.equal(w_x, w_y)

    # the reference's per-micro-batch quantile scale would make them differ
    def reference(a):
        d = a.var(0, unbiased=True)
        scale = torch.quantile(d, 0.95).clamp_min(1e-6)
        return (1 / (1 + (d / scale).clamp(max=10))).clamp_min(0.01)
    ref_x = reference(torch.cat([example, mate_x], 1))[:6]
    ref_y = reference(torch.cat([mate_y, example], 1))[4:]
    assert not torch.allclose(ref_x, ref_y)


def test_sequence_weights_match_formula_and_ignore_padding():
    g = torch.Generator().manual_seed(5)
    a = -torch.rand(3, 4, 6, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]])
    gamma, scale, floor = 2.0, 0.1, 0.05
    for stat in ("var", "range"):
        w = sequence_weights(a, mask, stat=stat, gamma=gamma, scale=scale, min_weight=floor)
        for b in range(4):
            n = int(mask[b].sum())
            means = [sum(a[k, b, t].item() for t in range(6) if mask[b, t]) / max(n, 1) for k in range(3)]
            mu = sum(means) / 3
            d = sum((x - mu) ** 2 for x in means) / 3 if stat == "var" else max(means) - min(means)
            assert w[b].item() == pytest.approx(max(floor, math.exp(-gamma * d / scale)), abs=1e-6)
        assert w[3].item() == 1.0  # fully masked sequence
    poisoned = a.clone()
    poisoned[:, mask == 0] = float("-inf")
    torch.testing.assert_close(sequence_weights(poisoned, mask, gamma=gamma, scale=scale),
                               sequence_weights(a, mask, gamma=gamma, scale=scale))


def test_sequence_weights_change_loss_and_gradient_unlike_reference_normalisation():
    g = torch.Generator().manual_seed(6)
    b, t, v = 3, 5, 7
    s = torch.randn(b * t, v, generator=g) * 2
    teacher = torch.randn(b * t, v, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    aux = -torch.rand(3, b, t, generator=g) * 4
    w = sequence_weights(aux, mask, gamma=2.0, scale=1.0)
    assert w.max() - w.min() > 0.1  # the weights really differ across sequences

    def run(loss_fn):
        x = s.clone().requires_grad_(True)
        d = token_divergence(x, teacher, kind="forward_kl").view(b, t)
        loss = loss_fn(d)
        loss.backward()
        return loss.detach(), x.grad

    n = mask.sum()
    ours_plain = run(lambda d: global_mean(d, mask, num_tokens=n))
    ours_w = run(lambda d: global_mean(d, mask, num_tokens=n, weights=w))
    assert not torch.allclose(ours_plain[0], ours_w[0])
    assert not torch.allclose(ours_plain[1], ours_w[1])

    # reference (spec 2.1): per-sequence sum(m w D) / max(1, sum(m w)), then the batch mean
    def reference(weights):
        def fn(d):
            m = mask.float()
            per_seq = (m * weights[:, None] * d).sum(1) / (m * weights[:, None]).sum(1).clamp_min(1)
            return per_seq.mean()
        return fn
    assert ((mask.sum(1) * w) >= 1).all()  # away from the clamp, where it cancels exactly
    ref_plain = run(reference(torch.ones(b)))
    ref_w = run(reference(w))
    torch.testing.assert_close(ref_w[0], ref_plain[0])
    torch.testing.assert_close(ref_w[1], ref_plain[1])


def test_select_uncertain_picks_top_fraction():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.0, 0.4, 0.6])
    top3 = select_uncertain(scores, fraction=0.3)
    assert top3.dtype == torch.bool and top3.sum() == 3
    # 0.28 * 25 is 7.000000000000001 in floats: still 7 sequences, not 8
    assert select_uncertain(torch.arange(25.0), fraction=0.28).sum() == 7
    assert set(torch.nonzero(top3).flatten().tolist()) == {1, 6, 4}
    assert select_uncertain(scores, fraction=0.25).sum() == 3  # ceil(2.5)
    assert select_uncertain(scores, fraction=0.01).sum() == 1  # at least one
    assert select_uncertain(scores, fraction=1.0).all()
    assert select_uncertain(torch.zeros(0), fraction=0.5).shape == (0,)
    with pytest.raises(ValueError, match="fraction"):
        select_uncertain(scores, fraction=0.0)


def test_weight_stats():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 99.0])
    mask = torch.tensor([1, 1, 1, 1, 1, 0])
    stats = weight_stats(w, mask)
    assert set(stats) == {"mean", "min", "p10", "p50", "p90"}
    assert stats["mean"] == pytest.approx(0.3) and stats["min"] == pytest.approx(0.1)
    assert stats["p50"] == pytest.approx(0.3) and stats["p90"] == pytest.approx(0.46)
    assert stats["p10"] == pytest.approx(0.14)
    assert weight_stats(w)["mean"] == pytest.approx(w.mean().item())
    assert all(math.isnan(x) for x in weight_stats(w, torch.zeros(6)).values())
