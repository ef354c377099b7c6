"""Turn `model.name` into a local folder of dense safetensors, then load model and tokenizer.

A name is one of: a packaged alias (`unisd models`), a path to a .gguf file, a local folder
holding a transformers checkpoint, or a hub id ("org/name"). GGUF sources are dequantized once by
transformers' GGUF loader (about 20 s for SmolLM2, 60 s for Qwen-0.5B on 2 CPU cores) and saved as
bf16 safetensors under `cache_dir()/<alias>-<sha256[:16]>/`, keyed by the GGUF's sha256; later
loads read that folder (about 2 s). A conversion is written to a temporary folder and renamed into
place; the marker file, written last, lists the sha256 and the files with their sizes, so a
partial or damaged folder is detected and rebuilt.

Not here: LoRA (`models.lora`), teacher weights (`models.teacher`), saving runs (`models.export`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from unisd.models import registry

if TYPE_CHECKING:
    from unisd.config.schema import ModelConfig

CACHE_FORMAT = 1
"""Bump when the conversion changes (e.g. what gets tied), so old cache folders are rebuilt."""
MARKER = "unisd-converted.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(OSError):
    """A model name could not be turned into weights (offline hub id, folder without weights...)."""


def cache_dir() -> Path:
    """Folder of converted models: `$UNISD_CACHE/models`, else `~/.cache/unisd/models`
    (honouring XDG_CACHE_HOME)."""
    root = os.environ.get("UNISD_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "unisd"
    return Path(root).expanduser() / "models"


def resolve_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """ModelConfig.dtype -> torch dtype; "auto" is bf16 on CUDA and fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        allowed = ", ".join(map(repr, ["auto", *_DTYPES]))
        raise ValueError(f"model.dtype: got {dtype!r}; allowed: {allowed}") from None


# ---------------------------------------------------------------------------------------------
# name -> folder


