"""Think, then rewrite (Think-Then-Generate, docs/ALGORITHM.md §12): a Qwen2.5-VL chat model reasons step by step about
the prompt and writes a revised prompt after "Revised Prompt:"; the image model is conditioned on the revision.

- `think(chat, prompt, image=None, *, settings=ReasoningSettings(), max_revision_chars=2000, on_token=None,
  should_cancel=None, **changes) -> Thought` (thinker.py): greedy, up to 1024 new tokens by default.
- `read_revision(answer, original, limit) -> Revision` (revision.py): how the revision is read from the answer
  (the last marker wins, quotes and markup stripped; missing or empty -> the original prompt, with a note;
  longer than `limit` characters -> cut, with a note).
"""

from .revision import MARKER, Revision, read_revision
from .thinker import Thought, think

__all__ = ["MARKER", "Revision", "Thought", "read_revision", "think"]
