"""Shared fixtures: a tiny random model saved as an ordinary local model folder, so end-to-end
tests go through the same loading path as real models (no mocks), in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("UNISD_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from unisd.models.tiny import tiny_model

    model, tokenizer = tiny_model("llama", seed=0)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
