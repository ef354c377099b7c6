"""Token-level views of one batch (re-exported from `unisd.scoring`, where they now live).

`View`, `build_view` and `concat_views` moved to the top-level `unisd.scoring` so that
`evaluation` can build views without importing `training`; this module keeps the old import
path working. The prompt helpers are re-exported from `unisd.prompting` as before.
"""

from __future__ import annotations

from unisd.prompting import chat_prompt_ids, completion_ids  # noqa: F401  (re-exported)
from unisd.scoring import View, build_view, concat_views  # noqa: F401  (re-exported)

__all__ = ["View", "build_view", "chat_prompt_ids", "completion_ids", "concat_views"]
