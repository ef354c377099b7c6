"""Per-token divergence capping ("JSD-Clip" of UniSD, made to actually bind).

Caps each token's divergence at a static value or at a quantile of this batch's masked
divergences, and chooses what clipped tokens do to the gradient: "drop" (value = cap, zero
gradient: the reference code's clamp) or "bound" (value = cap, gradient kept in direction and
scaled by cap / d, so an outlier still teaches but contributes at most the cap).

Why the quantile mode: the reference's static cap of 10 nats can never bind for the JSD, which
is bounded by ln 2 for 0 < beta < 1 (spec 7.2 item 4). A quantile cap below 1 always binds
unless the top values tie. It does not mask or reduce; apply it before weighting and
`reduce.global_mean`, as the reference does.

Shapes: d and mask share one shape, [N] (or [B, T]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("none", "static", "quantile")
GRADIENTS = ("bound", "drop")


@dataclass(frozen=True)
class ClipResult:
    """What `clip_divergence` did.

    Attributes:
        values: clipped divergences, same shape and dtype as the input `d`.
        cap: scalar tensor (detached) or None when nothing was capped ("none", or no tokens).
        clipped: bool, same shape: True where a masked-in token exceeded the cap.
        rate: fraction of masked-in tokens clipped (0.0 when there are none).
    """

    values: Tensor
    cap: Tensor | None
    clipped: Tensor
    rate: float


def masked_quantile(x: Tensor, mask: Tensor, q: float) -> Tensor:
    """q-quantile (linear interpolation, as torch.quantile) of x where mask is nonzero.

    Sort-based, because torch.quantile refuses inputs of more than 2**24 elements.

    Args:
        x: any shape; detached inside.
        mask: same shape.
        q: in [0, 1].

    Returns:
        Scalar tensor of x's dtype. Requires at least one masked-in element.
    """
    vals = torch.sort(x.detach()[mask != 0].flatten()).values
    pos = q * (vals.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, vals.numel() - 1)
    return vals[lo] + (pos - lo) * (vals[hi] - vals[lo])


def clip_divergence(d: Tensor, mask: Tensor, *, mode: str = "none", value: float = 1.0,
                    quantile: float = 0.95, gradient: str = "bound") -> ClipResult:
    """Caps per-token divergences (`ClipConfig` semantics).

    Args:
        d: [N] per-token divergences (with gradient).
        mask: [N] 0/1; only masked-in tokens set the quantile and can be clipped.
        mode: "none" (identity), "static" (cap = value) or "quantile" (cap = the `quantile` of
            the masked d values, detached, floored at 0 to absorb rounding below zero).
        value: static cap in nats (> 0).
        quantile: in (0, 1] for mode "quantile".
        gradient: "drop": clipped tokens become the constant cap (zero gradient);
            "bound": clipped tokens become d * (cap / d).detach(), equal to the cap in value
            with gradient grad(d) * cap / d.

    Returns:
        ClipResult with values [N], cap, clipped [N] bool and rate.
    """
    if mode not in MODES:
        raise ValueError(f"clip mode {mode!r} is not one of {', '.join(map(repr, MODES))}")
    if gradient not in GRADIENTS:
        raise ValueError(f"clip gradient {gradient!r} is not one of {', '.join(map(repr, GRADIENTS))}")
    if mask.shape != d.shape:
        raise ValueError(f"mask shape {list(mask.shape)} != d shape {list(d.shape)}")
    kept = mask != 0
    n_kept = int(kept.sum())
    if mode == "none" or n_kept == 0:
        return ClipResult(d, None, torch.zeros_like(kept), 0.0)
    if mode == "static":
        if not value > 0:
            raise ValueError(f"static clip value must be > 0, got {value!r}")
        cap = torch.tensor(float(value), dtype=d.dtype, device=d.device)
    else:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"clip quantile must lie in (0, 1], got {quantile!r}")
        cap = masked_quantile(d, kept, quantile).clamp_min(0.0)
    clipped = kept & (d.detach() > cap)
    if gradient == "drop":
        values = torch.where(clipped, cap.expand_as(d), d)
    else:
        # d > cap >= 0 on clipped tokens, so the ratio is finite; elsewhere it is exactly 1.
        ratio = torch.where(clipped, cap / d.detach().clamp_min(torch.finfo(d.dtype).tiny),
                            torch.ones_like(d))
        values = d * ratio.detach()
    return ClipResult(values, cap.detach(), clipped, int(clipped.sum()) / n_kept)
