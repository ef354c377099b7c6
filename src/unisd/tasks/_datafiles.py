"""File and hub reading shared by the task loaders, with errors that say what and where.

Every failure is a `DataError` naming the path (and line) or the hub dataset tried. The hub is
reached only through `datasets`, imported when first needed. Nothing here knows a task's fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from unisd.tasks.base import DataError


def check_split(task: str, split: str, splits: Iterable[str],
                aliases: Mapping[str, str] | None = None) -> str:
    """The canonical name of `split`, or DataError listing the valid ones (DataError, like a
    missing file, so the CLI reports it as a one-line message)."""
    aliases = dict(aliases or {})
    split = aliases.get(split, split)
    valid = tuple(splits)
    if split not in valid:
        extra = f" (aliases: {', '.join(f'{a}={b}' for a, b in aliases.items())})" if aliases else ""
        raise DataError(f"task {task!r} has no split {split!r}; valid splits: {', '.join(valid)}{extra}")
    return split


def require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    return path


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line. A line that is not a JSON object is an error
    naming `file:line`; blank lines carry no row, so skipping them drops nothing."""
    rows = []
    # utf-8-sig: tolerate a BOM that some editors write on the first line.
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def get_field(row: Mapping[str, Any], name: str, where: str) -> Any:
    """row[name], or DataError naming the field and where the row is; a null counts as missing."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object with field {name!r}, got {type(row).__name__}")
    value = row.get(name)
    if value is None:
        raise DataError(f"{where}: missing field {name!r} (fields present: {', '.join(map(str, row))})")
    return value


def load_hub(path: str, name: str | None, split: str, *, local_hint: str) -> list[dict[str, Any]]:
    """Rows of a hub dataset through `datasets.load_dataset`, imported only now. Any failure (not
    installed, offline, gated) becomes a DataError naming the hub dataset tried and the local
    layout that `--data-dir` should hold instead."""
    tried = f"hub dataset {path!r}" + (f" (config {name!r})" if name else "") + f", split {split!r}"
    advice = f"pass --data-dir with a folder holding {local_hint} (the layout of shared/data)"
    try:
        import datasets
    except ImportError:
        raise DataError(f"no data_dir given, and the `datasets` package is not installed to fetch the "
                        f"{tried}; {advice}") from None
    try:
        ds = datasets.load_dataset(path, name, split=split) if name else \
            datasets.load_dataset(path, split=split)
    except Exception as e:  # noqa: BLE001 - offline, gated, renamed: all mean "use local files"
        raise DataError(f"no data_dir given, and loading the {tried} failed ({type(e).__name__}: {e}); "
                        f"{advice}") from None
    return [dict(row) for row in ds]


def take(items: Sequence, limit: int | None) -> list:
    """The first `limit` items (all when None). Row order is never shuffled."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    return list(items) if limit is None else list(items[:limit])
