"""The task table: the one place a task name becomes a Task object.

Entries are "module:Class" strings so that importing this package loads no task module (and
none of their optional dependencies) until a task is asked for by name.
"""

from __future__ import annotations

import importlib
from typing import Any

from unisd.errors import UnknownNameError
from unisd.tasks.base import DataError, Example, Score, Task, render_messages

TASKS: dict[str, str] = {
    "arithmetic": "unisd.tasks.arithmetic:ArithmeticTask",
    "gsm8k": "unisd.tasks.gsm8k:GSM8KTask",
    "jsonl": "unisd.tasks.jsonl:JSONLTask",
    "cose": "unisd.tasks.cose:CoSETask",
    "gpqa": "unisd.tasks.gpqa:GPQATask",
    "scienceqa": "unisd.tasks.scienceqa:ScienceQATask",
    "mbpp": "unisd.tasks.mbpp:MBPPTask",
    "humaneval": "unisd.tasks.humaneval:HumanEvalTask",
    "toolalpaca": "unisd.tasks.toolalpaca:ToolAlpacaTask",
}


def get_task(name: str, **options: Any) -> Task:
    """Instantiate the task called `name` with task-specific `options` (DataConfig.task_args)."""
    if name not in TASKS:
        raise UnknownNameError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    module_name, cls_name = TASKS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**options)


__all__ = ["TASKS", "DataError", "Example", "Score", "Task", "get_task", "render_messages"]
