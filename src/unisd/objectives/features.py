"""Hidden-state matching between student and teacher at the same completion positions.

"mse" is the reference's mean over hidden dims of the squared difference (spec 2.4); "cosine"
(1 - cosine similarity) ignores the norm. The teacher is detached and there is no projection
(student and teacher share the architecture). It does not pick the layer or gather positions
(the caller does), nor mask or reduce.

Shapes: N completion positions, H hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("mse", "cosine")


def feature_matching(student_h: Tensor, teacher_h: Tensor, *, kind: str = "mse") -> Tensor:
    """Per-position distance between student and teacher hidden states.

    Args:
        student_h: [N, H] student hidden states (with gradient).
        teacher_h: [N, H] teacher hidden states; detached.
        kind: "mse" = mean_h (s - t)^2; "cosine" = 1 - cos(s, t) in [0, 2] (a zero vector
            counts as orthogonal, via the eps of torch's cosine_similarity).

    Returns:
        [N] float32.
    """
    if kind not in KINDS:
        raise ValueError(f"feature kind {kind!r} is not one of {', '.join(map(repr, KINDS))}")
    if student_h.shape != teacher_h.shape:
        raise ValueError(f"student_h {list(student_h.shape)} and teacher_h "
                         f"{list(teacher_h.shape)} must have the same shape")
    # float32: bf16 squared differences of ~1e2-sized activations lose most of their digits.
    dtype = torch.promote_types(student_h.dtype, torch.float32)
    s = student_h.to(dtype)
    t = teacher_h.detach().to(dtype)
    if kind == "mse":
        return (s - t).pow(2).mean(-1)
    return 1.0 - torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
