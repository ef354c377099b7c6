"""Read a final answer out of a completion: numbers (GSM8K style), option letters, short free text.

Every reader comes in a strict variant (only an explicit answer marker counts) and a flexible one
(weaker cues are accepted too), so reports can tell format failures from wrong answers. Readers
return a canonical string, or None when nothing is found. Comparison lives in separate helpers
(`numbers_equal`, `normalize_text`).

It knows nothing about tasks or Examples, and does not handle code or tool calls.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

# --- numbers -------------------------------------------------------------------------------------

# A number as models write it: optional sign, optional '$', thousands commas only in groups of
# three ("1,080" is one number, "1,2,3" three), optional decimals. The lookbehind stops matches
# inside tokens ("H2O", the "4" of "3-4" read as -4, the "5" of "1.5"); the '(?!\d)' after the
# comma groups stops "12,5000" from reading as 12,500.
_NUMBER = r"(?P<sign>[-−+]?)\$?(?P<body>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(r"(?<![\w.])" + _NUMBER)
_NUMBER_FULL_RE = re.compile(r"\s*" + _NUMBER + r"\s*")
# '####' then the number right after it (markdown bold and spaces allowed in between).
_HASH_RE = re.compile(r"####[\s*]*" + _NUMBER)
# "the answer is 18", "final answer is: $18", "answer is **18**".
_ANSWER_IS_NUM_RE = re.compile(r"answer\s+is\s*[:：]?[\s*]*" + _NUMBER, re.IGNORECASE)


def _canonical(sign: str, body: str) -> str | None:
    """'-', '1,080.50' -> '-1080.5'. Integers lose any '.0'; '-0' becomes '0'."""
    try:
        value = Decimal(body.replace(",", ""))
    except InvalidOperation:
        return None
    if sign in ("-", "−"):
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _from_match(m: re.Match | None) -> str | None:
    return None if m is None else _canonical(m.group("sign"), m.group("body"))


def normalize_number(text: str) -> str | None:
    """The canonical form of a string that is one number ('$1,080.' -> '1080'), else None."""
    m = _NUMBER_FULL_RE.fullmatch(text.strip().strip("*").rstrip("."))
    return _from_match(m)


def extract_number_strict(text: str) -> str | None:
    """The number right after the last '####'; failing that, the number right after the last
    "answer is" (case-insensitive, so "The answer is 18", "final answer is: $18"). None otherwise.

    '####' wins over "answer is" wherever they appear, since it is the format the prompt asks for.
    """
    hits = list(_HASH_RE.finditer(text))
    if not hits:
        hits = list(_ANSWER_IS_NUM_RE.finditer(text))
    return _from_match(hits[-1]) if hits else None


def extract_number_flexible(text: str) -> str | None:
    """The strict answer when there is one, else the last number anywhere in the text.

    Strict first (the official cascade) so that flexible is never below strict: "#### 18" followed
    by a check line "18*2=36" still reads 18.
    """
    strict = extract_number_strict(text)
    if strict is not None:
        return strict
    hits = list(_NUMBER_RE.finditer(text))
    return _from_match(hits[-1]) if hits else None


def first_number(text: str) -> str | None:
    """The first number anywhere in the text, canonical, or None."""
    return _from_match(_NUMBER_RE.search(text))


def numbers_equal(a: str | None, b: str | None, tol: float = 1e-4) -> bool:
    """Whether two number strings are equal within `tol` (absolute). None or a non-number is never
    equal to anything."""
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    return abs(float(na) - float(nb)) <= tol


# --- option letters ------------------------------------------------------------------------------

# A line that starts with an answer marker: "Answer: C", "**Answer:** C", "Final answer: (c)".
_ANSWER_LINE_RE = re.compile(
    r"^[ \t>#*_-]*(?:final\s+|correct\s+)?answer[*_ \t]*[:：](?P<rest>.*)$", re.IGNORECASE | re.MULTILINE)
# "the answer is C", "the correct answer is option (B)".
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*[:：]?(?:\s*(?:option|choice)\b)?(?P<rest>.*)$",
                           re.IGNORECASE | re.MULTILINE)
# "answer:" anywhere in a line ("My final ANSWER: B"), and LaTeX "\boxed{B}".
_ANSWER_INLINE_RE = re.compile(r"answer[*_ \t]*[:：](?P<rest>.*)$", re.IGNORECASE | re.MULTILINE)
_BOXED_RE = re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*(?P<rest>[A-Za-z])\s*\}")
# A line that starts with a letter as an option label: "C. Paris", "C) Paris", "(C)", "C".
_LETTER_LINE_RE = re.compile(r"^[ \t*_]*(?:\((?P<a>[A-Z])\)|(?P<b>[A-Z])(?:[.:)]|[ \t*_]*$))",
                             re.MULTILINE)
# A capital letter standing alone (not part of a word, a number or a contraction like "I'm").
_STANDALONE_RE = re.compile(r"(?<![A-Za-z0-9'’])(?P<l>[A-Z])(?![A-Za-z0-9'’])")
# The start of an answer marker's remainder: optional markup/brackets, the letter, then no further
# word character ("Answer: Cats" is not C).
_LETTER_HEAD_RE = re.compile(r"[\s*_]*[(\[]?\s*(?P<l>[A-Za-z])(?![A-Za-z0-9])\s*[)\]]?[.:]?(?P<tail>.*)$")


def _valid_letters(n_options: int) -> str:
    if not 1 <= n_options <= 26:
        raise ValueError(f"n_options must be in [1, 26], got {n_options}")
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_options]


def _letter_at_start(rest: str, valid: str) -> str | None:
    """The option letter that opens `rest` (the text after an answer marker), or None.

    An uppercase letter may be followed by the option text ("C. Paris", "A dog" reads A). A
    lowercase one only counts alone ("answer: c", "(b)."), since "answer: a dog" is prose.
    """
    m = _LETTER_HEAD_RE.match(rest)
    if m is None:
        return None
    letter = m.group("l")
    if letter.upper() not in valid:
        return None
    if letter.islower() and m.group("tail").strip(" \t*_.)!") != "":
        return None
    return letter.upper()


def _last_marked(pattern: re.Pattern, text: str, valid: str) -> str | None:
    for m in reversed(list(pattern.finditer(text))):
        letter = _letter_at_start(m.group("rest"), valid)
        if letter is not None:
            return letter
    return None


def extract_letter_strict(text: str, n_options: int) -> str | None:
    """The option letter given in the last line starting with "Answer:" (case-insensitive, markdown
    and brackets allowed: "**Answer:** (C)"); failing that, in the last "the answer is X". The
    letter must be one of the first `n_options`. Returns it uppercase, or None."""
    valid = _valid_letters(n_options)
    return _last_marked(_ANSWER_LINE_RE, text, valid) or _last_marked(_ANSWER_IS_RE, text, valid)


def extract_letter_flexible(text: str, n_options: int) -> str | None:
    """The spec's cascade, first hit wins: (1) a line starting "Answer:", (2) "the answer is X",
    (3) "ANSWER:"/"answer:" anywhere in a line, or \\boxed{X}, (4) the last line that starts with a
    letter label ("C. ...", "(C)", "C)"), (5) the last standalone valid capital letter.
    (1)-(2) are `extract_letter_strict`, so flexible is never below strict."""
    valid = _valid_letters(n_options)
    found = extract_letter_strict(text, n_options)
    if found is None:
        found = _last_marked(_ANSWER_INLINE_RE, text, valid) or _last_marked(_BOXED_RE, text, valid)
    if found is None:
        for m in reversed(list(_LETTER_LINE_RE.finditer(text))):
            letter = m.group("a") or m.group("b")
            if letter in valid:
                found = letter
                break
    if found is None:
        for m in reversed(list(_STANDALONE_RE.finditer(text))):
            if m.group("l") in valid:
                found = m.group("l")
                break
    return found


# --- short free text -----------------------------------------------------------------------------

_MARKED_TEXT_RES = (
    re.compile(r"####(?P<rest>.*)$", re.MULTILINE),
    _ANSWER_LINE_RE,
    re.compile(r"answer\s+is\s*[:：]?(?P<rest>.*)$", re.IGNORECASE | re.MULTILINE),
)


def extract_text_strict(text: str) -> str | None:
    """A free-text answer: the rest of the line after the last '####', else after the last line
    starting "Answer:", else after the last "the answer is"; when the completion has no marker but
    is a single non-empty line, that line (a bare "Paris" is an explicit answer). None otherwise."""
    for pattern in _MARKED_TEXT_RES:
        hits = [m.group("rest").strip() for m in pattern.finditer(text)]
        hits = [h for h in hits if h.strip("*_ ")]
        if hits:
            return hits[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else None


def extract_text_flexible(text: str) -> str | None:
    """The strict answer, else the last non-empty line. None only for an empty completion."""
    strict = extract_text_strict(text)
    if strict is not None:
        return strict
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def normalize_text(text: str) -> str:
    """Case-, space- and markup-insensitive form for exact match: NFKC, casefold, markdown emphasis
    and surrounding quotes removed, whitespace collapsed, trailing sentence punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    text = text.strip("*_`").strip()
    text = text.strip("\"'“”‘’").strip()
    text = re.sub(r"\s+", " ", text)
    return text.rstrip(".!").strip()


def texts_equal(a: str | None, b: str | None, tol: float = 1e-4) -> bool:
    """Exact match after `normalize_text`; when both sides are numbers, numeric equality within
    `tol` instead ("1,000" == "1000.0")."""
    if a is None or b is None:
        return False
    if normalize_number(a) is not None and normalize_number(b) is not None:
        return numbers_equal(a, b, tol)
    return normalize_text(a) == normalize_text(b)
