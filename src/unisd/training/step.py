"""One micro-batch of the objective: forwards for every view, then the composed loss.

Given the rollout rows of a micro-batch (prompt ids per view and the shared completion ids),
this runs the student forward (with gradient), the teacher-weight forwards for the primary,
auxiliary and negative prefixes (no gradient, batched together), and composes the terms of
`ObjectiveConfig`:

    loss = [sum_t w_t * clip(D_t) + lambda_C * sum_t h_t + lambda_F * sum_t f_t] / N_global

where N_global is the completion-token count of the *whole optimizer batch*, so summing the
micro-batch losses gives the same value and gradient whatever the micro-batch size.
Sequence-level agreement weights multiply D unnormalised (the reference code normalised them
away). It returns the loss and additive metric sums; averaging and logging are the loop's job.

Shapes: B rows in the micro-batch, K auxiliary contexts, N completion tokens, V vocab.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from unisd.config.schema import ObjectiveConfig
from unisd.objectives import agreement, clipping, contrastive, divergence, features
from unisd.training.scoring import completion_outputs
from unisd.training.views import View, build_view, concat_views


@dataclass
class RolloutRows:
    """Token ids for a group of examples, shared by every view."""

    ids: list[str]
    student_prompts: list[list[int]]
    completions: list[list[int]]
    teacher_prompts: list[list[int]] | None = None
    aux_prompts: list[list[list[int]]] | None = None      # [B][K]
    negative_prompts: list[list[int] | None] | None = None  # None where no usable negative
    loss_mask: list[bool] = field(default_factory=list)    # False: row gets no loss (e.g. truncated)

    def select(self, rows: list[int]) -> "RolloutRows":
        pick = lambda xs: None if xs is None else [xs[i] for i in rows]  # noqa: E731
        return RolloutRows([self.ids[i] for i in rows], pick(self.student_prompts), pick(self.completions),
                           pick(self.teacher_prompts), pick(self.aux_prompts), pick(self.negative_prompts),
                           pick(self.loss_mask))

    def __len__(self) -> int:
        return len(self.ids)


def count_loss_tokens(rows: RolloutRows) -> int:
    return sum(len(c) for c, keep in zip(rows.completions, rows.loss_mask) if keep)


@dataclass
class StepContext:
    """What a micro-batch needs beyond its rows."""

    objective: ObjectiveConfig
    pad_id: int
    device: torch.device
    num_tokens_global: float
    teacher_forward: object  # callable(view, hidden_layer) -> (logits, hidden), runs teacher weights, no grad
    teacher_needed: bool = True
    pad_to_multiple_of: int = 1
    """Sequence lengths of the forwards are rounded up to this (model.compile: see the loop)."""


def _token_mask(rows: RolloutRows, device) -> torch.Tensor:
    mask = [float(keep) for c, keep in zip(rows.completions, rows.loss_mask) for _ in c]
    return torch.tensor(mask, device=device)


def micro_batch_loss(model: torch.nn.Module, rows: RolloutRows, ctx: StepContext
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (already divided by the global token count) and metric sums.

    Metric keys ending in "_sum" are sums over tokens (or rows for "rows_*"); the loop divides
    them by the global counts it logs."""
    cfg = ctx.objective
    dev = ctx.device
    metrics: dict[str, float] = defaultdict(float)
    student_view = build_view(rows.student_prompts, rows.completions, ctx.pad_id,
                              pad_to_multiple_of=ctx.pad_to_multiple_of).to(dev)
    mask = _token_mask(rows, dev)
    n_global = max(ctx.num_tokens_global, 1.0)
    feat = cfg.features
    use_features = feat.only or feat.weight > 0
    hidden_layer = feat.layer if use_features else None

    # the student's logits stay [N, H] hidden states + head until each chunked term applies the head
    s_logits, s_hidden = completion_outputs(model, student_view, hidden_layer=hidden_layer, lazy_logits=True)
    metrics["tokens_sum"] = float(mask.sum())
    with torch.no_grad():  # collapse watch: the student's uncertainty on the tokens it learns from
        metrics["student/entropy_sum"] = float((divergence.entropy(s_logits, chunk=cfg.vocab_chunk) * mask).sum())

    if cfg.loss == "nll":
        logp = divergence.sampled_token_logp(s_logits, student_view.targets, chunk=cfg.vocab_chunk)
        loss = -(logp * mask).sum() / n_global
        metrics["loss/nll_sum"] = float(-(logp.detach() * mask).sum())
        return loss, metrics

    # ---- teacher-weight forwards: primary (+ negative) batched together, no grad ----
    views = [build_view(rows.teacher_prompts, rows.completions, ctx.pad_id)]
    neg_rows = []
    if cfg.contrastive.weight > 0 and rows.negative_prompts is not None:
        neg_rows = [i for i, p in enumerate(rows.negative_prompts) if p is not None]
        if neg_rows:
            views.append(build_view([rows.negative_prompts[i] for i in neg_rows],
                                    [rows.completions[i] for i in neg_rows], ctx.pad_id))
    stacked, slices = concat_views(views, ctx.pad_id, pad_to_multiple_of=ctx.pad_to_multiple_of)
    t_logits_all, t_hidden_all = ctx.teacher_forward(stacked.to(dev), hidden_layer)
    t_logits = t_logits_all[slices[0]]
    temp = cfg.temperature
    chunk = cfg.vocab_chunk

    # ---- per-token divergence, clipping, agreement weights ----
    loss = mask.new_zeros((), dtype=torch.float32)
    if not feat.only:
        d = divergence.chunked_token_divergence(s_logits, t_logits, kind=cfg.divergence, beta=cfg.beta,
                                                temperature=temp, chunk=chunk)
        metrics["divergence_raw_sum"] = float((d.detach() * mask).sum())
        clip = clipping.clip_divergence(d, mask, mode=cfg.clip.mode, value=cfg.clip.value,
                                        quantile=cfg.clip.quantile, gradient=cfg.clip.gradient)
        d = clip.values
        metrics["clip/clipped_sum"] = float((clip.clipped.float() * mask).sum())
        weights = _agreement_weights(model, rows, ctx, student_view, d, s_logits, mask, metrics)
        loss = loss + (d * weights * mask).sum() / n_global
        metrics["loss/divergence_sum"] = float((d.detach() * weights * mask).sum())

    # ---- contrastive: towards the good teacher, away from the negative teacher ----
    if cfg.contrastive.weight > 0:
        loss = loss + cfg.contrastive.weight * _contrastive_sum(
            rows, ctx, student_view, s_logits, t_logits, t_logits_all, slices, neg_rows, mask, metrics) / n_global

    # ---- feature matching on hidden states at completion positions ----
    if use_features:
        t_hidden = t_hidden_all[slices[0]]
        f = features.feature_matching(s_hidden, t_hidden, kind=feat.kind)
        weight = 1.0 if feat.only else feat.weight
        loss = loss + weight * (f * mask).sum() / n_global
        metrics["loss/features_sum"] = float((f.detach() * mask).sum())

    metrics["loss/total_sum"] = float(loss.detach()) * n_global
    return loss, metrics


