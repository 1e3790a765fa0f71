"""Reading the revised prompt out of the thinker's answer, robustly: the model may repeat the marker, wrap the
revision in quotes or Markdown, leave it empty, never write it, or run on for pages."""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = "Revised Prompt:"
MAX_REVISION_CHARS = 2000
# The marker as models write it: any case, Markdown emphasis or a heading around it ("**Revised Prompt:**").
_MARKER = re.compile(r"[#*_\s]*revised\s+prompt\s*[*_]*\s*:\s*[*_]*", re.IGNORECASE)
_QUOTES = ('"', "'", "`", "\u201c", "\u201d", "\u2018", "\u2019", "\u00ab", "\u00bb")
_WRAPPERS = re.compile(r"^(\*\*|__|\*|_|```[a-z]*\n?|`)(.*?)(\*\*|__|\*|_|\n?```|`)$", re.DOTALL)


@dataclass(frozen=True)
class Revision:
    prompt: str  # what to condition on: the revision, or the original prompt when there is none
    thinking: str  # the answer before the last marker (the whole answer without one)
    revised: bool  # the answer held a non-empty revision
    note: str | None  # why the original prompt was passed on, or that the revision was cut


def read_revision(answer: str, original: str, limit: int = MAX_REVISION_CHARS) -> Revision:
    """The revised prompt after the last "Revised Prompt:" of `answer`, quotes and markup stripped; `original`
    when there is no marker or nothing after it; cut at a word boundary to `limit` characters."""
    found = list(_MARKER.finditer(answer))
    if not found:
        return Revision(original, answer.strip(), False,
                        f'no "{MARKER}" in the answer: the original prompt is passed on')
    last = found[-1]
    revision = _unwrap(answer[last.end():])
    thinking = answer[:last.start()].strip()
    if not revision:
        return Revision(original, thinking, False,
                        f'the revision after "{MARKER}" is empty: the original prompt is passed on')
    if len(revision) > limit:
        cut = revision[:limit].rsplit(" ", 1)[0] if " " in revision[:limit] else revision[:limit]
        return Revision(cut.rstrip(" ,;:"), thinking, True,
                        f"the revision was {len(revision)} characters, cut to {limit} (max_revision_chars)")
    return Revision(revision, thinking, True, None)


def _unwrap(text: str) -> str:
    """Whitespace collapsed, then surrounding quotes and Markdown (emphasis, code) peeled off until none is left."""
    text = " ".join(text.split())
    while True:
        stripped = text.strip()
        wrapped = _WRAPPERS.match(stripped)
        if wrapped:
            stripped = wrapped.group(2).strip()
        if len(stripped) >= 2 and stripped[0] in _QUOTES and stripped[-1] in _QUOTES:
            stripped = stripped[1:-1].strip()
        stripped = stripped.strip("*_#").strip()
        if stripped == text:
            return text
        text = stripped
