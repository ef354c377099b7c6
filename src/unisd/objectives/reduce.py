"""Masked reductions of per-token losses to the scalar that is back-propagated.

`global_mean` divides by the completion-token count of the whole optimizer batch (all
micro-batches, all ranks), which the training loop passes in. Each micro-batch's loss is then
its exact share of the full-batch mean, so summing micro-batch gradients reproduces the
full-batch gradient whatever the micro-batch size (TRL `num_items_in_batch`, torchtune
`scale_grads`). The reference code's per-sequence mean, and its mean over micro-batches, would
instead weight a token by 1 / its sequence's length.

It does not count tokens across ranks (the loop does) and does not normalise by the weights:
a weight below 1 really lowers a token's share of the loss.

Shapes: values, mask and weights share one shape, [N] or [B, T]; weights may also be [B]
(one per sequence) for [B, T] values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _broadcast(weights: Tensor, like: Tensor) -> Tensor:
    # A per-sequence weight [B] spreads over the trailing (time) dims of [B, T] values.
    if weights.dim() < like.dim() and weights.shape == like.shape[: weights.dim()]:
        return weights.reshape(weights.shape + (1,) * (like.dim() - weights.dim()))
    if weights.shape != like.shape:
        raise ValueError(f"weights shape {list(weights.shape)} does not match values "
                         f"{list(like.shape)} (or a leading prefix of it)")
    return weights


def token_sum(values: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Sum of values * mask * weights over all positions.

    Masked-out positions contribute exactly 0, even when their values are NaN or inf (padding
    garbage), and receive zero gradient.

    Args:
        values: [N] or [B, T] per-token losses (any float dtype).
        mask: same shape; 0/1 (bool or float). Nonzero float entries also act as weights.
        weights: optional, same shape as values or [B] for [B, T] values; multiplies each token.

    Returns:
        Scalar float32 (float64 for float64 values).
    """
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {list(mask.shape)} != values shape {list(values.shape)}")
    dtype = torch.promote_types(values.dtype, torch.float32)
    terms = values.to(dtype) * mask.to(dtype)
    if weights is not None:
        terms = terms * _broadcast(weights, values).to(dtype)
    # where (not just * mask): 0 * NaN would still be NaN.
    return torch.where(mask != 0, terms, torch.zeros_like(terms)).sum()


def global_mean(values: Tensor, mask: Tensor, *, num_tokens: float | Tensor,
                weights: Tensor | None = None) -> Tensor:
    """Weighted masked sum divided by the optimizer batch's completion-token count.

    loss = sum(values * mask * weights) / max(num_tokens, 1). The floor at 1 makes a fully
    masked batch give 0 (not NaN) with zero gradients.

    Args:
        values: [N] or [B, T] per-token losses.
        mask: same shape; 0/1.
        num_tokens: completion tokens in the WHOLE optimizer batch (every micro-batch, every
            rank); not this micro-batch's count, or micro-batch size would change the result.
        weights: optional per-token ([N] / [B, T]) or per-sequence ([B]) weights, applied
            unnormalised.

    Returns:
        Scalar float32.
    """
    total = token_sum(values, mask, weights)
    if isinstance(num_tokens, Tensor):
        denom = num_tokens.to(device=total.device, dtype=total.dtype).clamp_min(1.0)
    else:
        denom = max(float(num_tokens), 1.0)
    return total / denom