def _agreement_weights(model, rows: RolloutRows, ctx: StepContext, student_view: View, d: torch.Tensor,
                       s_logits: torch.Tensor | divergence.HeadLogits, mask: torch.Tensor, metrics: dict
                       ) -> torch.Tensor:
    """Reliability weights from the K auxiliary teachers ([N], ones when agreement is off)."""
    cfg = ctx.objective.agreement
    ones = torch.ones_like(mask)
    if cfg.granularity == "none" or rows.aux_prompts is None:
        return ones
    owner = student_view.example_of_token
    batch = len(rows)
    # Selective agreement: run the K extra forwards only for the most uncertain rows.
    if cfg.selective_fraction < 1.0:
        if cfg.selective_by == "entropy":
            per_token = divergence.entropy(s_logits.detach(), temperature=ctx.objective.temperature,
                                           chunk=ctx.objective.vocab_chunk)
        else:
            per_token = d.detach()
        sums = torch.zeros(batch, device=d.device).index_add_(0, owner, per_token * mask)
        counts = torch.zeros(batch, device=d.device).index_add_(0, owner, mask).clamp_min(1)
        chosen = agreement.select_uncertain(sums / counts, fraction=cfg.selective_fraction)
        selected = [i for i in range(batch) if bool(chosen[i])]
    else:
        selected = list(range(batch))
    metrics["agreement/rows_scored_sum"] = float(len(selected))
    k = len(rows.aux_prompts[selected[0]])
    views = [build_view([rows.aux_prompts[i][j] for i in selected], [rows.completions[i] for i in selected],
                        ctx.pad_id) for j in range(k)]
    stacked, slices = concat_views(views, ctx.pad_id, pad_to_multiple_of=ctx.pad_to_multiple_of)
    aux_logits, _ = ctx.teacher_forward(stacked.to(d.device), None)
    targets = torch.tensor([tok for i in selected for tok in rows.completions[i]], dtype=torch.long,
                           device=d.device)
    aux_logp = torch.stack([divergence.sampled_token_logp(aux_logits[s], targets,
                                                          temperature=ctx.objective.temperature,
                                                          chunk=ctx.objective.vocab_chunk) for s in slices])  # [K, n_sel]
    # positions (in the micro-batch's [N] order) of the selected rows' tokens
    sel = torch.zeros(batch, dtype=torch.bool, device=d.device)
    sel[selected] = True
    token_sel = sel[owner]
    weights = ones.clone()
    if cfg.granularity == "token":
        w_sel = agreement.token_weights(aux_logp, stat=cfg.stat, gamma=cfg.gamma, scale=cfg.scale,
                                        min_weight=cfg.min_weight)
        weights[token_sel] = w_sel
    else:
        lengths = [len(rows.completions[i]) for i in selected]
        t_max = max(lengths) if lengths else 0
        padded = aux_logp.new_zeros((k, len(selected), max(t_max, 1)))
        seq_mask = aux_logp.new_zeros((len(selected), max(t_max, 1)))
        offset = 0
        for r, n in enumerate(lengths):
            padded[:, r, :n] = aux_logp[:, offset:offset + n]
            seq_mask[r, :n] = 1
            offset += n
        w_rows = agreement.sequence_weights(padded, seq_mask, stat=cfg.stat, gamma=cfg.gamma, scale=cfg.scale,
                                            min_weight=cfg.min_weight)
        row_w = torch.ones(batch, device=d.device)
        row_w[selected] = w_rows
        weights = row_w[owner]
    weights = weights.detach()
    metrics["agreement/weight_sum"] = float((weights * mask).sum())
    stats = agreement.weight_stats(weights, mask)
    for key, value in stats.items():
        metrics[f"agreement/weight_{key}_last"] = value
    return weights


