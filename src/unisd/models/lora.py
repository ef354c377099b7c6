"""What the optimizer trains: a peft LoRA adapter (seeded init), or every weight.

`apply_lora` picks the adapted modules per architecture (attention and MLP projections), or the
config's `lora_targets`. The adapter is named "default"; `models.teacher` may add a second,
frozen adapter named "ema". Never trainable: the base weights under LoRA and that "ema" adapter.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from unisd.config.schema import ModelConfig

STUDENT_ADAPTER = "default"
"""peft's name for the trained adapter."""

_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _PROJ,
    "mistral": _PROJ,
    "qwen2": _PROJ,
    "qwen3": _PROJ,
    "gemma": _PROJ,
    "gemma2": _PROJ,
    "gemma3": _PROJ,
    "gemma3_text": _PROJ,
    # Phi-3 fuses q/k/v and gate/up into single Linear layers (the UniSD reference targets the same).
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    # GPT-2 uses Conv1D (fan_in_fan_out); c_proj is both the attention and the MLP output.
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
"""config.model_type -> module names to adapt; other architectures get every Linear but the LM head."""


def is_lora(model: nn.Module) -> bool:
    """True for a peft model (what `apply_lora` returns under finetune="lora")."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def lora_targets(model: nn.Module) -> list[str]:
    """Module names to adapt for this model's architecture (see LORA_TARGETS)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, Conv1D)) and module is not head}
    head_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    names -= head_names
    if not names:
        raise ValueError(f"no Linear layers to adapt in {type(model).__name__}; set model.lora_targets")
    return sorted(names)


def apply_lora(model: nn.Module, cfg: ModelConfig, *, seed: int = 0) -> nn.Module:
    """Make `model` trainable as `cfg.finetune` says and return the module to train.

    Under "lora" this returns a new peft wrapper (use it instead of `model`): only the adapter
    requires grad, and its init depends only on `seed` (the global RNG is left untouched; the
    adapter starts as an exact no-op, since lora_B is zero). Under "full" every parameter requires
    grad and `model` itself is returned.
    """
    if cfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.finetune != "lora":
        raise ValueError(f"model.finetune: got {cfg.finetune!r}; allowed: 'lora', 'full'")
    from peft import LoraConfig, get_peft_model

    targets = list(cfg.lora_targets) if cfg.lora_targets else lora_targets(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM",
                        fan_in_fan_out=model_type == "gpt2")
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), quiet_peft():
        torch.manual_seed(seed)  # seeds CUDA too: lora_A is initialised on the weights' device
        return get_peft_model(model, config, adapter_name=STUDENT_ADAPTER)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence peft's read of transformers' deprecated `is_gradient_checkpointing` (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer should get (requires_grad), without duplicates."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_pairs(model: Any, src: str, dst: str) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """(name, param of adapter `src`, param of adapter `dst`) for every LoRA tensor, matched by
    name with the adapter component swapped (`...lora_A.default.weight` <-> `...lora_A.ema.weight`)."""
    params = dict(model.named_parameters())
    pairs = []
    for name, p in params.items():
        parts = name.split(".")
        idx = [i for i in range(1, len(parts)) if parts[i] == src and parts[i - 1].startswith("lora_")]
        if not idx:
            continue
        parts[idx[0]] = dst
        other = ".".join(parts)
        if other not in params:
            raise KeyError(f"adapter {dst!r} has no tensor matching {name}")
        pairs.append((name, p, params[other]))
    if not pairs:
        raise ValueError(f"model has no LoRA tensors for adapter {src!r}")
    return pairs
