"""Per-token divergences between student and teacher next-token distributions.

Computes forward KL, reverse KL and the generalized JSD of GKD, the sampled-token log-prob and
the entropy, one value per completion position, in float32 whatever the logits' dtype. The
`chunked_*` forms give the same values and gradients while holding the float32 [chunk, V]
intermediates of one row chunk at a time, in forward and backward.

The student's logits may also come as `HeadLogits` (hidden states [N, H] and the LM head, not yet
applied): the chunked functions then apply the head one chunk at a time, inside the chunk's
checkpoint, so neither the [N, V] logits nor their gradient ever exists whole.

It does not mask, weight, clip or reduce (see `reduce`, `clipping`, `agreement`), and it never
sees a model: callers gather the completion positions into [N, V] (or [N, H]) first.

Shapes: N completion positions (flattened over batch and time), V vocabulary.
Logits must be finite; -inf entries (a masked vocabulary) would turn 0 * log 0 into NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _check(kind: str, beta: float, temperature: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"divergence kind {kind!r} is not one of {', '.join(map(repr, KINDS))}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _logp(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    # Upcast before dividing: bf16 log_softmax over ~150k entries loses the tail mass.
    return torch.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) over the last dim, from log-probs."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _divergence_rows(student_logits: Tensor, teacher_logits: Tensor, *, kind: str, beta: float,
                     temperature: float) -> Tensor:
    # float64 inputs stay float64 (exact tests, gradcheck); anything narrower runs in float32.
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype),
                                torch.float32)
    s = _logp(student_logits, temperature, dtype)
    t = _logp(teacher_logits.detach(), temperature, dtype)
    # TRL's generalized_jsd_loss special-cases the endpoints exactly like this: the mixture form
    # itself tends to 0 there (it behaves like beta * KL(T||S) as beta -> 0).
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(t, s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(s, t)
    # log M = log(beta p_T + (1 - beta) p_S), via logaddexp: no [2, N, V] stack, no underflow.
    log_m = torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))
    return beta * _kl(t, log_m) + (1.0 - beta) * _kl(s, log_m)


@dataclass(frozen=True)
class HeadLogits:
    """Logits not computed yet: `head(hidden)`, then Gemma's tanh soft-capping where `softcap` is set.

    The chunked functions of this module take it wherever they take student logits and apply the
    head to one row chunk at a time inside that chunk's checkpoint: the [N, V] logits and their
    [N, V] gradient never exist whole (in bf16 at batch 16 x 110 completion tokens and a 49k
    vocabulary, 172 MB each); the head's parameters get their gradient through the chunks'
    recomputation. The price is one extra head matmul per use in backward. `grad=False` (see
    `detach`) runs the head under no_grad.

    hidden: [N, H]; head: [*, H] -> [*, V] (an nn.Linear, a peft-wrapped one, ...).
    """

    hidden: Tensor
    head: Callable[[Tensor], Tensor]
    softcap: float | None = None
    grad: bool = True

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape[:1]  # rows; V is known only once the head has run

    def of(self, hidden: Tensor) -> Tensor:
        """Logits of some rows of `hidden`."""
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            logits = self.head(hidden)
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def materialize(self) -> Tensor:
        return self.of(self.hidden)

    def detach(self) -> HeadLogits:
        return replace(self, hidden=self.hidden.detach(), grad=False)

    def __getitem__(self, rows) -> HeadLogits:
        return replace(self, hidden=self.hidden[rows])


def _map_rows(fn, tensors: tuple[Tensor, ...], chunk: int) -> Tensor:
    """Applies a row-wise fn to row chunks, recomputing each chunk in backward.

    `split` (one SplitBackward node that concatenates the chunk gradients once) rather than
    slicing, whose backward would allocate a full-size zero gradient per chunk. Under
    non-reentrant checkpointing only the chunk's inputs (views of the caller's logits, in
    their own dtype) are kept; the float32 intermediates are rebuilt one chunk at a time.
    A `HeadLogits` first input is split by its hidden rows, and its head runs inside the chunk.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    head_grad = False
    if isinstance(tensors[0], HeadLogits):
        lazy, row_fn = tensors[0], fn
        head_grad = lazy.grad
        tensors = (lazy.hidden, *tensors[1:])

        def fn(hidden, *rest):
            return row_fn(lazy.of(hidden), *rest)
    if tensors[0].shape[0] == 0:
        return fn(*tensors)
    pieces = []
    for parts in zip(*(x.split(chunk, dim=0) for x in tensors)):
        if torch.is_grad_enabled() and (head_grad or any(p.requires_grad for p in parts)):
            # a head may draw random numbers (LoRA dropout on the LM head): replay them in backward
            pieces.append(checkpoint(fn, *parts, use_reentrant=False, preserve_rng_state=head_grad))
        else:
            pieces.append(fn(*parts))
    return torch.cat(pieces)


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, *, kind: str,
                     beta: float = 0.5, temperature: float = 1.0) -> Tensor:
    """Divergence between teacher and student at each position.

    Both distributions are log_softmax(logits / temperature) in float32. The teacher is detached.

    - "forward_kl": KL(teacher || student) = sum_v p_T (log p_T - log p_S)  (mass-covering).
    - "reverse_kl": KL(student || teacher) = sum_v p_S (log p_S - log p_T)  (mode-seeking).
    - "jsd": generalized JSD of GKD (arXiv 2306.13649, Eq. 1; TRL `generalized_jsd_loss`):
      M = beta * p_T + (1 - beta) * p_S, D = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M).
      beta = 0 returns KL(teacher || student) exactly and beta = 1 returns KL(student || teacher)
      exactly (TRL special-cases both ends). Strictly inside (0, 1), D <= H(beta) <= ln 2, and
      D / beta -> KL(T || S) as beta -> 0, D / (1 - beta) -> KL(S || T) as beta -> 1.

    Args:
        student_logits: [N, V] any float dtype; gradients flow here.
        teacher_logits: [N, V] any float dtype; detached.
        kind: "forward_kl", "reverse_kl" or "jsd".
        beta: JSD weight of the teacher in the mixture, in [0, 1]; read only for "jsd".
        temperature: divides both logits before the softmax; > 0.

    Returns:
        [N] float32 (float64 if an input is float64), >= 0 up to rounding.
    """
    _check(kind, beta, temperature)
    return _divergence_rows(student_logits, teacher_logits, kind=kind, beta=beta,
                            temperature=temperature)


