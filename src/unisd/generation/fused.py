"""Decode-time projection weights: q/k/v and gate/up fused into one matrix each, LoRA batched.

At small decode batches a step is bound by how many kernels it launches, not by bandwidth
(docs/benchmarks.md: ~500 kernels per SmolLM2 step at batch 64, 210 of them small GEMMs). A Llama-
style layer runs seven projections, and under peft LoRA each one is five kernels (base GEMM, A,
B, scale, add). `DecodeWeights` keeps, for every attention block, one [q+k+v, hidden] matrix, for
every MLP one [gate+up, hidden] matrix, and for LoRA the adapters of a group stacked the same way:
A as [sum of ranks, hidden] rows stacked under the group's base weights (x·Wᵀ and x·Aᵀ come out of
one GEMM) and B (times its scaling) as one block-diagonal [sum of outputs, sum of ranks] matrix, so
a group costs two GEMMs (base-and-A, B-and-add) instead of five kernels per member. LoRA stays
unmerged on purpose: W + s·BA rounded to bf16 drops every delta entry below half a bf16 step of W,
so early in training the sampling policy would silently be the base model's. Other LoRA-wrapped
projections (o_proj, down_proj) get the same two-GEMM form.
While `patched()` is active the model's projection modules are replaced by shims that read these
matrices; outside it the model is untouched, and training and teacher scoring never see the shims.

How the shims share one GEMM: HF's attention calls q_proj, k_proj and v_proj in that order on the
same input (the MLP: gate_proj, then up_proj). The first shim of a group computes the fused product
and keeps it on the group; the others slice it. `torch.compile` traces this as one matmul (it
records the attribute write as a side effect). An architecture that called them in another order
would read a stale product, so `FastGenerator` compares the patched and unpatched logits once per
model and turns fusion off, with a warning, when they differ.

`refresh()` copies the current values in (same storage, so captured CUDA graphs stay valid): call it
before each generation, after the optimizer changed the weights. It costs one pass over the
projection weights, and the copies of the base weights cost that much memory. Which adapters are live (enabled, not
merged) is fixed when a `DecodeWeights` is built: rebuild it when the adapter state changes.

Not fused (left as they are): projections that are neither `nn.Linear` nor peft LoRA layers over
one (quantized layers, DoRA and other LoRA variants, LoRA with its own bias, LoRA dropout active in
training mode), and members of a group whose input sizes or dtypes differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling projections that read the same input, in the order HF models call them."""
SINGLES = ("o_proj", "down_proj")
"""Projections replaced on their own, and only when LoRA-wrapped (base-and-A GEMM, B-and-add)."""


def _base_linear(module: nn.Module) -> nn.Linear | None:
    """The `nn.Linear` behind a plain or peft-LoRA projection; None when it is something else
    (quantized, DoRA or another LoRA variant, LoRA with its own bias, transposed weights)."""
    if type(module) is nn.Linear:
        return module
    base = getattr(module, "base_layer", None)
    if type(base) is not nn.Linear or not hasattr(module, "get_delta_weight"):
        return None
    if getattr(module, "fan_in_fan_out", False):
        return None
    for name in getattr(module, "lora_A", {}):
        if (getattr(module, "use_dora", {}).get(name) or getattr(module, "lora_variant", {}).get(name)
                or getattr(module.lora_B[name], "bias", None) is not None):
            return None
        dropouts = getattr(module, "lora_dropout", {})
        dropout = dropouts[name] if name in dropouts else None
        if module.training and dropout is not None and getattr(dropout, "p", 0.0) > 0:
            return None  # sampling would have to drop the same units as peft's forward
    return base


def _live_adapters(module: nn.Module) -> list[str]:
    """The adapters a peft LoRA layer's forward would add right now (none when disabled or merged:
    a merged adapter is already in the base weight)."""
    if type(module) is nn.Linear or getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    return [name for name in module.active_adapters if name in module.lora_A]


@dataclass
class _Group:
    """One fused projection and the modules it stands for (`names` on `parent`, in call order)."""

    parent: nn.Module
    names: tuple[str, ...]
    originals: list[nn.Module]
    bounds: list[tuple[int, int]]          # output rows of each member in `weight`
    adapters: list[list[str]]              # live LoRA adapters of each member, fixed at build
    weight: torch.Tensor                   # [sum out (+ sum rank), in]: base weights, then LoRA's A rows
    bias: torch.Tensor | None              # [sum out (+ sum rank)], zero on the A rows
    out_features: int = 0                  # sum out: where the A rows start in `weight`
    lora_a: torch.Tensor | None = None     # [sum rank, in]: a view of weight's last rows
    lora_b: torch.Tensor | None = None     # [sum out, sum rank], block-diagonal, scaling folded in
    shims: list[nn.Module] = field(default_factory=list)
    product: torch.Tensor | None = None    # the first shim's output, read by the others

    def copies(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor,
                                                                              nn.Module, str]]]:
        """What `DecodeWeights.refresh` copies: (destinations, sources) of the plain copies, and the
        LoRA B blocks with their source, module and adapter name (whose scaling is read per refresh)."""
        dst, src, scaled = [], [], []
        col = 0
        for module, (lo, hi), names in zip(self.originals, self.bounds, self.adapters):
            base = _base_linear(module)
            dst.append(self.weight[lo:hi])
            src.append(base.weight)
            if self.bias is not None and base.bias is not None:  # (a member without bias: zeros, set once)
                dst.append(self.bias[lo:hi])
                src.append(base.bias)
            for name in names:
                a, b = module.lora_A[name].weight, module.lora_B[name].weight  # [r, in], [out, r]
                rank = a.shape[0]
                dst.append(self.lora_a[col:col + rank])
                src.append(a)
                scaled.append((self.lora_b[lo:hi, col:col + rank], b, module, name))
                col += rank
        return dst, src, scaled

    def project(self, x: torch.Tensor) -> torch.Tensor:
        product = F.linear(x, self.weight, self.bias)  # the base outputs and, with LoRA, x·Aᵀ: one GEMM
        if self.lora_a is None:
            return product
        out, low = product[..., :self.out_features], product[..., self.out_features:]
        shape = out.shape
        return torch.addmm(out.reshape(-1, shape[-1]), low.reshape(-1, low.shape[-1]),
                           self.lora_b.t()).reshape(shape)


