"""Token-level views of a batch and the forward pass that scores their completion tokens.

A *view* is a right-padded batch `prompt_i + completion_i` for one kind of prefix (student,
teacher, auxiliary k, negative; or, in evaluation, a cloze prompt and one option). Every view of
a batch is built from the same completions, and `gather_index` lists, in the same example-major
order for every view, the flat positions whose logits predict each completion token. Gathering
with it gives [N, V] rows that line up exactly across views, so no per-view mask arithmetic is
needed downstream.

`completion_outputs` runs a causal LM on a view and applies the LM head to the gathered [N, H]
rows only, instead of the whole [B, S, H] sequence, so prompt positions never cost a vocabulary
projection; for long prompts (teacher views) and large vocabularies (Qwen: 152k) that is most of
the logits memory. It works for plain HF models and for peft-wrapped ones (LoRA layers live
inside the modules, so calling the inner decoder keeps them).

Training (losses) and evaluation (cloze scoring, retention) both use this module, which is why
it sits at the top level: `evaluation` never imports `training`. It tokenizes nothing and
computes no losses.

Shapes: B batch, S padded sequence length, N completion tokens in the batch, V vocabulary,
H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from unisd.objectives.divergence import HeadLogits


@dataclass
class View:
    input_ids: torch.Tensor       # [B, S] long, right-padded
    attention_mask: torch.Tensor  # [B, S] long
    gather_index: torch.Tensor    # [N] flat index into B*S: positions whose logits predict completion tokens
    targets: torch.Tensor         # [N] the completion tokens
    example_of_token: torch.Tensor  # [N] which batch row each completion token belongs to

    def to(self, device) -> "View":
        return View(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.gather_index,
                                             self.targets, self.example_of_token)))


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def build_view(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, *,
               pad_to_multiple_of: int = 1) -> View:
    """Right-padded `prompt + completion` rows and the aligned completion positions.

    Completions may be empty (a row then contributes no tokens). The logits at position p predict
    token p+1, so completion token j of row i is predicted at len(prompt_i) + j - 1. The padded
    length S is rounded up to `pad_to_multiple_of` (extra columns are padding, masked out).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = _round_up(max(lengths), pad_to_multiple_of)
    batch = len(prompts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    gather, targets, owner = [], [], []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        if not prompt:
            raise ValueError(f"row {i}: empty prompt (a completion needs at least one prompt token)")
        row = list(prompt) + list(completion)
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
        start = len(prompt) - 1
        gather.extend(i * width + start + j for j in range(len(completion)))
        targets.extend(completion)
        owner.extend([i] * len(completion))
    return View(input_ids, attention_mask, torch.tensor(gather, dtype=torch.long),
                torch.tensor(targets, dtype=torch.long), torch.tensor(owner, dtype=torch.long))


def concat_views(views: Sequence[View], pad_id: int, *, pad_to_multiple_of: int = 1) -> tuple[View, list[slice]]:
    """Stack several views (same or different completions) into one batch for a single forward,
    padded to the longest (rounded up to `pad_to_multiple_of`). Returns the stacked view and, per
    input view, the slice of the stacked [N] rows it owns."""
    width = _round_up(max(v.input_ids.shape[1] for v in views), pad_to_multiple_of)
    ids, masks, gathers, targets, owners, slices = [], [], [], [], [], []
    row_offset, n_offset = 0, 0
    for v in views:
        b, s = v.input_ids.shape
        pad = width - s
        ids.append(torch.nn.functional.pad(v.input_ids, (0, pad), value=pad_id))
        masks.append(torch.nn.functional.pad(v.attention_mask, (0, pad), value=0))
        rows, cols = v.gather_index // s, v.gather_index % s
        gathers.append((rows + row_offset) * width + cols)
        targets.append(v.targets)
        owners.append(v.example_of_token + row_offset)
        n = v.targets.numel()
        slices.append(slice(n_offset, n_offset + n))
        row_offset += b
        n_offset += n
    return View(torch.cat(ids), torch.cat(masks), torch.cat(gathers), torch.cat(targets), torch.cat(owners)), slices


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


def completion_outputs(model: torch.nn.Module, view: View, *, hidden_layer: int | None = None,
                       lazy_logits: bool = False) -> tuple[torch.Tensor | HeadLogits, torch.Tensor | None]:
    """Logits [N, V] (model dtype) predicting each completion token, and optionally the hidden
    state [N, H] of layer `hidden_layer` (index into HF `hidden_states`; -1 = final output, after
    the final norm) at the same positions.

    `lazy_logits=True` returns the logits as `HeadLogits` (the final hidden states and the head,
    not yet applied), for the chunked divergences to apply one chunk at a time: the training
    step's student, whose [N, V] logits and their gradient would otherwise be held whole. The
    head then runs later, so the caller must not change the model's weights or active adapters
    in between (a teacher view that swaps them must have restored them)."""
    decoder, head = decoder_and_head(model)
    want_all = hidden_layer is not None and hidden_layer != -1
    out = decoder(input_ids=view.input_ids, attention_mask=view.attention_mask,
                  output_hidden_states=want_all, use_cache=False)
    last = out.last_hidden_state
    flat = last.reshape(-1, last.shape[-1]).index_select(0, view.gather_index)
    # Gemma: the LM applies tanh soft-capping after the head
    cap = getattr(_unwrap(model).config, "final_logit_softcapping", None)
    lazy = HeadLogits(flat, head, softcap=cap)
    logits = lazy if lazy_logits else lazy.materialize()
    hidden = None
    if hidden_layer is not None:
        source = last if not want_all else out.hidden_states[hidden_layer]
        hidden = source.reshape(-1, source.shape[-1]).index_select(0, view.gather_index)
    return logits, hidden
