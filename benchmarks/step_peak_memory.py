"""Peak live tensor memory of one training step's loss phase (student forward, teacher forward,
the objective, backward), measured on the CPU by counting every tensor storage an op creates
until it is freed (a TorchDispatchMode), weights excluded. For the objective's memory knobs: the
divergence's row chunk (`objective.vocab_chunk`) and whether the student's logits are left as
hidden states + LM head (`HeadLogits`, the default) or materialised whole (the previous path).

The model has SmolLM2-135M's vocabulary, width and heads but 2 layers (the objective's share of
memory does not depend on depth), bf16, random weights; batch 16 with prompts of 100-145 tokens
and 110-token completions (the TRL comparison's shapes at batch 16), teacher prompts 130 tokens
longer. CPU attention and kernels differ from CUDA's, so absolute numbers are not a GPU's peak;
the differences between settings are what this measures.

    PYTHONPATH=src python3 benchmarks/step_peak_memory.py [--chunks 1024 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

import unisd.training.step as step_module
from unisd.config.schema import ObjectiveConfig
from unisd.scoring import completion_outputs
from unisd.training.step import RolloutRows, StepContext, count_loss_tokens, micro_batch_loss

VOCAB, HIDDEN = 49152, 576


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created under it and not yet freed; `peak` is their maximum."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._ptrs: set[int] = set()

    def _freed(self, ptr: int, nbytes: int) -> None:
        self.live -= nbytes
        self._ptrs.discard(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                storage = x.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if ptr and nbytes and ptr not in self._ptrs:  # views share their input's storage
                    self._ptrs.add(ptr)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, ptr, nbytes)
        return out


def model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=1536, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                      max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).bfloat16()


def rows(batch: int) -> RolloutRows:
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()
    return RolloutRows(ids=[str(i) for i in range(batch)],
                       student_prompts=[ids(100 + 3 * (i % 16)) for i in range(batch)],
                       completions=[ids(110) for _ in range(batch)],
                       teacher_prompts=[ids(230 + 3 * (i % 16)) for i in range(batch)],
                       loss_mask=[True] * batch)


def measure(student, teacher, batch_rows, chunk: int, lazy: bool, checkpointing: bool) -> dict:
    if checkpointing:
        student.gradient_checkpointing_enable()
        student.train()
    else:
        student.gradient_checkpointing_disable()
    student.zero_grad(set_to_none=True)

    def teacher_forward(view, hidden_layer):
        with torch.no_grad():
            return completion_outputs(teacher, view, hidden_layer=hidden_layer)

    def student_outputs(model, view, *, hidden_layer=None, lazy_logits=False):
        return completion_outputs(model, view, hidden_layer=hidden_layer, lazy_logits=lazy and lazy_logits)

    ctx = StepContext(ObjectiveConfig(divergence="forward_kl", vocab_chunk=chunk), 0, torch.device("cpu"),
                      float(count_loss_tokens(batch_rows)), teacher_forward)
    original = step_module.completion_outputs
    step_module.completion_outputs = student_outputs
    try:
        with LiveBytes() as probe:
            loss, _ = micro_batch_loss(student, batch_rows, ctx)
            forward_peak = probe.peak
            loss.backward()
    finally:
        step_module.completion_outputs = original
    return {"chunk": chunk, "student_logits": "HeadLogits" if lazy else "materialised",
            "checkpointing": checkpointing, "completion_tokens": count_loss_tokens(batch_rows),
            "peak_gb": round(probe.peak / 1e9, 3), "forward_peak_gb": round(forward_peak / 1e9, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024, 256])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    student, teacher, batch_rows = model(0), model(1), rows(args.batch)
    results = []
    for checkpointing in (True, False):
        for chunk in args.chunks:
            for lazy in (False, True):
                r = measure(student, teacher, batch_rows, chunk, lazy, checkpointing)
                results.append(r)
                print(json.dumps(r), flush=True)
    print(f"\n{'checkpointing':<14}{'chunk':>6}  {'student logits':<14}{'peak GB':>9}{'fwd peak GB':>13}")
    for r in results:
        print(f"{str(r['checkpointing']):<14}{r['chunk']:>6}  {r['student_logits']:<14}{r['peak_gb']:>9}"
              f"{r['forward_peak_gb']:>13}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "batch": args.batch, "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
