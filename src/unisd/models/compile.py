"""`model.compile`: each decoder layer compiled with `torch.compile` for the training forward and backward.

Compiling layer by layer (as torchtune does) fuses the small element-wise work of a layer - the
float32 RMSNorm, SiLU times the up projection, residual adds - and lets the compiler recompute
those cheap results in the backward pass instead of saving them, so a step keeps fewer tensors
alive and launches fewer kernels. One compiled graph serves every layer of a model (they share
their code); sequence lengths are dynamic, so a new length does not recompile.

`CompiledLayers.active()` installs the compiled forwards for the duration only: the loop wraps
each micro-batch's forward and backward (teacher forwards included) in it, and sampling and
evaluation, which bring their own KV caches and, on GPU, their own compiled decode step, run
the layers as they are.

With it the loop rounds every forward's sequence length up to a multiple of 16 (masked padding),
so that the alignment test inside SDPA's CUDA kernels always goes the same way and does not
recompile the layers mid-run.

Not done here: compiling the LM head or the divergence (their float32 work is already chunked,
`unisd.objectives.divergence`), and FSDP (the config refuses the combination, untested).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a transformers model (peft-wrapped or not), found by the class
    names it lists in `_no_split_modules` (LlamaDecoderLayer, Qwen2DecoderLayer, GPT2Block...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


class CompiledLayers:
    """A compiled forward per decoder layer of `model`, installed while `active()`."""

    def __init__(self, model: nn.Module):
        self.layers = decoder_layers(model)
        if not self.layers:
            from unisd.config.schema import ConfigError

            raise ConfigError(f"model.compile: found no decoder layers in {type(model).__name__} to compile; "
                              "set model.compile=false")
        # the bound method is compiled; torch.compile caches by code, so the layers share one graph
        self._compiled = [torch.compile(layer.forward, dynamic=True) for layer in self.layers]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The layers run their compiled forwards inside (an instance attribute shadows the class's
        `forward`; removed on exit, even on errors)."""
        try:
            for layer, fn in zip(self.layers, self._compiled):
                layer.forward = fn
            yield
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)
