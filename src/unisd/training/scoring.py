"""Logits at completion positions (re-exported from `unisd.scoring`, where they now live).

`completion_outputs` and `decoder_and_head` moved to the top-level `unisd.scoring` so that
`evaluation` can score completions without importing `training`; this module keeps the old
import path working.
"""

from __future__ import annotations

from unisd.scoring import View, completion_outputs, decoder_and_head  # noqa: F401  (re-exported)

__all__ = ["View", "completion_outputs", "decoder_and_head"]
