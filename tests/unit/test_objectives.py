"""Divergences, sampled-token log-probs, entropy and reductions in `unisd.objectives`.

Every fast path is checked against a naive float64 reference written with Python loops, plus
hand-computed values on 2- and 3-token distributions (logits = log p, so p is known).
"""

from __future__ import annotations

import math

import pytest
import torch

from unisd.objectives import (
    HeadLogits,
    chunked_token_divergence,
    entropy,
    global_mean,
    sampled_token_logp,
    token_divergence,
    token_sum,
)

KINDS = ("forward_kl", "reverse_kl", "jsd")


# ----- naive references (python floats, float64) -------------------------------------------

def _softmax(row, temperature=1.0):
    xs = [float(x) / temperature for x in row]
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    z = sum(exps)
    return [e / z for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def naive_divergence(s_row, t_row, kind, beta=0.5, temperature=1.0):
    ps, pt = _softmax(s_row, temperature), _softmax(t_row, temperature)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _kl(pt, ps)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return _kl(ps, pt)
    m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
    return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)


def _rows(n=6, v=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


def _logits(*probs):
    return torch.tensor([[math.log(p) for p in row] for row in probs])


# ----- token_divergence: references, hand values, invariants --------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_divergence_matches_naive_reference(kind, beta, temperature):
    s, t = _rows()
    got = token_divergence(s, t, kind=kind, beta=beta, temperature=temperature)
    assert got.dtype == torch.float32 and got.shape == (6,)
    want = [naive_divergence(s[i].tolist(), t[i].tolist(), kind, beta, temperature) for i in range(6)]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_hand_computed_two_token():
    # p_T = [0.5, 0.5], p_S = [0.25, 0.75]
    s, t = _logits([0.25, 0.75]), _logits([0.5, 0.5])
    fwd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    m = [0.5 * 0.5 + 0.5 * 0.25, 0.5 * 0.5 + 0.5 * 0.75]  # [0.375, 0.625]
    jsd = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) \
        + 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))
    assert fwd == pytest.approx(0.5 * math.log(4 / 3)) and fwd == pytest.approx(0.1438410, abs=1e-6)
    assert token_divergence(s, t, kind="forward_kl").item() == pytest.approx(fwd, abs=1e-6)
    assert token_divergence(s, t, kind="reverse_kl").item() == pytest.approx(rev, abs=1e-6)
    assert token_divergence(s, t, kind="jsd", beta=0.5).item() == pytest.approx(jsd, abs=1e-6)


def test_hand_computed_three_token():
    # p_T = [0.7, 0.2, 0.1], p_S = [0.2, 0.5, 0.3]; JSD with beta = 0.25 (teacher weight)
    pt, ps = [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]
    s, t = _logits(ps), _logits(pt)
    fwd = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    rev = 0.2 * math.log(0.2 / 0.7) + 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.1)
    # by hand, M = 0.25 * p_T + 0.75 * p_S = [0.325, 0.425, 0.25]
    jsd = 0.25 * (0.7 * math.log(0.7 / 0.325) + 0.2 * math.log(0.2 / 0.425) + 0.1 * math.log(0.1 / 0.25)) \
        + 0.75 * (0.2 * math.log(0.2 / 0.325) + 0.5 * math.log(0.5 / 0.425) + 0.3 * math.log(0.3 / 0.25))
    assert token_divergence(s, t, kind="forward_kl").item() == pytest.approx(fwd, abs=1e-6)
    assert token_divergence(s, t, kind="reverse_kl").item() == pytest.approx(rev, abs=1e-6)
    assert token_divergence(s, t, kind="jsd", beta=0.25).item() == pytest.approx(jsd, abs=1e-6)
    # the JSD (0 < beta < 1) is bounded by the binary entropy H(beta)
    assert jsd <= -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))


