"""Cache helpers shared by the context builders: content keys, atomic writes, checked reads.

A cache file stores the key it was built for. A file that does not parse, lacks a field or was
built for another key is treated as absent (and rebuilt by the caller), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Iterable

from unisd.fileio import atomic_write_bytes
from unisd.tasks.base import Example

log = logging.getLogger(__name__)


def content_key(obj: Any) -> str:
    """sha256 hex digest of `obj` as canonical JSON (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def examples_fingerprint(examples: Iterable[Example]) -> str:
    """Hash of every field of the examples that can shape generated text, in the given order."""
    return content_key([[e.id, e.prompt, e.answer, e.demonstration, list(e.choices)] for e in examples])


def write_json_cache(path: str | os.PathLike, key: str, payload: dict[str, Any]) -> None:
    """Store `payload` under `key` at `path`, atomically."""
    text = json.dumps({"key": key, **payload}, ensure_ascii=False, indent=1)
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_cache(path: str | os.PathLike | None, key: str, fields: tuple[str, ...]) -> dict | None:
    """The cached payload at `path` if it parses, was built for `key` and has every field in
    `fields`; otherwise None (with a warning naming the problem when the file exists)."""
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        log.warning("cache %s was built for other inputs (key mismatch); rebuilding it", path)
        return None
    absent = [f for f in fields if f not in data]
    if absent:
        log.warning("cache %s lacks %s; rebuilding it", path, ", ".join(absent))
        return None
    return data
