"""Optional vLLM backend (`pip install unisd[vllm]`). vLLM is imported on first use only.

vLLM keeps its own copy of the weights, loaded from `model_path`: the `model` passed to `generate`
is ignored, so after training steps call `load_weights(model)` to push the current weights. That
hook is the extent of weight sync here, and it has not been run in this repo's CI (no vLLM there).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from unisd.generation._util import check_params, cut_at_eos, draw_seed, unwrap_model
from unisd.generation.base import SamplingParams


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ImportError("the 'vllm' generator needs vLLM: pip install unisd[vllm]") from err
    return vllm


class VLLMGenerator:
    """`Generator` over a `vllm.LLM` engine built lazily from `model_path` (kwargs go to `vllm.LLM`)."""

    def __init__(self, model_path: str | None = None, **engine_kwargs: Any):
        self.model_path = model_path
        self.engine_kwargs = engine_kwargs
        self._llm: Any = None

    def _engine(self, model: torch.nn.Module | None) -> Any:
        if self._llm is None:
            vllm = _import_vllm()
            path = self.model_path or getattr(getattr(model, "config", None), "_name_or_path", None)
            if not path:
                raise ValueError("VLLMGenerator needs model_path "
                                 "(or a model whose config names its checkpoint)")
            self._llm = vllm.LLM(model=path, **self.engine_kwargs)
        return self._llm

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy `model`'s current weights into the engine (LoRA merged first is the caller's job).

        Uses `LLM.apply_model`, which runs the function on every worker's model (vLLM >= 0.8)."""
        llm = self._engine(model)
        weights = [(name, p.detach()) for name, p in unwrap_model(model).state_dict().items()]
        llm.apply_model(lambda m: m.load_weights(weights))

    def generate(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 eos_token_ids: Sequence[int], pad_token_id: int,
                 rng: torch.Generator | None = None) -> list[list[int]]:
        if not prompts:
            return []
        check_params(params, prompts)
        vllm = _import_vllm()
        llm = self._engine(model)
        requests = []
        for _ in prompts:  # one seed per prompt, so a seeded rng gives reproducible samples
            seed = draw_seed(rng) if rng is not None else None
            requests.append(vllm.SamplingParams(n=1, max_tokens=params.max_new_tokens,
                                                temperature=params.temperature, top_p=params.top_p,
                                                stop_token_ids=list(eos_token_ids), seed=seed))
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], requests, use_tqdm=False)
        completions = []
        for out in outputs:
            ids = list(out.outputs[0].token_ids)
            stop = out.outputs[0].stop_reason  # the stop token id when a stop_token_id ended it
            if isinstance(stop, int) and stop in eos_token_ids and (not ids or ids[-1] != stop):
                ids.append(stop)
            completions.append(cut_at_eos(ids, eos_token_ids, params.max_new_tokens))
        return completions
