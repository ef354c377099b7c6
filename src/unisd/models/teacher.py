"""Teacher *weights* (spec §2.2): which parameters the teacher forward runs with.

Independent of teacher *contexts* (what the teacher reads). Three kinds:

| kind        | under LoRA                                | under full fine-tuning                   |
|-------------|-------------------------------------------|------------------------------------------|
| frozen_base | the student with its adapter switched off | frozen copy made at init (+1 model)      |
| live        | the current student                       | the current student                      |
| ema         | a second adapter "ema", switched in with  | shadow copy of the model (+1 model, and  |
|             | set_adapter during the teacher forward    | +1 fp32 copy when weights are bf16/fp16) |

Unlike the reference code, whose EMA skips the LoRA tensors and so stays equal to the frozen base,
our EMA averages exactly the tensors the optimizer trains: the adapter under LoRA, every weight
under full fine-tuning. The EMA is kept in float32 (a bf16 average would round the 1 - decay
sized steps away).

Usage (the teacher never gets gradients; `activated` also enters no_grad and eval mode):

    tw = TeacherWeights.from_config(model, cfg.teacher, cfg.model.finetune)  # before training
    with torch.no_grad(), tw.activated(model) as teacher:
        out = teacher(input_ids=..., attention_mask=...)
    ... optimizer.step(); step += 1; tw.update(step)
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch

from unisd.errors import WeightsMismatchError
from torch import nn

from unisd.models.lora import STUDENT_ADAPTER, adapter_pairs, is_lora

if TYPE_CHECKING:
    from unisd.config.schema import TeacherConfig

EMA_ADAPTER = "ema"
KINDS = ("frozen_base", "live", "ema")


class TeacherWeights:
    """Holds whatever the teacher needs beyond the student (nothing, a copy, or EMA tensors).

    Create it right after `apply_lora` and before the first optimizer step: "frozen_base" under
    full fine-tuning copies the weights as they are then, and the EMA starts from them. On resume,
    build it from the freshly loaded base the same way, then `load_state_dict` the checkpoint.
    """

    def __init__(self, model: nn.Module, kind: str, *, finetune: str, decay: float = 0.98, every: int = 1):
        if kind not in KINDS:
            raise ValueError(f"teacher.weights: got {kind!r}; allowed: {', '.join(map(repr, KINDS))}")
        if finetune not in ("lora", "full"):
            raise ValueError(f"model.finetune: got {finetune!r}; allowed: 'lora', 'full'")
        if finetune == "lora" and not is_lora(model):
            raise TypeError("finetune='lora' but the model has no peft adapter; call apply_lora first")
        if not 0 <= decay < 1 or every < 1:
            raise ValueError(f"ema decay must lie in [0, 1) and every >= 1, got {decay}, {every}")
        self.kind, self.finetune, self.decay, self.every = kind, finetune, decay, every
        self._model = model
        self._copy: nn.Module | None = None  # frozen base or EMA shadow (full fine-tuning only)
        self._names: list[str] = []  # student parameter names of the averaged tensors
        self._student: list[torch.Tensor] = []  # what the optimizer trains
        self._teacher: list[torch.Tensor] = []  # what the teacher forward reads
        self._master: list[torch.Tensor] | None = None  # fp32 EMA when _teacher is low precision
        self.updates = 0
        """Number of EMA updates applied so far."""

        if finetune == "full" and kind in ("frozen_base", "ema"):
            # deepcopy keeps tied weights tied (copy memo); costs one more model in memory.
            self._copy = copy.deepcopy(model).requires_grad_(False).eval()
        if kind == "ema":
            self._init_ema()

    @classmethod
    def from_config(cls, model: nn.Module, teacher_cfg: TeacherConfig, finetune: str) -> "TeacherWeights":
        return cls(model, teacher_cfg.weights, finetune=finetune, decay=teacher_cfg.ema_decay,
                   every=teacher_cfg.ema_every)

    def _init_ema(self) -> None:
        if self.finetune == "lora":
            model = self._model
            if EMA_ADAPTER in model.peft_config:
                raise ValueError(f"the model already has an adapter named {EMA_ADAPTER!r}")
            model.add_adapter(EMA_ADAPTER, copy.deepcopy(model.peft_config[STUDENT_ADAPTER]))
            pairs = adapter_pairs(model, STUDENT_ADAPTER, EMA_ADAPTER)
            self._names = [n for n, _, _ in pairs]
            self._student = [s for _, s, _ in pairs]
            self._teacher = [t for _, _, t in pairs]
            with torch.no_grad():
                for s, t in zip(self._student, self._teacher, strict=True):
                    t.copy_(s)
            for t in self._teacher:
                t.requires_grad_(False)
        else:
            shadow = dict(self._copy.named_parameters())
            for name, p in self._model.named_parameters():
                self._names.append(name)
                self._student.append(p)
                self._teacher.append(shadow[name])
        if any(t.dtype != torch.float32 for t in self._teacher):
            self._master = [t.detach().float().clone() for t in self._teacher]

    @property
    def separate_model(self) -> nn.Module | None:
        """The module teacher forwards run when it is not the student (the frozen or EMA copy under
        full fine-tuning), else None."""
        return self._copy

    # -------------------------------------------------------------------------------------
    @contextmanager
    def activated(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside, the yielded module computes the teacher forward; outside, `model` is the student
        again (adapter, requires_grad flags and train/eval mode restored). Runs under no_grad and
        in eval mode (no LoRA dropout in the teacher). Call the yielded module, not `model`: under
        full fine-tuning it is the frozen or EMA copy."""
        if model is not self._model:
            raise ValueError("TeacherWeights.activated got a different model than it was built for")
        if self._copy is not None:
            with torch.no_grad():
                yield self._copy
            return
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                if self.kind == "live":
                    yield model
                elif self.kind == "frozen_base":  # LoRA: the base weights are the initial model
                    with model.disable_adapter():
                        yield model
                else:  # LoRA EMA adapter
                    flags = [(p, p.requires_grad) for p in self._student + self._teacher]
                    model.set_adapter(EMA_ADAPTER, inference_mode=True)
                    try:
                        yield model
                    finally:
                        model.set_adapter(STUDENT_ADAPTER)
                        for p, flag in flags:  # peft's set_adapter toggles requires_grad
                            p.requires_grad_(flag)
        finally:
            for m, training in modes:
                m.training = training

    def forward_model(self, model: nn.Module) -> nn.Module:
        """The module to call for a teacher forward *without* the context manager. Only valid for
        kinds that need no switching: "live", or full fine-tuning copies; use `activated` otherwise."""
        if self._copy is not None:
            return self._copy
        if self.kind == "live":
            return model
        raise RuntimeError(f"teacher weights {self.kind!r} under LoRA need `with tw.activated(model)`")

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """EMA step after optimizer step number `step` (1-based): every `every` steps,
        ema <- decay * ema + (1 - decay) * student. No-op for other kinds. Returns True if it updated."""
        if self.kind != "ema" or step % self.every:
            return False
        weight = 1.0 - self.decay
        if self._master is None:
            torch._foreach_lerp_(self._teacher, [s.detach() for s in self._student], weight)
        else:
            for m, s, t in zip(self._master, self._student, self._teacher):
                m.lerp_(s.detach().float(), weight)
                t.copy_(m)
        self.updates += 1
        return True

    def extra_bytes(self) -> int:
        """Memory this object holds beyond the student (copy, EMA adapter, fp32 master)."""
        total = sum(t.numel() * t.element_size() for t in self._teacher) if self._copy is None else 0
        if self._copy is not None:
            total += sum(p.numel() * p.element_size() for p in self._copy.parameters())
        if self._master is not None:
            total += sum(m.numel() * 4 for m in self._master)
        return total

    # -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """EMA tensors (fp32, on CPU, keyed by student parameter name) for checkpoints; the other
        kinds hold nothing that the base model and the student checkpoint cannot rebuild."""
        state: dict[str, Any] = {"kind": self.kind, "finetune": self.finetune, "updates": self.updates}
        if self.kind == "ema":
            src = self._master if self._master is not None else self._teacher
            state["ema"] = {n: t.detach().float().cpu().clone() for n, t in zip(self._names, src)}
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or state.get("finetune") != self.finetune:
            raise ValueError(f"teacher state is for {state.get('kind')}/{state.get('finetune')}, "
                             f"this run uses {self.kind}/{self.finetune}")
        self.updates = int(state.get("updates", 0))
        if self.kind != "ema":
            return
        ema = state["ema"]
        missing = set(self._names) - set(ema)
        if missing or len(ema) != len(self._names):
            raise WeightsMismatchError(f"teacher EMA state does not match the model (missing {sorted(missing)[:3]}...)")
        for i, (name, t) in enumerate(zip(self._names, self._teacher)):
            t.copy_(ema[name])
            if self._master is not None:
                self._master[i].copy_(ema[name])

