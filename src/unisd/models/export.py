"""Save and restore what training changes, and export a standalone merged checkpoint.

* `save_weights` / `load_weights`: only the trained weights (the LoRA adapter "default" through
  peft, or the whole model under full fine-tuning) plus `unisd_weights.json` naming the base
  model, for checkpoints. The EMA teacher is saved separately (`TeacherWeights.state_dict`).
* `export_merged`: LoRA merged into the base weights, written as a plain transformers folder
  (safetensors, config, tokenizer) that `AutoModelForCausalLM.from_pretrained` loads without peft.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from unisd.errors import WeightsMismatchError
from torch import nn

from unisd.models.lora import STUDENT_ADAPTER, is_lora, quiet_peft

META = "unisd_weights.json"
_ADAPTER_FILE = "adapter_model.safetensors"


def save_weights(model: nn.Module, out_dir: str | Path, *, base: str | None = None,
                 step: int | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the trained weights of `model` into `out_dir` (created if needed).

    Args:
        base: the model name the run started from (ModelConfig.name), recorded so that
            `export_merged(out_dir, ...)` can rebuild the model; default: the folder the base was
            loaded from (`config._name_or_path`).
        step: optimizer step, recorded in the metadata.
        state_dict: the tensors to write instead of the model's own, keyed as in its state_dict
            (full tensors gathered from a sharded model: `training.fsdp.full_state`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config if not is_lora(model) else model.get_base_model().config
    dtype = next(p.dtype for p in model.parameters())
    if is_lora(model):
        # selected_adapters: leave the teacher's "ema" adapter out (it has its own state).
        model.save_pretrained(out, selected_adapters=[STUDENT_ADAPTER], state_dict=state_dict)
        kind = "lora"
        dtype = next(p.dtype for n, p in model.named_parameters() if "lora_" not in n)
    else:
        model.save_pretrained(out, state_dict=state_dict)
        kind = "full"
    meta = {"kind": kind, "base": base or getattr(config, "_name_or_path", None), "step": step,
            "dtype": str(dtype).removeprefix("torch.")}
    (out / META).write_text(json.dumps(meta, indent=1))
    return out


def load_weights(model: nn.Module, src_dir: str | Path) -> None:
    """Load weights written by `save_weights` into `model` (same finetune kind), in place."""
    from safetensors.torch import load_file

    src = Path(src_dir)
    kind = json.loads((src / META).read_text())["kind"] if (src / META).is_file() else None
    device = next(model.parameters()).device
    if is_lora(model):
        if kind not in ("lora", None) or not (src / _ADAPTER_FILE).is_file():
            raise ValueError(f"{src} holds no LoRA adapter (kind {kind!r}) but the model is a LoRA model")
        from peft import set_peft_model_state_dict

        try:
            result = set_peft_model_state_dict(model, load_file(src / _ADAPTER_FILE, device=str(device)),
                                               adapter_name=STUDENT_ADAPTER)
        except RuntimeError as err:  # torch reports shape mismatches this way
            raise WeightsMismatchError(f"adapter in {src} does not fit the model (trained with another model or "
                                       f"LoRA rank?): {str(err).splitlines()[1].strip()}") from err
        missing = [k for k in result.missing_keys if "lora_" in k and f".{STUDENT_ADAPTER}." in k]
        if result.unexpected_keys or missing:
            raise WeightsMismatchError(f"adapter in {src} does not match the model (trained with another model "
                                       f"or LoRA rank?): unexpected {result.unexpected_keys[:3]}, "
                                       f"missing {missing[:3]}")
        return
    if kind == "lora":
        raise ValueError(f"{src} holds a LoRA adapter but the model has none; call apply_lora first")
    state: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f, device=str(device)))
    if not state:
        raise FileNotFoundError(f"no safetensors weights in {src}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise WeightsMismatchError(f"weights in {src} do not fit the model (trained with another model?): "
                                   f"{str(err).splitlines()[1].strip()}") from err
    # save_pretrained drops tied duplicates (lm_head.weight): those may be missing, nothing else.
    loaded = {model.get_parameter(k).data_ptr() for k in state if _has_param(model, k)}
    missing = [k for k in result.missing_keys
               if not (_has_param(model, k) and model.get_parameter(k).data_ptr() in loaded)]
    if result.unexpected_keys or missing:
        raise WeightsMismatchError(f"weights in {src} do not match the model (trained with another model?): "
                                   f"unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}")


def _has_param(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
        return True
    except AttributeError:
        return False


def export_merged(source: nn.Module | str | Path, out_dir: str | Path, *, tokenizer: Any = None,
                  dtype: torch.dtype | None = None) -> Path:
    """Write a standalone transformers checkpoint (LoRA merged into the weights) to `out_dir`.

    Args:
        source: the trained model (a LoRA model is copied before merging, so it stays usable;
            that costs one model of memory), or a folder written by `save_weights`, or a run
            folder (the `save_weights` folder with the highest step under it is used). From a
            folder the base model is reloaded by the name recorded there.
        tokenizer: saved alongside; default: the base model's tokenizer when it can be found.
        dtype: dtype of the saved weights; default: the trained model's.
    Returns:
        `out_dir`, written through a temporary folder renamed into place (must not exist yet).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} exists and is not empty")
    if isinstance(source, nn.Module):
        model = source
        if is_lora(model):
            model = copy.deepcopy(model)
            for name in list(model.peft_config):
                if name != STUDENT_ADAPTER:
                    model.delete_adapter(name)
            model = model.merge_and_unload()
        base_name = getattr(model.config, "_name_or_path", None)
    else:
        model, base_name, tok = _load_for_export(Path(source))
        tokenizer = tokenizer if tokenizer is not None else tok
    if tokenizer is None and base_name:
        tokenizer = _try_tokenizer(base_name)
    if dtype is not None:
        model = model.to(dtype) if model is not source else copy.deepcopy(model).to(dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(work)
        if tokenizer is not None:
            tokenizer.save_pretrained(work)
        if out.exists():
            out.rmdir()
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _find_weights_dir(path: Path) -> Path:
    if (path / META).is_file():
        return path
    found = list(path.rglob(META))
    if not found:
        raise FileNotFoundError(f"no {META} under {path}; pass a folder written by save_weights")

    def key(meta_path: Path) -> tuple[int, float]:
        step = json.loads(meta_path.read_text()).get("step")
        return (step if step is not None else -1, meta_path.stat().st_mtime)

    return max(found, key=key).parent


def _load_for_export(path: Path) -> tuple[nn.Module, str | None, Any]:
    from transformers import AutoModelForCausalLM

    from unisd.config.schema import ModelConfig
    from unisd.models.loading import load_model_and_tokenizer

    src = _find_weights_dir(path)
    meta = json.loads((src / META).read_text())
    dtype = getattr(torch, meta.get("dtype") or "float32")
    if meta["kind"] == "full":
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
        tok = _try_tokenizer(meta["base"]) if meta.get("base") else None
        return model, meta.get("base"), tok
    if not meta.get("base"):
        raise ValueError(f"{src / META} does not name the base model; cannot rebuild it")
    from peft import PeftModel

    # Merge in fp32 on CPU, then cast: no rounding between the adapter product and the sum.
    base, tok = load_model_and_tokenizer(ModelConfig(name=meta["base"], dtype="float32"), device="cpu")
    with quiet_peft():
        merged = PeftModel.from_pretrained(base, src).merge_and_unload()
    return merged.to(dtype), meta["base"], tok


def _try_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from unisd.models.loading import resolve

    try:
        return AutoTokenizer.from_pretrained(resolve(name))
    except Exception:  # no tokenizer files there, or the base is unavailable: export weights only
        return None
