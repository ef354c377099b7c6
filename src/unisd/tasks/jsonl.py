"""Users' own data as JSON lines: multiple-choice or free-form rows, with configurable field names.

A row with a choices list is multiple choice: options rendered 'A. ...', the answer (a letter, a
0-based index or the option text) normalised to the letter, scored by letter extraction. Any other
row is free-form: its prompt is used as written and scored by exact match after normalisation,
numerically when both sides are numbers. Every row becomes an Example or an error naming the
file, line and field: nothing is dropped or guessed silently. No hub access.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from unisd.tasks import _datafiles as files
from unisd.tasks.base import DataError, Example, Score, letters
from unisd.tasks.extract import (extract_number_flexible, extract_number_strict, extract_text_flexible,
                                 extract_text_strict, first_number, normalize_number, numbers_equal,
                                 texts_equal)
from unisd.tasks.mcqa import build_example, score_letter

_LETTER_RE = re.compile(r"\(?([A-Za-z])[).]?")


def resolve_choice_answer(answer: Any, options: list[str], where: str) -> int:
    """The gold option's index from a letter ("B", "b", "(B)"), a 0-based int index, or the option
    text. A string that reads both as a letter and as a different option's text is ambiguous and
    an error rather than a guess."""
    n = len(options)
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise DataError(f"{where}: answer must be a letter, a 0-based index or the option text, "
                        f"got {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < n:
            raise DataError(f"{where}: answer index {answer} is outside the {n} choices "
                            f"(indices are 0-based)")
        return answer
    text = answer.strip()
    by_text = [i for i, o in enumerate(options) if o.strip() == text]
    m = _LETTER_RE.fullmatch(text)
    by_letter = ord(m.group(1).upper()) - ord("A") if m else None
    if by_letter is not None and by_letter >= n:
        by_letter = None
    if by_text and by_letter is not None and by_text[0] != by_letter:
        raise DataError(f"{where}: answer {answer!r} is both letter {text.upper()} and the text of option "
                        f"{letters(n)[by_text[0]]}; give the 0-based index instead")
    if by_text:
        return by_text[0]
    if by_letter is not None:
        return by_letter
    raise DataError(f"{where}: answer {answer!r} is not a letter among {', '.join(letters(n))}, "
                    f"an index, or the text of one of the {n} choices")


class JSONLTask:
    """Examples from JSON-lines files.

    Args:
        path: where the rows are. Contains "{split}" ("data/{split}.jsonl"), or is a directory
            holding "<split>.jsonl", or is one file (then it is the only split, "train").
            Relative paths resolve against load's `data_dir` when one is given.
        prompt_field, answer_field: required fields (a null counts as missing).
        demonstration_field: optional; the worked answer the teacher sees. Free-form: used as
            written ("" when absent). Multiple choice: it is the explanation, and the gold letter
            line is appended ('Reasoning: ...\\nAnswer: X'; just 'Answer: X' when absent).
        choices_field: optional list of option texts; present and non-null means multiple choice.
        id_field: optional; defaults to "<split>-<line number>". Ids must be unique in a split.
        system: optional system message for every example.
        splits: {split name: path} instead of `path` (each path resolved like `path`).
        shuffle_options: shuffle multiple-choice options per item (seeded); off by default, so
            the user's order is kept.
    """

    name = "jsonl"

    def __init__(self, path: str | None = None, prompt_field: str = "prompt", answer_field: str = "answer",
                 demonstration_field: str = "demonstration", choices_field: str = "choices",
                 id_field: str = "id", system: str | None = None, splits: Mapping[str, str] | None = None,
                 shuffle_options: bool = False):
        self.path = path
        self.split_paths = dict(splits or {})
        self.prompt_field, self.answer_field = prompt_field, answer_field
        self.demonstration_field, self.choices_field = demonstration_field, choices_field
        self.id_field = id_field
        self.system = system
        self.shuffle_options = shuffle_options
        if self.split_paths:
            self.splits: tuple[str, ...] = tuple(self.split_paths)
        elif path is None or "{split}" in path or not path.endswith((".jsonl", ".json", ".jl")):
            self.splits = ("train", "validation", "test")
        else:
            self.splits = ("train",)

    def file_for(self, split: str, data_dir: str | None = None) -> Path:
        """The file that holds `split`."""
        if self.path is None and not self.split_paths:
            # Checked here, not in __init__, so that `unisd tasks` can list the task without options.
            raise DataError("the jsonl task needs task_args.path (a file, a directory, or a pattern with "
                            "'{split}') or task_args.splits ({split: path})")
        if self.splits == ("train",) and split != "train":
            raise DataError(f"jsonl: {self.path} is one file, which serves only split 'train'; for a "
                            f"{split!r} split put '{{split}}' in the path, point it at a directory of "
                            f"<split>.jsonl files, or give task_args.splits")
        split = files.check_split(self.name, split, self.splits)
        raw = self.split_paths[split] if self.split_paths else self.path.replace("{split}", split)
        path = Path(raw).expanduser()
        if data_dir is not None and not path.is_absolute():
            path = Path(data_dir) / path
        if not self.split_paths and "{split}" not in self.path and path.is_dir():
            path = path / f"{split}.jsonl"
        return files.require_file(path, f"jsonl data for split {split!r}")

    def load(self, split: str, *, data_dir: str | None = None, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        path = self.file_for(split, data_dir)
        examples, seen = [], {}
        for lineno, row in files.read_jsonl(path):
            where = f"{path}:{lineno}"
            ex = self._example(row, where, f"{split}-{lineno}", seed)
            if ex.id in seen:
                raise DataError(f"{where}: id {ex.id!r} already used at line {seen[ex.id]}")
            seen[ex.id] = lineno
            examples.append(ex)
        if not examples:
            raise DataError(f"{path}: split {split!r} has no rows")
        return files.take(examples, limit)

    def _example(self, row: dict[str, Any], where: str, default_id: str, seed: int) -> Example:
        prompt = files.get_field(row, self.prompt_field, where)
        answer = files.get_field(row, self.answer_field, where)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field {self.prompt_field!r} must be a non-empty string")
        item_id = str(row[self.id_field]) if row.get(self.id_field) is not None else default_id
        demonstration = row.get(self.demonstration_field)
        demonstration = "" if demonstration is None else str(demonstration)
        options = row.get(self.choices_field)
        if options is None:
            return Example(id=item_id, prompt=prompt, answer=str(answer).strip(), demonstration=demonstration,
                           system=self.system, meta={"format": "free", "source": where})
        if not isinstance(options, list) or len(options) < 2 or len(options) > 26 \
                or not all(isinstance(o, (str, int, float)) for o in options):
            raise DataError(f"{where}: field {self.choices_field!r} must be a list of 2-26 option texts")
        options = [str(o).strip() for o in options]
        gold = resolve_choice_answer(answer, options, where)
        return build_example(item_id, prompt, options, gold, seed=seed, shuffle=self.shuffle_options,
                             explanation=demonstration, system=self.system,
                             meta={"format": "choice", "source": where})

    def score(self, example: Example, completion: str) -> Score:
        """Multiple choice: `mcqa.score_letter`. Free-form: strict = the marked answer ('####',
        'Answer:', 'the answer is', or a one-line completion), flexible = that or the last line;
        when the gold is a number, numbers are read instead (flexible: last number)."""
        if example.choices:
            return score_letter(example, completion)
        if normalize_number(example.answer) is not None:
            strict = extract_number_strict(completion)
            if strict is None:
                # "Answer: 18 apples" or a bare one-line "18": the first number of the marked answer.
                marked = extract_text_strict(completion)
                strict = None if marked is None else first_number(marked)
            flexible = strict if strict is not None else extract_number_flexible(completion)
            s = float(numbers_equal(strict, example.answer))
            return Score(correct=s, extracted=strict,
                         details={"strict": s, "flexible": float(numbers_equal(flexible, example.answer))})
        strict = extract_text_strict(completion)
        flexible = extract_text_flexible(completion)
        s = float(texts_equal(strict, example.answer))
        return Score(correct=s, extracted=strict,
                     details={"strict": s, "flexible": float(texts_equal(flexible, example.answer))})
