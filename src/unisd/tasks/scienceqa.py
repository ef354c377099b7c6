"""ScienceQA, text-only questions: the hint as context, the gold solution as demonstration.

Reads `<data_dir>/scienceqa/problems.json` (pid -> {question, choices, answer (index), hint,
image, lecture, solution, split, ...}) and, when present, `pid_splits.json` for split membership
and order; without a data_dir, the hub's `derek-thomas/ScienceQA`. Questions with an image are
skipped by design (text-only models; `text_only=False` keeps them, image unseen). Unlike the
official code, the `hint` is used as context: it often holds the passage the question needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unisd.tasks import _datafiles as files
from unisd.tasks.base import DataError, Example
from unisd.tasks.mcqa import MultipleChoiceTask, build_example

_HUB_SPLIT = {"train": "train", "val": "validation", "test": "test"}
_MISSING_HINT = ("problems.json (about 4 MiB or more, from lupantech/ScienceQA data/scienceqa/) is not in "
                 "shared/data; put it there, or give no data_dir to use the hub's derek-thomas/ScienceQA")


def _has_image(row: dict[str, Any]) -> bool:
    # Locally a file name or null; on the hub a PIL image or None. Compared to None/"" explicitly
    # rather than by truthiness, which an image object need not define.
    return row.get("image") not in (None, "")


class ScienceQATask(MultipleChoiceTask):
    """ScienceQA, splits "train", "val" ("validation" accepted too) and "test" (the reported one).

    Args:
        include_lecture: add the `lecture` text to the context after the hint (the official code
            uses the lecture and drops the hint; here the hint is always used).
        text_only: keep only questions without an image (the default, as in the paper).
        shuffle_options: shuffle options per item (seeded by load's `seed` and the pid).
        system: optional system message for every example.

    Ids are the pids locally, "<split>-<row index>" from the hub (the hub has no pid column).
    meta has "subject", "topic", "grade".
    """

    name = "scienceqa"
    splits = ("train", "val", "test")

    def __init__(self, include_lecture: bool = False, text_only: bool = True, shuffle_options: bool = True,
                 system: str | None = None):
        self.include_lecture = include_lecture
        self.text_only = text_only
        self.shuffle_options = shuffle_options
        self.system = system

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        split = files.check_split(self.name, split, self.splits, aliases={"validation": "val"})
        if data_dir is not None:
            rows = self._local_rows(Path(data_dir) / "scienceqa", split)
        else:
            hub = files.load_hub("derek-thomas/ScienceQA", None, _HUB_SPLIT[split],
                                 local_hint="scienceqa/problems.json and scienceqa/pid_splits.json")
            rows = [(f"{split}-{i}", f"hub derek-thomas/ScienceQA {split} row {i}", row)
                    for i, row in enumerate(hub)]
        examples = [self._example(pid, where, row, seed) for pid, where, row in rows
                    if not (self.text_only and _has_image(row))]
        if not examples:
            kind = "text-only " if self.text_only else ""
            raise DataError(f"ScienceQA split {split!r} has no {kind}questions")
        return files.take(examples, limit)

    def _local_rows(self, root: Path, split: str) -> list[tuple[str, str, dict[str, Any]]]:
        ppath = files.require_file(root / "problems.json", "ScienceQA problems file", _MISSING_HINT)
        problems = files.read_json(ppath)
        if not isinstance(problems, dict):
            raise DataError(f"{ppath}: expected an object mapping pid -> problem")
        spath = root / "pid_splits.json"
        if spath.is_file():
            pid_splits = files.read_json(spath)
            if not isinstance(pid_splits, dict) or split not in pid_splits:
                raise DataError(f"{spath}: no {split!r} list of pids")
            pids = [str(p) for p in pid_splits[split]]
            missing = [p for p in pids if p not in problems]
            if missing:
                raise DataError(f"{spath}: {len(missing)} pids of split {split!r} are not in {ppath}, "
                                f"e.g. {missing[:3]}")
        else:
            # Without the split file, each problem's own `split` field decides (same assignment).
            pids = [pid for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == split]
        return [(pid, f"{ppath} pid {pid}", problems[pid]) for pid in pids]

    def _example(self, item_id: str, where: str, row: dict[str, Any], seed: int) -> Example:
        options = files.get_field(row, "choices", where)
        answer = files.get_field(row, "answer", where)
        if not isinstance(options, list) or len(options) < 2:
            raise DataError(f"{where}: 'choices' must be a list of at least 2 options")
        if not isinstance(answer, int) or not 0 <= answer < len(options):
            raise DataError(f"{where}: 'answer' must be an index into {len(options)} choices, got {answer!r}")
        context = [str(row.get("hint") or "").strip()]
        if self.include_lecture:
            context.append(str(row.get("lecture") or "").strip())
        return build_example(
            item_id, str(files.get_field(row, "question", where)), [str(o) for o in options], answer,
            seed=seed, shuffle=self.shuffle_options, context="\n\n".join(c for c in context if c),
            explanation=str(row.get("solution") or ""), system=self.system,
            meta={k: str(row.get(k) or "") for k in ("subject", "topic", "grade")})
