"""Teacher contexts: what the teacher sees, independent of where its weights come from.

Everything here takes `Example`s and returns plain user-turn strings; the training loop applies
chat templates and tokenizes. `privileged` builds the primary (and negative) teacher prompt,
`auxiliary` the K contexts for multi-teacher agreement, `negatives` the model-written wrong
demonstrations for the contrastive term. Nothing is loaded at import.
"""

from unisd.contexts.auxiliary import BUILDERS, AuxOptions, build_aux_contexts, induce_instructions
from unisd.contexts.embedding import embed_texts, load_embed_fn, resolve_embedder
from unisd.contexts.negatives import TASK_KINDS, NegativeSet, build_negatives
from unisd.contexts.privileged import ANSWER_PREFIX, CONTEXTS, fill_template, teacher_prompt

__all__ = [
    "ANSWER_PREFIX", "BUILDERS", "CONTEXTS", "TASK_KINDS", "AuxOptions", "NegativeSet", "build_aux_contexts",
    "build_negatives", "embed_texts", "fill_template", "induce_instructions", "load_embed_fn",
    "resolve_embedder", "teacher_prompt",
]