class _First(nn.Module):
    """The first projection of a group: computes the fused product, returns its own slice."""

    def __init__(self, group: _Group, lo: int, hi: int):
        super().__init__()
        self.group, self.lo, self.hi = group, lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.group.product = self.group.project(x)
        return self.group.product[..., self.lo:self.hi]


class _Rest(nn.Module):
    """A later projection of a group: a slice of the product the first one computed."""

    def __init__(self, group: _Group, lo: int, hi: int):
        super().__init__()
        self.group, self.lo, self.hi = group, lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group.product is None:
            raise RuntimeError(f"{self.group.names}: called before {self.group.names[0]}, so there is no "
                               "fused product to slice")
        return self.group.product[..., self.lo:self.hi]


def _group(parent: nn.Module, names: tuple[str, ...]) -> _Group | None:
    modules = [getattr(parent, n, None) for n in names]
    bases = [_base_linear(m) if isinstance(m, nn.Module) else None for m in modules]
    if any(b is None for b in bases):
        return None
    if len({(b.in_features, b.weight.dtype, b.weight.device) for b in bases}) != 1:
        return None
    adapters = [_live_adapters(m) for m in modules]
    if len(names) == 1 and not adapters[0]:
        return None  # a projection on its own without a live adapter gains nothing from a copy
    sizes = [b.out_features for b in bases]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    ref = bases[0].weight
    like = dict(dtype=ref.dtype, device=ref.device)
    ranks = sum(m.lora_A[n].weight.shape[0] for m, names in zip(modules, adapters) for n in names)
    rows = offsets[-1] + ranks  # LoRA's A rows stacked under the base weights: x·Aᵀ in the same GEMM
    group = _Group(parent=parent, names=names, originals=modules, bounds=list(zip(offsets[:-1], offsets[1:])),
                   adapters=adapters, weight=torch.empty((rows, ref.shape[1]), **like),
                   bias=(torch.zeros(rows, **like) if any(b.bias is not None for b in bases) else None),
                   out_features=offsets[-1])
    if ranks:
        group.lora_a = group.weight[offsets[-1]:]
        group.lora_b = torch.zeros((offsets[-1], ranks), **like)  # off-diagonal blocks stay 0
    group.shims = [(_First if i == 0 else _Rest)(group, lo, hi) for i, (lo, hi) in enumerate(group.bounds)]
    return group


class DecodeWeights:
    """Fused projection weights for one model, LoRA adapters batched beside them (see the module
    docstring)."""

    def __init__(self, model: nn.Module):
        self.groups: list[_Group] = []
        for parent in model.modules():
            if isinstance(parent, (_First, _Rest)):
                continue
            for names in (*GROUPS, *((n,) for n in SINGLES)):
                if all(hasattr(parent, n) for n in names):
                    group = _group(parent, names)
                    if group is not None:
                        self.groups.append(group)
        # the tensors to copy, listed once: the model's parameter objects stay the same while this
        # object lives (a new tensor changes FastGenerator's fingerprint, which rebuilds it)
        self._dst, self._src, self._scaled = [], [], []
        for group in self.groups:
            dst, src, scaled = group.copies()
            self._dst += dst
            self._src += src
            self._scaled += scaled
        self.refresh()

    def __bool__(self) -> bool:
        return bool(self.groups)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for g in self.groups for t in (g.weight, g.bias, g.lora_b) if t is not None)

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the model's current weights in, in place (the adapter structure is fixed at build).
        Every call of the generator does this (the optimizer updates weights in place): one
        multi-tensor copy instead of a launch per tensor, which cost ~2 ms of host time per call for
        SmolLM2's 60 groups."""
        if self._dst:
            torch._foreach_copy_(self._dst, self._src)
        if self._scaled:
            blocks = [block for block, _, _, _ in self._scaled]
            torch._foreach_copy_(blocks, [b for _, b, _, _ in self._scaled])
            torch._foreach_mul_(blocks, [float(module.scaling[name]) for _, _, module, name in self._scaled])

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Swap the shims in for the duration (the original modules are restored even on errors)."""
        # straight into `_modules` (where nn.Module keeps submodules): setattr's bookkeeping cost
        # ~2 ms per call for SmolLM2's 210 projections, and the names are known submodules already
        try:
            for group in self.groups:
                for name, shim in zip(group.names, group.shims):
                    group.parent._modules[name] = shim
            yield
        finally:
            for group in self.groups:
                group.product = None
                for name, original in zip(group.names, group.originals):
                    group.parent._modules[name] = original
