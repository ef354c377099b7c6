"""Multi-teacher agreement: weights from how much K auxiliary teachers disagree.

The K auxiliary teachers score the same sampled completion; where their sampled-token
log-probs disagree, the primary teacher's signal is trusted less. Differences from the
reference code (spec 2.1 and 7.2 items 2, 3, 21), all deliberate:
- the disagreement is divided by a FIXED `scale` from the config, not by a quantile of the
  micro-batch, so a token's weight depends only on its own example;
- the variance is the population variance (unbiased=False) at both granularities;
- weights are meant to be applied unnormalised (`reduce.global_mean(..., weights=w)`): the
  reference's sum(m w D) / sum(m w) cancels any per-sequence weight exactly.

It does not run the teachers or reduce the loss. Weights are detached: they scale the loss,
they are not trained.

Shapes: K auxiliary teachers, N completion positions, B sequences, T time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unisd.objectives.clipping import masked_quantile

STATS = ("var", "range")


def disagreement(aux_logp: Tensor, *, stat: str = "var") -> Tensor:
    """Spread of the K teachers' log-probs at each position.

    Args:
        aux_logp: [K, ...] sampled-token log-probs (e.g. [K, N] or [K, B]).
        stat: "var": population variance over K (divides by K, unbiased=False; 0 for K = 1);
            "range": max - min over K.

    Returns:
        [...] float32 (aux_logp's shape without K), >= 0, detached.
    """
    if stat not in STATS:
        raise ValueError(f"agreement stat {stat!r} is not one of {', '.join(map(repr, STATS))}")
    a = aux_logp.detach().to(torch.promote_types(aux_logp.dtype, torch.float32))
    if stat == "var":
        return a.var(dim=0, correction=0)
    return a.amax(dim=0) - a.amin(dim=0)


def _check(gamma: float, scale: float, min_weight: float) -> None:
    if gamma < 0 or not scale > 0 or not 0 <= min_weight <= 1:
        raise ValueError(f"need gamma >= 0, scale > 0, 0 <= min_weight <= 1; got gamma={gamma!r}, "
                         f"scale={scale!r}, min_weight={min_weight!r}")


def token_weights(aux_logp: Tensor, *, stat: str = "var", gamma: float = 1.0, scale: float = 1.0,
                  min_weight: float = 0.01) -> Tensor:
    """Per-token agreement weights, w = max(min_weight, 1 / (1 + gamma * d / scale)).

    Args:
        aux_logp: [K, N] sampled-token log-probs of the K auxiliary teachers.
        stat: disagreement statistic, see `disagreement`.
        gamma: strength (>= 0); 0 gives weight 1 everywhere.
        scale: fixed disagreement scale (> 0), nats^2 for "var", nats for "range".
        min_weight: floor in [0, 1].

    Returns:
        [N] float32 weights in [min_weight, 1], detached.
    """
    _check(gamma, scale, min_weight)
    d = disagreement(aux_logp, stat=stat)
    return (1.0 / (1.0 + gamma * d / scale)).clamp_min(min_weight)


def sequence_weights(aux_logp: Tensor, mask: Tensor, *, stat: str = "var", gamma: float = 1.0,
                     scale: float = 1.0, min_weight: float = 0.01) -> Tensor:
    """Per-sequence agreement weights, w = max(min_weight, exp(-gamma * d / scale)).

    d is the disagreement over K of each teacher's mean log-prob over the sequence's masked
    tokens. Apply w unnormalised (weights=w in `reduce.global_mean`): a per-sequence constant
    cancels in a per-sequence weighted mean sum(m w D) / sum(m w), which is why the reference
    code's sequence-level agreement is a no-op.

    Args:
        aux_logp: [K, B, T] sampled-token log-probs of the K auxiliary teachers.
        mask: [B, T] 0/1 completion mask. A fully masked sequence gets weight 1.
        stat, gamma, scale, min_weight: as in `token_weights`.

    Returns:
        [B] float32 weights in [min_weight, 1], detached.
    """
    _check(gamma, scale, min_weight)
    if aux_logp.dim() != 3 or aux_logp.shape[1:] != mask.shape:
        raise ValueError(f"aux_logp must be [K, B, T] with mask [B, T]; got {list(aux_logp.shape)} "
                         f"and {list(mask.shape)}")
    a = aux_logp.detach().to(torch.promote_types(aux_logp.dtype, torch.float32))
    m = (mask != 0).to(a.dtype)
    # where: padding positions may hold anything (even -inf) and must not leak into the mean.
    summed = torch.where(m.bool(), a, torch.zeros_like(a)).sum(-1)
    mean_logp = summed / m.sum(-1).clamp_min(1.0)  # [K, B]
    d = disagreement(mean_logp, stat=stat)
    return torch.exp(-gamma * d / scale).clamp_min(min_weight)


def select_uncertain(scores: Tensor, *, fraction: float) -> Tensor:
    """Marks the ceil(fraction * B) highest-scoring sequences (at least one).

    Used for selective agreement: only these get auxiliary-teacher forwards, the rest weight 1.
    Ties are broken by torch.topk (arbitrary but deterministic on a given device).

    Args:
        scores: [B] uncertainty per sequence (e.g. mean divergence or student entropy).
        fraction: in (0, 1].

    Returns:
        [B] bool mask.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    b = scores.shape[0]
    chosen = torch.zeros(b, dtype=torch.bool, device=scores.device)
    if b == 0:
        return chosen
    # The slack keeps 0.28 * 25 = 7.000000000000001 (float product) from rounding up to 8.
    k = min(b, max(1, math.ceil(fraction * b - 1e-9)))
    chosen[torch.topk(scores.detach(), k).indices] = True
    return chosen


def weight_stats(weights: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """Summary of weights for logging: mean, min, p10, p50, p90 over masked-in entries.

    Args:
        weights: any shape.
        mask: same shape, or None for all entries.

    Returns:
        {"mean", "min", "p10", "p50", "p90"} as floats; NaN for each when no entry is kept.
    """
    keep = torch.ones_like(weights, dtype=torch.bool) if mask is None else mask != 0
    w = weights.detach().float()
    if not bool(keep.any()):
        return {key: float("nan") for key in ("mean", "min", "p10", "p50", "p90")}
    kept = w[keep]
    return {"mean": float(kept.mean()), "min": float(kept.min()),
            "p10": float(masked_quantile(w, keep, 0.1)), "p50": float(masked_quantile(w, keep, 0.5)),
            "p90": float(masked_quantile(w, keep, 0.9))}