def test_beta_endpoints_are_the_two_kls_teacher_weight_convention():
    s, t = _rows(seed=1)
    fwd = token_divergence(s, t, kind="forward_kl")
    rev = token_divergence(s, t, kind="reverse_kl")
    assert not torch.allclose(fwd, rev)  # the test could tell them apart
    torch.testing.assert_close(token_divergence(s, t, kind="jsd", beta=0.0), fwd, rtol=0, atol=0)
    torch.testing.assert_close(token_divergence(s, t, kind="jsd", beta=1.0), rev, rtol=0, atol=0)
    # The endpoints are not just labels: the mixture formula itself tends to beta * KL(T||S)
    # near beta = 0 and to (1 - beta) * KL(S||T) near beta = 1. Checked in float64.
    s64, t64 = s.double(), t.double()
    eps = 1e-5
    near0 = token_divergence(s64, t64, kind="jsd", beta=eps) / eps
    near1 = token_divergence(s64, t64, kind="jsd", beta=1 - eps) / eps
    torch.testing.assert_close(near0, fwd.double(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(near1, rev.double(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_inputs_give_zero(kind):
    s, _ = _rows()
    torch.testing.assert_close(token_divergence(s, s.clone(), kind=kind), torch.zeros(6),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_is_applied(kind):
    s, t = _rows(seed=2)
    hot = token_divergence(s, t, kind=kind, temperature=2.0)
    torch.testing.assert_close(hot, token_divergence(s / 2, t / 2, kind=kind))
    assert not torch.allclose(hot, token_divergence(s, t, kind=kind))


def test_teacher_is_detached_and_student_gradient_matches_float64_reference():
    s, t = _rows(seed=3)
    for kind in KINDS:
        s32 = s.clone().requires_grad_(True)
        t32 = t.clone().requires_grad_(True)
        token_divergence(s32, t32, kind=kind, beta=0.3).sum().backward()
        assert t32.grad is None
        # independent float64 formula on probabilities
        s64 = s.double().requires_grad_(True)
        ps, pt = torch.softmax(s64, -1), torch.softmax(t.double(), -1)
        if kind == "forward_kl":
            ref = (pt * (pt / ps).log()).sum(-1)
        elif kind == "reverse_kl":
            ref = (ps * (ps / pt).log()).sum(-1)
        else:
            m = 0.3 * pt + 0.7 * ps
            ref = 0.3 * (pt * (pt / m).log()).sum(-1) + 0.7 * (ps * (ps / m).log()).sum(-1)
        ref.sum().backward()
        torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_invalid_kind_lists_allowed_kinds():
    s, t = _rows()
    with pytest.raises(ValueError, match="forward_kl.*reverse_kl.*jsd"):
        token_divergence(s, t, kind="kl")
    with pytest.raises(ValueError, match="forward_kl"):
        chunked_token_divergence(s, t, kind="tvd")
    with pytest.raises(ValueError, match="beta"):
        token_divergence(s, t, kind="jsd", beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        token_divergence(s, t, kind="jsd", temperature=0.0)


# ----- chunking -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 50])
def test_chunked_equals_unchunked_values_and_gradients(kind, chunk):
    s, t = _rows(n=10, v=13, seed=4)
    w = torch.linspace(0.5, 2.0, 10)  # non-uniform upstream gradient
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    full = token_divergence(a, t, kind=kind, beta=0.4, temperature=0.7)
    part = chunked_token_divergence(b, t, kind=kind, beta=0.4, temperature=0.7, chunk=chunk)
    torch.testing.assert_close(part, full, rtol=1e-6, atol=1e-7)
    (full * w).sum().backward()
    (part * w).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)


def test_chunked_gradcheck_float64():
    s, t = _rows(n=5, v=4, seed=5)
    s = s.double().requires_grad_(True)
    fn = lambda x: chunked_token_divergence(x, t.double(), kind="jsd", beta=0.3, chunk=2)
    assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_bf16_inputs_use_float32_math(kind):
    s, t = _rows(n=9, v=11, seed=6)
    s_bf = s.bfloat16().requires_grad_(True)
    t_bf = t.bfloat16()
    got = chunked_token_divergence(s_bf, t_bf, kind=kind, chunk=4)
    assert got.dtype == torch.float32
    # bf16 -> fp32 is exact, so fp32 math on the upcast inputs must match to fp32 precision
    s32 = s_bf.detach().float().requires_grad_(True)
    want = token_divergence(s32, t_bf.float(), kind=kind)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    got.sum().backward()
    want.sum().backward()
    assert s_bf.grad.dtype == torch.bfloat16
    torch.testing.assert_close(s_bf.grad, s32.grad.bfloat16())
    # and the unchunked bf16 path gives the same bf16 gradient
    s_un = s_bf.detach().clone().requires_grad_(True)
    token_divergence(s_un, t_bf, kind=kind).sum().backward()
    torch.testing.assert_close(s_bf.grad, s_un.grad, rtol=0, atol=0)


def test_chunked_saves_only_input_logits_for_backward():
    """Autograd keeps no float32 [rows, V] tensor: only bf16 input chunks are saved."""
    v = 17
    s = torch.randn(8, v).bfloat16().requires_grad_(True)
    t = torch.randn(8, v).bfloat16()

    def saved_by(fn, **kw):
        saved = []

        def pack(x):
            saved.append((x.dtype, tuple(x.shape)))
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn(s, t, kind="jsd", **kw).sum()
        return saved

    plain = saved_by(token_divergence)
    assert any(dt == torch.float32 and shape[-1] == v for dt, shape in plain)  # probe works
    chunked = saved_by(chunked_token_divergence, chunk=3)
    assert chunked and all(dt == torch.bfloat16 for dt, _ in chunked)
    assert all(shape[0] <= 3 for _, shape in chunked)


def test_chunked_without_grad_and_empty_input():
    s, t = _rows(n=4, v=5)
    with torch.no_grad():
        torch.testing.assert_close(chunked_token_divergence(s, t, kind="reverse_kl", chunk=3),
                                   token_divergence(s, t, kind="reverse_kl"))
    empty = torch.zeros(0, 5, requires_grad=True)
    out = chunked_token_divergence(empty, torch.zeros(0, 5), kind="jsd", chunk=2)
    assert out.shape == (0,)
    with pytest.raises(ValueError, match="chunk"):
        chunked_token_divergence(s, t, kind="jsd", chunk=0)


# ----- logits left as hidden states + head (HeadLogits) ----------------------------------------

def _head(h=5, v=13, seed=8, bias=True):
    torch.manual_seed(seed)
    return torch.nn.Linear(h, v, bias=bias).double()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 4, 50])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_head_logits_give_the_values_and_gradients_of_materialised_logits(kind, chunk, softcap):
    head = _head()
    hidden = torch.randn(10, 5, dtype=torch.float64)
    t = torch.randn(10, 13, dtype=torch.float64)
    w = torch.linspace(0.5, 2.0, 10, dtype=torch.float64)

    def run(lazy: bool):
        head.zero_grad()
        x = hidden.clone().requires_grad_(True)
        lz = HeadLogits(x, head, softcap=softcap)
        s = lz if lazy else lz.materialize()
        d = chunked_token_divergence(s, t, kind=kind, beta=0.3, temperature=0.8, chunk=chunk)
        e = entropy(s, temperature=0.8, chunk=chunk)
        lp = sampled_token_logp(s, torch.arange(10) % 13, chunk=chunk)
        ((d + 0.1 * e - lp) * w).sum().backward()
        return d.detach(), e.detach(), lp.detach(), x.grad, head.weight.grad.clone(), head.bias.grad.clone()

    for got, want in zip(run(True), run(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the soft-capping is applied: capped logits differ from raw ones
    if softcap:
        raw = chunked_token_divergence(head(hidden), t, kind=kind, beta=0.3, temperature=0.8)
        capped = chunked_token_divergence(HeadLogits(hidden, head, softcap=softcap), t, kind=kind, beta=0.3,
                                          temperature=0.8)
        assert not torch.allclose(raw, capped)


def test_head_logits_hand_value():
    # hidden [1, 1] = 2, head weights [1, -1] (no bias): logits [2, -2], teacher logits [0, 0]
    head = torch.nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    z = math.exp(2) + math.exp(-2)
    want = 0.5 * math.log(0.5 * z / math.exp(2)) + 0.5 * math.log(0.5 * z / math.exp(-2))  # KL(T || S)
    got = chunked_token_divergence(HeadLogits(torch.tensor([[2.0]], dtype=torch.float64), head),
                                   torch.zeros(1, 2, dtype=torch.float64), kind="forward_kl")
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)


def test_head_logits_never_hold_whole_logits_or_their_gradient():
    """Every tensor made in forward and backward is at most one chunk of logits: the [N, V] logits
    and their [N, V] gradient never exist (probe: the materialised path makes them)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    n, v, chunk = 12, 40, 3

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.rows_of_v = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            for x in out if isinstance(out, (tuple, list)) else (out,):
                # new memory only: views (the teacher's detach) share their input's storage
                if (isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] == v
                        and x.untyped_storage().data_ptr() not in inputs):
                    self.rows_of_v = max(self.rows_of_v, x.numel() // v)
            return out

    head = torch.nn.Linear(8, v).bfloat16()
    t = torch.randn(n, v).bfloat16()

    def largest(lazy: bool) -> int:
        x = torch.randn(n, 8).bfloat16().requires_grad_(True)
        with Largest() as probe:
            lz = HeadLogits(x, head)
            s = lz if lazy else lz.materialize()
            chunked_token_divergence(s, t, kind="jsd", chunk=chunk).sum().backward()
        return probe.rows_of_v

    assert largest(False) == n  # probe works: materialised logits and gradient are [N, V]
    assert largest(True) <= chunk


def test_head_logits_detach_indexing_and_no_grad():
    head = _head()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    lz = HeadLogits(x, head)
    assert lz.shape == (6,)
    rows = torch.tensor([True, False, True, True, False, False])
    torch.testing.assert_close(lz[rows].materialize(), head(x[rows]))
    out = entropy(lz.detach(), chunk=2)
    assert not out.requires_grad  # neither the hidden states nor the head's weights
    torch.testing.assert_close(out, entropy(head(x).detach()))


def test_head_logits_replay_the_heads_random_numbers_in_backward():
    """A head with dropout (LoRA dropout on the LM head): the backward's recomputation draws the
    same mask as the forward, so the gradient is the one of the values that were returned."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(5, 13)).double().train()
    hidden = torch.randn(6, 5, dtype=torch.float64)
    t = torch.randn(6, 13, dtype=torch.float64)

    def grads(lazy: bool):
        x = hidden.clone().requires_grad_(True)
        torch.manual_seed(123)
        lz = HeadLogits(x, head)
        d = chunked_token_divergence(lz if lazy else lz.materialize(), t, kind="reverse_kl", chunk=6)
        torch.manual_seed(999)  # anything drawn before backward must not matter
        torch.rand(100)
        d.sum().backward()
        return d.detach(), x.grad

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ----- sampled-token log-probs and entropy ---------------------------------------------------

def test_sampled_token_logp_hand_and_reference():
    # logits [0, ln 4] at temperature 2 are [0, ln 2]: p = [1/3, 2/3]
    logits = torch.tensor([[0.0, math.log(4.0)], [0.0, math.log(4.0)]])
    got = sampled_token_logp(logits, torch.tensor([1, 0]), temperature=2.0)
    torch.testing.assert_close(got, torch.tensor([math.log(2 / 3), math.log(1 / 3)]))
    s, _ = _rows(n=7, v=9, seed=7)
    ids = torch.tensor([0, 8, 3, 3, 1, 5, 2])
    got = sampled_token_logp(s, ids, temperature=0.7, chunk=3)
    want = [math.log(_softmax(s[i].tolist(), 0.7)[ids[i]]) for i in range(7)]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 7, 100])
def test_sampled_token_logp_chunked_gradients_and_bf16(chunk):
    s, _ = _rows(n=7, v=9, seed=8)
    ids = torch.randint(0, 9, (7,), generator=torch.Generator().manual_seed(0))
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    ref = torch.log_softmax(a / 0.7, -1).gather(-1, ids[:, None]).squeeze(-1)
    got = sampled_token_logp(b, ids, temperature=0.7, chunk=chunk)
    torch.testing.assert_close(got, ref)
    ref.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(b.grad, a.grad)
    bf = sampled_token_logp(s.bfloat16(), ids, chunk=chunk)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, sampled_token_logp(s.bfloat16().float(), ids))
    with pytest.raises(ValueError, match="token_ids"):
        sampled_token_logp(s, ids[:3])


def test_entropy_hand_reference_and_chunking():
    v = 6
    torch.testing.assert_close(entropy(torch.zeros(2, v)), torch.full((2,), math.log(v)))
    logits = torch.tensor([[0.0, math.log(4.0)]])
    h = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert entropy(logits, temperature=2.0).item() == pytest.approx(h, abs=1e-6)
    s, _ = _rows(n=5, v=7, seed=9)
    want = [-sum(p * math.log(p) for p in _softmax(s[i].tolist(), 1.3)) for i in range(5)]
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    got = entropy(a, temperature=1.3, chunk=2)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    entropy(b, temperature=1.3, chunk=100).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


# ----- reductions -------------------------------------------------------------------------------

def test_token_sum_and_global_mean_values():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([1, 0, 1, 1])
    weights = torch.tensor([0.5, 9.0, 1.0, 2.0])
    assert token_sum(values, mask).item() == pytest.approx(8.0)
    assert token_sum(values, mask, weights).item() == pytest.approx(0.5 + 3.0 + 8.0)
    assert global_mean(values, mask, num_tokens=10).item() == pytest.approx(0.8)
    assert global_mean(values, mask.bool(), num_tokens=torch.tensor(10)).item() == pytest.approx(0.8)
    # [B, T] values with per-sequence [B] weights broadcast over time
    v2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m2 = torch.tensor([[1, 1], [1, 0]])
    assert token_sum(v2, m2, torch.tensor([2.0, 10.0])).item() == pytest.approx(2 * 3 + 10 * 3)
    with pytest.raises(ValueError, match="weights shape"):
        token_sum(v2, m2, torch.ones(3))


def test_fully_masked_gives_zero_not_nan_with_zero_grads():
    s, t = _rows(n=4, v=5)
    s.requires_grad_(True)
    d = token_divergence(s, t, kind="jsd")
    mask = torch.zeros(4)
    loss = global_mean(d, mask, num_tokens=mask.sum())
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    empty = global_mean(torch.zeros(0), torch.zeros(0), num_tokens=0)  # python count 0
    assert empty.item() == 0.0
    assert global_mean(torch.ones(3), torch.zeros(3), num_tokens=0.0).item() == 0.0
    # NaN/inf in masked-out positions (padding garbage) must not leak into value or gradient
    x = torch.tensor([1.0, float("nan"), float("inf")], requires_grad=True)
    out = global_mean(x * 2, torch.tensor([1, 0, 0]), num_tokens=1)
    out.backward()
    assert out.item() == 2.0
    torch.testing.assert_close(x.grad, torch.tensor([2.0, 0.0, 0.0]))


def test_global_mean_is_invariant_to_micro_batching():
    s, t = _rows(n=12, v=8, seed=10)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    weights = torch.linspace(0.2, 1.0, 12)
    n_global = mask.sum()

    full_s = s.clone().requires_grad_(True)
    d = token_divergence(full_s, t, kind="reverse_kl")
    full = global_mean(d, mask, num_tokens=n_global, weights=weights)
    full.backward()

    acc_s = s.clone().requires_grad_(True)
    total, local_means = 0.0, []
    for lo, hi in [(0, 5), (5, 9), (9, 12)]:  # uneven micro-batches, each backward separately
        d_mb = chunked_token_divergence(acc_s[lo:hi], t[lo:hi], kind="reverse_kl", chunk=2)
        part = global_mean(d_mb, mask[lo:hi], num_tokens=n_global, weights=weights[lo:hi])
        part.backward()
        total += part.item()
        local_means.append(global_mean(d_mb.detach(), mask[lo:hi], num_tokens=mask[lo:hi].sum(),
                                       weights=weights[lo:hi]).item())
    assert total == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(acc_s.grad, full_s.grad, rtol=1e-5, atol=1e-7)
    # dividing by the micro-batch's own count instead would not reproduce the full batch
    assert sum(local_means) / 3 != pytest.approx(full.item(), rel=1e-3)
