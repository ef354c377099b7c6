"""GPQA: graduate-level science questions, an out-of-distribution evaluation set only.

Reads `<data_dir>/gpqa/gpqa_<subset>.csv` with csv.DictReader (cells span lines, so never line by
line), or the gated hub `Idavidrein/gpqa` without a data_dir. The file has no A-D order: the
correct answer is a column, so options are always shuffled per item. There is no training split.
Canary rule: the authors ask that questions never appear in plain text online; nothing here (nor
in the tests) prints or copies question text, and errors name rows by number only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from unisd.tasks import _datafiles as files
from unisd.tasks.base import DataError, Example
from unisd.tasks.mcqa import MultipleChoiceTask, build_example

_OPTION_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
SUBSETS = ("diamond", "main", "extended", "experts")


class GPQATask(MultipleChoiceTask):
    """GPQA, split "test" only (all rows of the subset; the hub calls it "train").

    Args:
        subset: "diamond" (198 rows, the one available in shared/data), "main", "extended" or
            "experts".
        system: optional system message for every example.

    Ids are the `Record ID` column; meta has "domain" and "subdomain" for per-domain breakdowns.
    """

    name = "gpqa"
    splits = ("test",)

    def __init__(self, subset: str = "diamond", system: str | None = None):
        if subset not in SUBSETS:
            raise DataError(f"gpqa subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        self.subset = subset
        self.system = system

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        files.check_split(self.name, split, self.splits)
        if data_dir is not None:
            path = files.require_file(Path(data_dir) / "gpqa" / f"gpqa_{self.subset}.csv", "GPQA file")
            with open(path, encoding="utf-8", newline="") as f:
                rows = [(f"{path} data row {i + 1}", row) for i, row in enumerate(csv.DictReader(f))]
        else:
            hub = files.load_hub("Idavidrein/gpqa", f"gpqa_{self.subset}", "train",
                                 local_hint=f"gpqa/gpqa_{self.subset}.csv")
            rows = [(f"hub Idavidrein/gpqa gpqa_{self.subset} row {i}", row) for i, row in enumerate(hub)]
        examples = [self._example(where, row, index, seed) for index, (where, row) in enumerate(rows)]
        if not examples:
            raise DataError(f"GPQA subset {self.subset!r} has no rows")
        ids = [ex.id for ex in examples]
        if len(set(ids)) != len(ids):
            raise DataError(f"GPQA subset {self.subset!r}: duplicate Record IDs")
        return files.take(examples, limit)

    def _example(self, where: str, row: dict[str, Any], index: int, seed: int) -> Example:
        # Cells carry stray leading/trailing whitespace and newlines; strip so they render cleanly.
        options = [str(files.get_field(row, col, where)).strip() for col in _OPTION_COLUMNS]
        if any(not o for o in options):
            raise DataError(f"{where}: an answer column is empty")
        item_id = str(row.get("Record ID") or "").strip() or f"row-{index}"
        return build_example(
            item_id, str(files.get_field(row, "Question", where)), options, 0,
            seed=seed, shuffle=True, explanation=str(row.get("Explanation") or ""), system=self.system,
            meta={"domain": str(row.get("High-level domain") or "").strip(),
                  "subdomain": str(row.get("Subdomain") or "").strip()})
