"""Run a causal LM on a view and return logits (and hidden states) at completion positions only.

The LM head is applied to the gathered [N, H] rows instead of the whole [B, S, H] sequence, so
prompt positions never cost a vocabulary projection; for long prompts (teacher views) and large
vocabularies (Qwen: 152k) that is most of the logits memory. Works for plain HF models and for
peft-wrapped ones (LoRA layers live inside the modules, so calling the inner decoder keeps them).
"""

from __future__ import annotations

import torch

from unisd.training.views import View


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The *ForCausalLM under a peft wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = _unwrap(model)
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if decoder is None or decoder is base:
        decoder = base.get_decoder()
    return decoder, base.get_output_embeddings()


def completion_outputs(model: torch.nn.Module, view: View, *, hidden_layer: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [N, V] (model dtype) predicting each completion token, and optionally the hidden
    state [N, H] of layer `hidden_layer` (index into HF `hidden_states`; -1 = final output, after
    the final norm) at the same positions."""
    decoder, head = decoder_and_head(model)
    want_all = hidden_layer is not None and hidden_layer != -1
    out = decoder(input_ids=view.input_ids, attention_mask=view.attention_mask,
                  output_hidden_states=want_all, use_cache=False)
    last = out.last_hidden_state
    flat = last.reshape(-1, last.shape[-1]).index_select(0, view.gather_index)
    logits = head(flat)
    cap = getattr(_unwrap(model).config, "final_logit_softcapping", None)
    if cap:  # Gemma: the LM applies tanh soft-capping after the head
        logits = torch.tanh(logits / cap) * cap
    hidden = None
    if hidden_layer is not None:
        source = last if not want_all else out.hidden_states[hidden_layer]
        hidden = source.reshape(-1, source.shape[-1]).index_select(0, view.gather_index)
    return logits, hidden
