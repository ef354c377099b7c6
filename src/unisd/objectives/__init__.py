"""Loss terms of self-distillation as pure functions on tensors.

Per-token divergences (`divergence`), masked global-token reductions (`reduce`), divergence
capping (`clipping`), multi-teacher agreement weights (`agreement`), contrastive terms
(`contrastive`) and hidden-state matching (`features`). Nothing here imports models, tasks or
training; the training loop gathers completion positions and combines these terms.
"""

from unisd.objectives.agreement import (
    disagreement,
    select_uncertain,
    sequence_weights,
    token_weights,
    weight_stats,
)
from unisd.objectives.clipping import ClipResult, clip_divergence, masked_quantile
from unisd.objectives.contrastive import distribution_contrastive, hinge_contrastive
from unisd.objectives.divergence import (
    HeadLogits,
    chunked_token_divergence,
    entropy,
    sampled_token_logp,
    token_divergence,
)
from unisd.objectives.features import feature_matching
from unisd.objectives.reduce import global_mean, token_sum

__all__ = [
    "ClipResult", "HeadLogits", "chunked_token_divergence", "clip_divergence", "disagreement",
    "distribution_contrastive", "entropy", "feature_matching", "global_mean",
    "hinge_contrastive", "masked_quantile", "sampled_token_logp", "select_uncertain",
    "sequence_weights", "token_divergence", "token_sum", "token_weights", "weight_stats",
]
