"""Atomic file writes shared by every package: run-directory JSON, eval results, caches.

A file is written to a unique temporary name in the same folder, flushed to disk and renamed
into place, so a reader (or a resumed run) never sees a half-written file: a crash leaves the
old file or none. Imports nothing of ours.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented JSON (non-JSON values such as paths written with str), atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode("utf-8"))
