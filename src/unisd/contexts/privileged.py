"""The primary teacher context: the student prompt plus privileged information (SDFT, OPSD).

Returns the teacher's user-turn text only; chat templates and tokenization are the training
loop's job. The negative (bad) teacher of the contrastive term calls the same function with the
negative demonstration, so the two teacher prompts differ only inside the demonstration slot
(spec §7.2 item 9: the reference code used two templates, so part of the contrast was format).
"""

from __future__ import annotations

import re

from unisd.tasks.base import Example

CONTEXTS = ("demonstration", "answer", "none")
"""Values of `TeacherConfig.context`."""

ANSWER_PREFIX = "The correct final answer is: "
"""What fills the demonstration slot under context="answer" (OPSD): this prefix + the answer."""

_PLACEHOLDER = re.compile(r"\{(prompt|demonstration)\}")


def fill_template(template: str, *, prompt: str, demonstration: str) -> str:
    """Replace {prompt} and {demonstration} in one pass.

    Not `str.format`: prompts and code demonstrations contain braces, and a value is never
    scanned again for placeholders (a prompt quoting "{demonstration}" stays as it is).
    """
    for name in ("{prompt}", "{demonstration}"):
        if name not in template:
            raise ValueError(f"teacher template must contain the placeholder {name}; got {template!r}")
    values = {"prompt": prompt, "demonstration": demonstration}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def teacher_prompt(example: Example, template: str, *, context: str = "demonstration",
                   demonstration: str | None = None) -> str:
    """The teacher's user-turn text for `example`.

    Args:
        example: the task item.
        template: `TeacherConfig.template`, with {prompt} and {demonstration}.
        context: "demonstration" fills the slot with the gold worked solution (SDFT);
            "answer" with `ANSWER_PREFIX + example.answer` only (OPSD); "none" returns the
            student prompt unchanged (the template is not used).
        demonstration: replaces what fills the slot. Under "demonstration" pass the negative
            demonstration to build the negative teacher's prompt; under "answer" pass the
            negative's final answer (`NegativeSet.answers`). Not allowed with "none".

    Raises:
        ValueError: unknown context, a template without both placeholders, a demonstration
            given with context="none", or context="demonstration" for an example that has no
            demonstration.
    """
    if context not in CONTEXTS:
        raise ValueError(f"teacher context: got {context!r}; allowed values: {', '.join(CONTEXTS)}")
    if context == "none":
        if demonstration is not None:
            raise ValueError("teacher context 'none' has no demonstration slot; a negative teacher "
                             "needs context 'demonstration' or 'answer'")
        return example.prompt
    if context == "answer":
        slot = ANSWER_PREFIX + (example.answer if demonstration is None else demonstration)
    else:
        slot = example.demonstration if demonstration is None else demonstration
        if not slot.strip():
            raise ValueError(f"example {example.id!r} has no demonstration; use teacher context "
                             "'answer' or 'none' for this task")
    return fill_template(template, prompt=example.prompt, demonstration=slot)
