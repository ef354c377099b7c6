"""FSDP2 (`torch.distributed.fsdp.fully_shard`) under torchrun: `distributed.strategy="fsdp"`.

Sharded: the parameters of every decoder layer, one FSDP group per layer (dim-0 shards held as
DTensors), so the layers' weights, gradients and AdamW state cost 1/W per process. Not sharded:
the embedding, the final norm and the LM head, which every rank keeps whole as under "replicate".
The student forward calls the decoder and the head directly (`unisd.scoring.completion_outputs`),
SmolLM2 and Qwen tie the head to the embedding, and tied weights must share one FSDP group:
keeping these few tensors whole sidesteps all three. The decoder is the FSDP root (its own
parameters ignored), so every forward, the student's and `generate`'s, enters through one root.

Gradients: each rank's loss is already divided by the *global* token count, so the ranks'
gradients must be summed, not averaged as FSDP does by default: every group reduces with divide
factor 1 and sum-only collectives. The whole tensors are summed by `distributed.sync_gradients`.
Only the last micro-batch of a step reduce-scatters (the others accumulate unsharded gradients).
Every forward and backward of a sharded model is a collective, so all ranks must run the same
micro-batches: the loop skips one only when no rank has a loss token in it.

Full weights: sampling runs a different number of forwards on each rank (each stops at its own
EOS), so `full_weights` all-gathers every layer once before and reshards after, with no collective
in between, then clears FSDP's record of those forwards (it picks the next backward's prefetching
all-gathers, which must agree across ranks); rank 0's final evaluation runs inside it too.
Teacher forwards run sharded (the same ones on every rank; a frozen full-fine-tuning copy is
sharded like the student). Checkpoints hold full tensors, gathered for rank 0 to write; on resume
the weights are loaded into the whole model before sharding, the optimizer state through
`torch.distributed.checkpoint.state_dict`. LoRA works (the adapter is sharded with its layer).

Not covered: the EMA teacher (the config refuses it), vLLM (refused), mixed-precision policies
(weights, gradients and reductions stay in the model dtype), meta-device init (every rank loads
the whole model once before sharding, so host memory must hold one copy per process), several
nodes (untested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from unisd.models.compile import decoder_layers
from unisd.scoring import decoder_and_head
from unisd.training import distributed


def shard(model: nn.Module, teacher_model: nn.Module | None = None) -> None:
    """Shard `model` (the student) and `teacher_model` (a separate frozen copy, if any) in place,
    across every process of the group."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    # the device the collectives run on: the GPUs under NCCL, the CPU under gloo
    mesh = init_device_mesh("cuda" if dist.get_backend() == "nccl" else "cpu", (dist.get_world_size(),))
    for module in (model, teacher_model):
        if module is not None:
            _shard_layers(module, mesh)


def _shard_layers(model: nn.Module, mesh) -> None:
    from unisd.config.schema import ConfigError

    decoder, _ = decoder_and_head(model)
    in_decoder = {id(m) for m in decoder.modules()}
    layers = [m for m in decoder_layers(model) if id(m) in in_decoder]
    if not layers:
        raise ConfigError(f"distributed.strategy='fsdp': found no decoder layers in {type(model).__name__} "
                          "to shard; use distributed.strategy='replicate'")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
        # Sum, never average: the losses are normalised by the global token count already. Sum-only
        # collectives, since a divide factor of 1 would otherwise become a PREMUL_SUM (not in gloo).
        layer.set_gradient_divide_factor(1.0)
        layer.set_force_sum_reduction_for_comms(True)
        # A trainable tensor without a gradient on one rank still enters the reduce-scatter (as
        # zeros), so every rank sends the same tensors whatever its data.
        if hasattr(layer, "set_reduce_scatter_unused_params"):  # torch >= 2.12; 2.11 lacks it
            layer.set_reduce_scatter_unused_params(True)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    rest = {p for p in decoder.parameters() if id(p) not in in_layers}  # embedding, final norm
    fully_shard(decoder, mesh=mesh, ignored_params=rest)
    if not any(p.requires_grad for p in decoder.parameters()):
        # FSDP records every forward to pick what to all-gather ahead in the next backward, and
        # forgets them in that backward; a frozen teacher copy has none, so forget after each one.
        decoder.register_forward_hook(lambda root, args, out: forget_forwards(root))


