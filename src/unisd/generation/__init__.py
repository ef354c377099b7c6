"""Generator backends behind one protocol (`base.Generator`), picked by name.

"hf" is transformers' `generate` (the reference), "fast" our static-cache, CUDA-graphed decode loop,
"vllm" the optional vLLM engine. Backends are imported only when asked for.
"""

from __future__ import annotations

import importlib

import torch

from unisd.generation.base import Generator, SamplingParams

GENERATORS: dict[str, str] = {
    "hf": "unisd.generation.hf:HFGenerator",
    "fast": "unisd.generation.fast:FastGenerator",
    "vllm": "unisd.generation.vllm:VLLMGenerator",
}


def get_generator(name: str, device: torch.device | str = "cpu", **kwargs) -> Generator:
    """A new generator for `name` ("auto": "fast" on CUDA, "hf" otherwise); kwargs go to its constructor."""
    if name == "auto":
        name = "fast" if torch.device(device).type == "cuda" else "hf"
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose from {sorted(GENERATORS) + ['auto']}")
    module, cls = GENERATORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["GENERATORS", "Generator", "SamplingParams", "get_generator"]