def _contrastive_sum(rows, ctx, student_view, s_logits, t_logits, t_logits_all, slices, neg_rows, mask,
                     metrics) -> torch.Tensor:
    cfg = ctx.objective
    has_neg = torch.zeros(len(rows), dtype=torch.bool, device=mask.device)
    if neg_rows:
        has_neg[neg_rows] = True
    token_has = has_neg[student_view.example_of_token]
    metrics["contrastive/rows_without_negative_sum"] = float(len(rows) - len(neg_rows))
    if not neg_rows:
        return mask.new_zeros((), dtype=torch.float32)
    bad_logits = t_logits_all[slices[1]]
    cmask = mask[token_has]
    if cfg.contrastive.variant == "hinge":
        targets = student_view.targets
        s_lp = divergence.sampled_token_logp(s_logits[token_has], targets[token_has], temperature=cfg.temperature,
                                             chunk=cfg.vocab_chunk)
        g_lp = divergence.sampled_token_logp(t_logits[token_has], targets[token_has], temperature=cfg.temperature,
                                             chunk=cfg.vocab_chunk)
        b_lp = divergence.sampled_token_logp(bad_logits, targets[token_has], temperature=cfg.temperature,
                                             chunk=cfg.vocab_chunk)
        h = contrastive.hinge_contrastive(s_lp, g_lp, b_lp, margin=cfg.contrastive.margin)
    else:
        h = contrastive.distribution_contrastive(s_logits[token_has], t_logits[token_has], bad_logits,
                                                 margin=cfg.contrastive.margin, kind=cfg.divergence,
                                                 temperature=cfg.temperature, beta=cfg.beta,
                                                 chunk=cfg.vocab_chunk)
    metrics["loss/contrastive_sum"] = float((h.detach() * cmask).sum())
    return (h * cmask).sum()
