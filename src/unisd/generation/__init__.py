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


def get_generator(name: str, device: torch.device | str = "cpu", *, fast_options: dict | None = None,
                  **kwargs) -> Generator:
    """A new generator for `name` ("auto": "fast" on CUDA, "hf" otherwise); kwargs go to its
    constructor, `fast_options` too when the choice is "fast"."""
    if name == "auto":
        name = "fast" if torch.device(device).type == "cuda" else "hf"
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose from {sorted(GENERATORS) + ['auto']}")
    if name == "fast" and fast_options:
        kwargs = {**fast_options, **kwargs}
    module, cls = GENERATORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def fast_options(decode_attention: str = "auto", graph_prefill: bool = True) -> dict:
    """`FastGenerator` arguments from the config's names (`rollout.decode_attention`,
    `rollout.graph_prefill`): "auto" is the generator's default (the Triton kernel where it runs),
    "sdpa" torch's SDPA choice, "triton" / "flex" those kernels."""
    options: dict = {}
    if decode_attention != "auto":
        options["attention"] = [] if decode_attention == "sdpa" else [decode_attention]
    if not graph_prefill:
        options["graph_prefill"] = False
    return options


__all__ = ["GENERATORS", "Generator", "SamplingParams", "fast_options", "get_generator"]