def chunked_token_divergence(student_logits: Tensor, teacher_logits: Tensor, *, kind: str,
                             beta: float = 0.5, temperature: float = 1.0,
                             chunk: int = 1024) -> Tensor:
    """`token_divergence` with bounded memory: same values and gradients.

    Rows are processed `chunk` at a time under activation checkpointing, so float32 [N, V]
    is never materialised: at most one chunk's float32 intermediates exist, in forward and in
    backward. The gradient w.r.t. `student_logits` is in their own dtype (e.g. bf16).

    Args:
        student_logits: [N, V], or `HeadLogits`; gradients flow here.
        teacher_logits: [N, V]; detached.
        kind, beta, temperature: as in `token_divergence`.
        chunk: rows per chunk (>= 1); `ObjectiveConfig.vocab_chunk`.

    Returns:
        [N] float32.
    """
    _check(kind, beta, temperature)
    fn = functools.partial(_divergence_rows, kind=kind, beta=beta, temperature=temperature)
    return _map_rows(fn, (student_logits, teacher_logits.detach()), chunk)


def _sampled_rows(logits: Tensor, token_ids: Tensor, *, temperature: float) -> Tensor:
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    # gather - logsumexp avoids building the full log_softmax only to read one entry per row.
    return x.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


def sampled_token_logp(logits: Tensor, token_ids: Tensor, *, temperature: float = 1.0,
                       chunk: int = 1024) -> Tensor:
    """Log-probability of the sampled token at each position, at a logit temperature.

    Args:
        logits: [N, V] any float dtype, or `HeadLogits`; gradients flow through.
        token_ids: [N] integer ids of the tokens that were sampled at those positions.
        temperature: divides the logits before the softmax; > 0.
        chunk: rows per checkpointed chunk (memory bound as in `chunked_token_divergence`).

    Returns:
        [N] float32, log_softmax(logits / temperature)[n, token_ids[n]] (<= 0).
    """
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if token_ids.shape != logits.shape[:1]:
        raise ValueError(f"token_ids must be [N]={list(logits.shape[:1])}, got {list(token_ids.shape)}")
    fn = functools.partial(_sampled_rows, temperature=temperature)
    return _map_rows(fn, (logits, token_ids), chunk)


def _entropy_rows(logits: Tensor, *, temperature: float) -> Tensor:
    logp = _logp(logits, temperature, torch.promote_types(logits.dtype, torch.float32))
    return -(logp.exp() * logp).sum(-1)


def entropy(logits: Tensor, *, temperature: float = 1.0, chunk: int = 1024) -> Tensor:
    """Entropy of softmax(logits / temperature) at each position, in nats.

    Args:
        logits: [N, V] any float dtype, or `HeadLogits`.
        temperature: > 0.
        chunk: rows per checkpointed chunk.

    Returns:
        [N] float32 in [0, log V].
    """
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _map_rows(functools.partial(_entropy_rows, temperature=temperature), (logits,), chunk)