def forget_forwards(root: FSDPModule) -> None:
    """Make the root FSDP module forget the forwards it recorded (the order its next backward would
    prefetch all-gathers in). `reset_iter_state` does this from torch 2.12 on; older releases keep
    the record in the same place, cleared here directly (torch 2.11 is what the GPU machine has)."""
    if hasattr(root, "reset_iter_state"):
        root.reset_iter_state()
        return
    state = root._get_fsdp_state()
    state._comm_ctx.post_forward_order.clear()
    if hasattr(state._state_ctx, "iter_forward_root"):
        state._state_ctx.iter_forward_root = None


def _fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def replicated(named_params: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The tensors every rank holds whole (all of them when nothing is sharded)."""
    return [(name, p) for name, p in named_params if not isinstance(p, DTensor)]


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Whether the next backward reduce-scatters the sharded gradients (False: accumulate them
    unsharded on each rank until a backward with sync). No-op for an unsharded model."""
    for module in _fsdp_modules(model):
        module.set_requires_gradient_sync(enabled, recurse=False)


@contextmanager
def full_weights(model: nn.Module) -> Iterator[None]:
    """Every sharded layer of `model` all-gathered for the body and resharded after; no-op for an
    unsharded model. Collective on entry: every rank enters; inside, forwards communicate nothing,
    so ranks may run different numbers of them (generation, rank 0's evaluation).

    The fast generator keys its cached graphs and KV caches on the parameters' data pointers,
    which the gathered tensors need not keep from one call to the next: it then drops them and
    captures again (correct, at the cost of a re-capture on GPU)."""
    modules = _fsdp_modules(model)
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)  # else each forward frees and re-gathers
    try:
        yield
    finally:
        for module in modules:
            module.set_reshard_after_forward(True, recurse=False)
            module.reshard()
        if modules:
            # FSDP records past forwards to pick which layer to all-gather ahead in the next
            # backward; the ones run inside differ between ranks, and so would those all-gathers
            # (a hang, or the wrong shards): forget them.
            forget_forwards(decoder_and_head(model)[0])


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (2-norm) over sharded (DTensor) and whole gradients
    together; returns the global norm, the same on every rank.

    The squared norm is the shards' squared norms summed over ranks plus the whole gradients'
    (identical on every rank, so counted once). Every gradient is then scaled by torch's factor,
    min(1, max_norm / (norm + 1e-6)). Without sharded gradients it is torch's function."""
    grads = [p.grad for p in params if p.grad is not None]
    shards = [g.to_local() for g in grads if isinstance(g, DTensor)]
    if not shards:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    whole = [g for g in grads if not isinstance(g, DTensor)]
    squared = distributed.all_reduce_sum(_squared_norm(shards))
    if whole:
        squared = squared + _squared_norm(whole)
    total = squared.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in shards + whole:  # the local shard is a view of the DTensor's gradient: scaled in place
        g.mul_(coef.to(g.dtype))
    return total


def _squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors])
    return norms.square().sum()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
    """(weights, optimizer state) of a sharded model as full CPU tensors, for rank 0 to write a
    checkpoint; (None, None) on the other ranks. Collective: every rank calls it.

    Weights are what `models.save_weights` writes: the adapter's tensors under LoRA, else every
    tensor; whole tensors that share storage (a tied head) still do. The optimizer state is keyed by
    parameter name (`torch.distributed.checkpoint` format), which `load_optimizer_state` reads."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from unisd.models import is_lora

    main = distributed.is_main_process()
    lora = is_lora(model)
    weights: dict[str, torch.Tensor] = {}
    copies: dict[tuple, torch.Tensor] = {}
    for name, t in model.state_dict().items():  # the same names in the same order on every rank
        if lora and "lora_" not in name:
            continue
        if isinstance(t, DTensor):
            t = t.full_tensor()  # all-gather
        if main:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.device)
            weights[name] = copies.setdefault(key, t.detach().cpu())
    optim = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return (weights, optim) if main else (None, None)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state written from `full_state` into a sharded model's optimizer
    (each rank keeps its shards). Collective: every rank calls it with the whole state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