def resolve(name: str) -> Path:
    """Local folder with config.json, safetensors and tokenizer files for `name`.

    Aliases and .gguf files are converted on first use (see the module docstring); hub ids are
    fetched with huggingface_hub (the hub cache is reused offline).

    Raises:
        UnknownNameError (a KeyError): an alias-like name (no '/', not an existing path) that is not
            a packaged alias; the message lists the aliases.
        ModuleNotFoundError: the alias's packages are not installed (the message has the pip command).
        FileNotFoundError: a path-like name that does not exist.
        ModelLoadError: a hub id that cannot be fetched, or a folder without a checkpoint.
    """
    entry = registry.MODELS.get(name.lower())
    if entry is not None:
        return _resolve_alias(entry)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model.name {name!r} is a file but not a .gguf file")
        return _resolve_gguf_file(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {path} has no config.json (not a transformers checkpoint)")
        return path
    if name.startswith(("/", ".", "~")) or name.endswith(".gguf") or "\\" in name:
        raise FileNotFoundError(f"model path {name!r} does not exist")
    if "/" not in name:
        registry.get(name)  # raises UnknownNameError listing the aliases
    return _resolve_hub(name)


def _resolve_alias(entry: registry.PackagedModel) -> Path:
    target = cache_dir() / f"{entry.alias}-{entry.gguf_sha256[:16]}"
    if _is_complete(target, entry.gguf_sha256):
        return target
    return _build_cache(target, entry.gguf_sha256, lambda scratch: registry.locate_gguf(entry.alias, scratch),
                        entry=entry, label=entry.alias)


def _resolve_gguf_file(path: Path) -> Path:
    sha = registry._file_sha256(path)
    entry = registry.by_sha256(sha)  # a packaged file passed by path gets the alias's fixes
    stem = entry.alias if entry else re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.") or "model"
    target = cache_dir() / f"{stem}-{sha[:16]}"
    if _is_complete(target, sha):
        return target
    return _build_cache(target, sha, lambda scratch: path, entry=entry, label=path.name)


def _resolve_hub(name: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated...: one clear message
        raise ModelLoadError(
            f"could not load model {name!r} from the Hugging Face hub ({type(err).__name__}: {err}).\n"
            f"Offline? Use a packaged alias ({', '.join(registry.MODELS)}; see `unisd models`), "
            "a local folder with safetensors, or a .gguf file.") from err
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"hub model {name!r} has no safetensors weights (only safetensors are read)")
    return folder


# ---------------------------------------------------------------------------------------------
# GGUF -> cached safetensors folder


def _is_complete(folder: Path, sha256: str) -> bool:
    """True when `folder` holds a finished conversion of the GGUF with this sha256."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker.get("sha256") != sha256 or marker.get("format") != CACHE_FORMAT:
            return False
        return all((folder / f).is_file() and (folder / f).stat().st_size == size
                   for f, size in marker["files"].items())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False


def _build_cache(target: Path, sha256: str, get_gguf: Callable[[Path], Path], *,
                 entry: registry.PackagedModel | None, label: str) -> Path:
    """Convert into a temporary sibling of `target`, write the marker last, rename into place."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        console.print(f"[yellow]cache folder {target} is incomplete or stale; rebuilding it[/]")
        shutil.rmtree(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        out = work / "model"
        start = time.perf_counter()
        with console.status(f"Converting {label} (GGUF -> bf16 safetensors, first use only) into {target}"):
            gguf = get_gguf(work / "gguf")
            got = registry._file_sha256(gguf)
            if got != sha256:
                raise ModelLoadError(f"{gguf}: sha256 {got} does not match the expected {sha256}")
            _convert_gguf(gguf, out, entry=entry)
        seconds = time.perf_counter() - start
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        marker = {"format": CACHE_FORMAT, "sha256": sha256, "source": label, "gguf": gguf.name,
                  "alias": entry.alias if entry else None, "files": files,
                  "transformers": _transformers_version(), "seconds": round(seconds, 1)}
        (out / MARKER).write_text(json.dumps(marker, indent=1))  # last: its presence means "complete"
        try:
            os.rename(out, target)
        except OSError:
            if not _is_complete(target, sha256):  # another process may have won the race
                raise
        console.print(f"Converted {label} in {seconds:.1f} s; cached at {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path, *, entry: registry.PackagedModel | None) -> None:
    """Dequantize `gguf` with transformers and save a dense bf16 checkpoint + tokenizer in `out`."""
    from packaging.version import Version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = _transformers_version()
    if entry is not None and entry.min_transformers and Version(version) < Version(entry.min_transformers):
        raise ModelLoadError(
            f"{entry.alias}: transformers {version} builds this model's tokenizer wrongly from GGUF "
            f"(known bad: 5.17); upgrade to transformers>={entry.min_transformers}, or convert on a "
            "machine that has it and copy the cache folder")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if entry is not None and entry.tie_embeddings:
        tie_embeddings(model)
    # transformers 5.24 refuses to save a GGUF-loaded model ("quantized with gguf and is not
    # serializable") although the weights are already dense: drop the quantizer first (models.md, gotcha 1).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def tie_embeddings(model: torch.nn.Module) -> None:
    """Tie input and output embeddings to the output matrix's values (the Qwen GGUF stores both,
    quantized differently; tying changes PPL by 0.1% and gives back the upstream 494M params)."""
    out_emb = model.get_output_embeddings().weight
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(out_emb)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    if model.get_input_embeddings().weight is not model.get_output_embeddings().weight:
        raise RuntimeError("tie_embeddings: transformers did not tie the embeddings")


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ---------------------------------------------------------------------------------------------
# loading


def load_model_and_tokenizer(cfg: ModelConfig, *, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Load `cfg.name` as (AutoModelForCausalLM, tokenizer) on `device`, in eval mode, without LoRA.

    The tokenizer has a pad token (eos when the model defines none) and pads on the left, as
    batched generation needs. Gradient checkpointing is switched on when the config asks for it
    (non-reentrant, so it also works with a frozen base under LoRA).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve(cfg.name)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg.dtype, device)}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    from transformers.utils import logging as hf_logging

    # A dense local folder loads in about a second: transformers' per-tensor progress bar is noise.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(device)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prepare_tokenizer(tokenizer)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and tokenizer.model_max_length > max_pos:  # GGUF tokenizers say 1e30
        tokenizer.model_max_length = max_pos
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.eval()
    return model, tokenizer


def enable_gradient_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing (works with a frozen base under LoRA, no
    enable_input_require_grads needed). transformers 5.24 renamed the method; 5.17 has the old one."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Pad token (eos if missing) and left padding, in place; returns the tokenizer."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


# ---------------------------------------------------------------------------------------------
# `unisd models`


@dataclass(frozen=True)
class ModelInfo:
    alias: str
    installed: bool
    """All packages findable (nothing imported)."""
    package: str
    """pip command that installs it (--no-deps)."""
    size: str
    """GGUF download size, human readable."""
    params: str
    """Parameter count as loaded."""
    cached: bool
    """Already converted in `cache_dir()` (loads in seconds)."""
    license: str
    description: str


def list_models() -> list[ModelInfo]:
    """One row per packaged alias, for `unisd models`."""
    rows = []
    for alias, entry in registry.MODELS.items():
        cached = _is_complete(cache_dir() / f"{alias}-{entry.gguf_sha256[:16]}", entry.gguf_sha256)
        rows.append(ModelInfo(alias=alias, installed=registry.is_installed(alias),
                              package=registry.install_command(alias),
                              size=f"{entry.gguf_bytes / 2**20:.0f} MiB", params=entry.params, cached=cached,
                              license=entry.license, description=entry.description))
    return rows
