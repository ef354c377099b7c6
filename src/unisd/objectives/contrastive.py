"""Token-level contrastive terms: stay closer to the good teacher than to the bad one.

The good teacher sees the gold demonstration, the bad teacher a negative one; both score the
same sampled completion. Two variants (`ContrastiveConfig.variant`):
- "hinge" (as published, spec 2.3): relu(m + |l_S - l_G| - |l_S - l_B|) on sampled-token
  log-probs, with l_G and l_B detached;
- "distribution": relu(m + D(good, S) - D(bad, S)) on full next-token distributions, with the
  teachers on the teacher side of `token_divergence`, computed chunk-wise.

It does not mask or reduce (see `reduce.global_mean`) and never sees a model.

Shapes: N completion positions, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unisd.objectives.divergence import chunked_token_divergence


def hinge_contrastive(student_lp: Tensor, good_lp: Tensor, bad_lp: Tensor, *,
                      margin: float) -> Tensor:
    """Published UniSD contrastive hinge on sampled-token log-probs.

    Zero once the student's log-prob is at least `margin` nats nearer the good teacher's than
    the bad teacher's; gradients reach only the student.

    Args:
        student_lp: [N] student log-prob of each sampled token (with gradient).
        good_lp: [N] the same under the good (gold-demonstration) teacher; detached.
        bad_lp: [N] the same under the bad (negative-demonstration) teacher; detached.
        margin: hinge margin m in nats (>= 0).

    Returns:
        [N] float32, >= 0.
    """
    s = student_lp.to(torch.promote_types(student_lp.dtype, torch.float32))
    g = good_lp.detach().to(s.dtype)
    b = bad_lp.detach().to(s.dtype)
    return torch.relu(margin + (s - g).abs() - (s - b).abs())


def distribution_contrastive(student_logits: Tensor, good_logits: Tensor, bad_logits: Tensor, *,
                             margin: float, kind: str = "reverse_kl", temperature: float = 1.0,
                             beta: float = 0.5, chunk: int = 1024) -> Tensor:
    """relu(margin + D(good, S) - D(bad, S)) per position, D = `token_divergence(S, teacher)`.

    With kind "forward_kl", D(good, S) = KL(good || S); with "reverse_kl", KL(S || good).
    Each divergence is computed by `chunked_token_divergence`, so memory stays bounded.

    Args:
        student_logits: [N, V] (with gradient).
        good_logits: [N, V] good teacher; detached.
        bad_logits: [N, V] bad teacher; detached.
        margin: hinge margin in nats (>= 0).
        kind, temperature, beta: as in `token_divergence`.
        chunk: rows per chunk.

    Returns:
        [N] float32, >= 0.
    """
    opts = {"kind": kind, "beta": beta, "temperature": temperature, "chunk": chunk}
    d_good = chunked_token_divergence(student_logits, good_logits, **opts)
    d_bad = chunked_token_divergence(student_logits, bad_logits, **opts)
    return torch.relu(margin + d_good - d_bad)
