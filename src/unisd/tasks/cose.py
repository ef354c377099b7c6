"""CoS-E v1.11: CommonsenseQA questions with human explanations as the teacher's demonstration.

Locally it joins `<data_dir>/commonsenseqa/{train,dev}_rand_split.jsonl` (questions, 5 labelled
choices, `answerKey`) with `<data_dir>/cos_e/v1.11/cose_{train,dev}_v1.11.jsonl` on `id`; the
demonstration is the open-ended explanation ("abstractive" on the hub) plus the gold letter.
Without a data_dir it reads the hub's `Salesforce/cos_e` v1.11. The `_processed` explanation
files and CommonsenseQA's unlabelled test split are not used.
"""

from __future__ import annotations

from pathlib import Path

from unisd.tasks import _datafiles as files
from unisd.tasks.base import DataError, Example
from unisd.tasks.mcqa import MultipleChoiceTask, build_example

_FILE_SPLIT = {"train": "train", "validation": "dev"}


class CoSETask(MultipleChoiceTask):
    """CoS-E, splits "train" (9,741) and "validation" (1,221, the published dev). "dev" and "test"
    are accepted as aliases of "validation": CommonsenseQA's test labels are hidden, so the dev set
    is the reported evaluation set (as in the paper), and eval's default split "test" lands there.
    Ids are the CommonsenseQA ids.

    Args:
        shuffle_options: shuffle the 5 options per item (seeded by load's `seed` and the id), as
            the official code does; False keeps the published A-E order.
        system: optional system message for every example.
    """

    name = "cose"
    splits = ("train", "validation")

    def __init__(self, shuffle_options: bool = True, system: str | None = None):
        self.shuffle_options = shuffle_options
        self.system = system

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        split = files.check_split(self.name, split, self.splits,
                                  aliases={"dev": "validation", "test": "validation"})
        if data_dir is None:
            examples = self._load_hub(split, seed)
        else:
            examples = self._load_local(Path(data_dir), split, seed)
        if not examples:
            raise DataError(f"CoS-E split {split!r} is empty")
        return files.take(examples, limit)

    def _load_local(self, root: Path, split: str, seed: int) -> list[Example]:
        name = _FILE_SPLIT[split]
        qpath = files.require_file(root / "commonsenseqa" / f"{name}_rand_split.jsonl", "CommonsenseQA file")
        epath = files.require_file(root / "cos_e" / "v1.11" / f"cose_{name}_v1.11.jsonl", "CoS-E file")
        explanations = {}
        for lineno, row in files.read_jsonl(epath):
            where = f"{epath}:{lineno}"
            expl = files.get_field(row, "explanation", where)
            explanations[str(files.get_field(row, "id", where))] = str(
                files.get_field(expl, "open-ended", where + " (explanation)"))
        examples = []
        for lineno, row in files.read_jsonl(qpath):
            where = f"{qpath}:{lineno}"
            item_id = str(files.get_field(row, "id", where))
            question = files.get_field(row, "question", where)
            choices = files.get_field(question, "choices", where + " (question)")
            labels = [str(files.get_field(c, "label", where + " (choice)")) for c in choices]
            key = str(files.get_field(row, "answerKey", where))
            if key not in labels:
                raise DataError(f"{where}: answerKey {key!r} is not among the choice labels {labels}")
            if item_id not in explanations:
                # The real join is complete (9,741/9,741 and 1,221/1,221): a gap means wrong files.
                raise DataError(f"{where}: id {item_id} has no explanation in {epath}")
            examples.append(build_example(
                item_id, str(files.get_field(question, "stem", where + " (question)")),
                [str(files.get_field(c, "text", where + " (choice)")) for c in choices],
                labels.index(key), seed=seed, shuffle=self.shuffle_options,
                explanation=explanations[item_id], system=self.system,
                meta={"concept": question.get("question_concept", "")}))
        return examples

    def _load_hub(self, split: str, seed: int) -> list[Example]:
        rows = files.load_hub(
            "Salesforce/cos_e", "v1.11", split,
            local_hint="commonsenseqa/*_rand_split.jsonl and cos_e/v1.11/cose_*_v1.11.jsonl")
        examples = []
        for i, row in enumerate(rows):
            where = f"hub Salesforce/cos_e v1.11 {split} row {i}"
            options = [str(c) for c in files.get_field(row, "choices", where)]
            answer = str(files.get_field(row, "answer", where))
            if answer not in options:
                raise DataError(f"{where}: answer {answer!r} is not one of the choices")
            examples.append(build_example(
                str(files.get_field(row, "id", where)), str(files.get_field(row, "question", where)),
                options, options.index(answer), seed=seed, shuffle=self.shuffle_options,
                explanation=str(row.get("abstractive_explanation") or ""), system=self.system))
        return examples
