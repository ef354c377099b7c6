"""Token-level views of one batch: the same completion ids under several prompts.

A *view* is a right-padded batch `prompt_i + completion_i` for one kind of prefix (student,
teacher, auxiliary k, negative). Every view of a batch is built from the same completions, and
`gather_index` lists, in the same example-major order for every view, the flat positions whose
logits predict each completion token. Gathering with it gives [N, V] rows that line up exactly
across views, so no per-view mask arithmetic is needed downstream.

This module tokenizes and pads; it does not run models or compute losses.

Shapes: B batch, S padded sequence length, N completion tokens in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from unisd.prompting import chat_prompt_ids, completion_ids  # noqa: F401  (re-exported)


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


def build_view(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> View:
    """Right-padded `prompt + completion` rows and the aligned completion positions.

    Completions may be empty (a row then contributes no tokens). The logits at position p predict
    token p+1, so completion token j of row i is predicted at len(prompt_i) + j - 1.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = max(lengths)
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


def concat_views(views: Sequence[View], pad_id: int) -> tuple[View, list[slice]]:
    """Stack several views (same or different completions) into one batch for a single forward.
    Returns the stacked view and, per input view, the slice of the stacked [N] rows it owns."""
    width = max(v.input_ids.shape[1] for v in views)
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
