"""The GoT reasoning chain as data: the objects it places, each with a phrase, a box and a colour
(docs/ALGORITHM.md §5).

A box is `<|box_start|>(x1,y1),(x2,y2)<|box_end|> (color)` on the 0..1000 grid, optionally preceded by its
phrase as `<|object_ref_start|>phrase<|object_ref_end|>`. The reference finds boxes with one regex,
`<\\|box_start\\|>\\((\\d+),(\\d+)\\),\\((\\d+),(\\d+)\\)<\\|box_end\\|> \\((\\w+)\\)`, and ignores a box without a colour.
`parse_chain` reports every box that regex finds, with the same numbers and colour, and also accepts what real
model output and hand edits look like:

- spaces or tabs inside the box, between the phrase and the box and around `(color)`; a missing space before
  `(color)` ("spaces_normalised");
- a box without a colour: kept with color None ("no_color"); like the reference, layout draws it nowhere;
- corners given as (x2,y2),(x1,y1) or mixed: reordered ("corners_reordered"); the reference's PIL refuses those;
- numbers above 1000: clamped to 1000 ("clamped_1000"). Drawing with PIL clips at the canvas edge, so this
  gives the reference's pixels exactly, while a 5000-digit number cannot overflow a float. 1000 itself is kept:
  it is the right/bottom edge, which the reference fills up to the last pixel (999 would not);
- leading zeros or non-ASCII decimal digits, which the reference's `\\d+`/`int()` also read ("digits_normalised");
- zero-area boxes (x1 == x2 or y1 == y2) are kept and flagged ("zero_area"): PIL still fills one pixel line.

A `<|box_start|>` that does not begin a box is not an object; it is listed in `GoTChain.issues` (the
reference ignores it too), or raised as ChainError with `strict=True` (for text a person typed).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace

from ..reasoning.tokens import BOX_END, BOX_START, OBJECT_REF_END, OBJECT_REF_START
from ..errors import GoTError

GRID = 1000
MAX_BOXES = 256  # docs/ALGORITHM.md "Limits": more than the MLLM can write in 8192 tokens (~22 a box)
_PHRASE_FORBIDDEN = (OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END)
_SP = r"[ \t]*"
_NUM = _SP + r"(\d+)" + _SP
_POINT = r"\(" + _NUM + "," + _NUM + r"\)"
_BOX_RE = re.compile(
    re.escape(BOX_START) + _SP + _POINT + _SP + "," + _SP + _POINT + _SP + re.escape(BOX_END)
    + r"(?:" + _SP + r"\(" + _SP + r"(\w+)" + _SP + r"\))?"
)
_COLOR_WORD = re.compile(r"\w+")
_SNIPPET = 48  # characters of a broken box quoted in its issue


class ChainError(GoTError):
    """Text that cannot be read as (or turned into) a GoT chain; says where and why."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        where = f" at character {position}" if position is not None else ""
        super().__init__(f"GoT chain{where}: {reason}")


@dataclass(frozen=True)
class GoTObject:
    phrase: str | None
    box: tuple[int, int, int, int]  # x1 <= x2, y1 <= y2, all in 0..1000
    color: str | None
    span: tuple[int, int]  # characters of GoTChain.text this object was read from
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChainIssue:
    """Markup that looks like a box but is not one (ignored, as the reference ignores it)."""

    position: int
    reason: str


_KEEP = object()


@dataclass(frozen=True)
class GoTChain:
    text: str
    objects: list[GoTObject]
    issues: list[ChainIssue] = field(default_factory=list)
    # Tokens at which the reference's `generate` stopped and its loop generated on (<|im_end|>, from the
    # generation config's eos list): only boxes after the last one are drawn (docs/ALGORITHM.md §7).
    drawn_after: tuple[str, ...] = ()

    @property
    def drawn_from(self) -> int:
        """The character where the drawn boxes begin: after the last `drawn_after` token, else 0."""
        return max((self.text.rfind(t) + len(t) for t in self.drawn_after if t in self.text), default=0)

    def draws(self, obj: GoTObject) -> bool:
        """Whether the reference draws `obj` into the spatial guidance: it has a colour and lies in the text of
        the last `generate` call."""
        return obj.color is not None and obj.span[0] >= self.drawn_from

    @property
    def colored(self) -> list[GoTObject]:
        """The objects the reference draws into the spatial guidance."""
        return [obj for obj in self.objects if self.draws(obj)]

    def with_object(self, index: int, *, phrase: str | None | object = _KEEP,
                    box: tuple[int, int, int, int] | object = _KEEP,
                    color: str | None | object = _KEEP) -> GoTChain:
        """The chain with object `index` changed (None removes a phrase or colour); only that object's text
        is rewritten, in canonical form, the rest of the text stays as it was."""
        if not isinstance(index, int) or not -len(self.objects) <= index < len(self.objects):
            raise ChainError(f"there is no object {index}; this chain has {len(self.objects)} objects")
        old = self.objects[index]
        new = replace(old, phrase=old.phrase if phrase is _KEEP else phrase,
                      box=old.box if box is _KEEP else _checked_box(box),
                      color=old.color if color is _KEEP else color)
        _check_editable(new)
        start, end = old.span
        edited = parse_chain(self.text[:start] + format_object(new) + self.text[end:], drawn_after=self.drawn_after)
        got = edited.objects[index] if len(edited.objects) == len(self.objects) else None
        if got is None or (got.phrase, got.box, got.color) != (new.phrase, new.box, new.color):
            raise ChainError(f"object {index} cannot be written as phrase={new.phrase!r}, box={new.box}, "
                             f"color={new.color!r}: the surrounding text would read it differently", start)
        return edited


def parse_chain(text: str, *, strict: bool = False, drawn_after: tuple[str, ...] = ()) -> GoTChain:
    """Every box in `text` with its phrase and colour, in order; boxes before the last of the `drawn_after`
    tokens are read but not drawn (GoTChain.draws). Never raises anything but ChainError; with strict=False
    (the default) it raises only for a non-string."""
    if not isinstance(text, str):
        raise ChainError(f"expected the chain as text (str), got {type(text).__name__}")
    objects: list[GoTObject] = []
    issues: list[ChainIssue] = []
    floor = 0  # a phrase never reaches back into the previous object
    pos = text.find(BOX_START)
    while pos >= 0:
        match = _BOX_RE.match(text, pos)
        if match is None:
            next_start = text.find(BOX_START, pos + len(BOX_START))
            issue = ChainIssue(pos, _diagnose_box(text, pos, next_start))
            if strict:
                raise ChainError(issue.reason, issue.position)
            issues.append(issue)
            pos = next_start
            continue
        objects.append(_read_object(text, match, floor))
        floor = match.end()
        pos = text.find(BOX_START, floor)
    return GoTChain(text, objects, issues, tuple(drawn_after))


def check_box_count(chain: GoTChain) -> None:
    """At most MAX_BOXES objects, checked before any canvas, mask or token is made for them."""
    if len(chain.objects) > MAX_BOXES:
        raise ChainError(f"the chain places {len(chain.objects):,} boxes, above GoT's limit of {MAX_BOXES} boxes per "
                         f"chain (GoT's chains place a handful): remove boxes in a GoT Chain Parser")


def format_object(obj: GoTObject) -> str:
    """The canonical text of one object: `<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|> (color)`."""
    ref = "" if obj.phrase is None else f"{OBJECT_REF_START}{obj.phrase}{OBJECT_REF_END}"
    x1, y1, x2, y2 = obj.box
    color = "" if obj.color is None else f" ({obj.color})"
    return f"{ref}{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}{color}"


def format_chain(chain: GoTChain) -> str:
    """chain.text with every object rewritten in canonical form; the text between objects is kept."""
    pieces, last = [], 0
    for obj in chain.objects:
        start, end = obj.span
        pieces += [chain.text[last:start], format_object(obj)]
        last = end
    pieces.append(chain.text[last:])
    return "".join(pieces)


def _read_object(text: str, match: re.Match, floor: int) -> GoTObject:
    notes = []
    values, digits_changed, clamped = [], False, False
    for digits in match.group(1, 2, 3, 4):
        value = _decimal(digits)
        digits_changed |= not digits.isascii() or (len(digits) > 1 and digits.startswith("0"))
        clamped |= value > GRID
        values.append(min(value, GRID))
    x1, y1, x2, y2 = values
    box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    color = match.group(5)
    phrase, start, phrase_spaced = _phrase_before(text, match.start(), floor)
    if phrase_spaced or _has_extra_spaces(match.group(0), color):
        notes.append("spaces_normalised")
    if digits_changed:
        notes.append("digits_normalised")
    if clamped:
        notes.append("clamped_1000")
    if box != (x1, y1, x2, y2):
        notes.append("corners_reordered")
    if box[0] == box[2] or box[1] == box[3]:
        notes.append("zero_area")
    if color is None:
        notes.append("no_color")
    return GoTObject(phrase, box, color, (start, match.end()), tuple(notes))


def _has_extra_spaces(box_text: str, color: str | None) -> bool:
    """Whether the box's spacing differs from the reference's: none inside, exactly one before `(color)`."""
    exact = re.sub(r"[ \t]", "", box_text)
    if color is not None:
        exact = exact[:-len(f"({color})")] + f" ({color})"
    return exact != box_text


def _decimal(digits: str) -> int:
    """int(digits) for any decimal digits, without building huge ints (above 4 significant digits it is > 1000)."""
    values = [unicodedata.digit(ch) for ch in digits]
    first = next((i for i, v in enumerate(values) if v), len(values))
    significant = values[first:]
    if len(significant) > 4:
        return GRID + 1
    number = 0
    for v in significant:
        number = number * 10 + v
    return number


def _phrase_before(text: str, box_start: int, floor: int) -> tuple[str | None, int, bool]:
    """The `<|object_ref_start|>phrase<|object_ref_end|>` right before a box (spaces allowed between), if any:
    (phrase, where the object starts, whether spaces were skipped)."""
    end = box_start
    while end > floor and text[end - 1] in " \t":
        end -= 1
    ref_end = end - len(OBJECT_REF_END)
    if ref_end < floor or not text.startswith(OBJECT_REF_END, ref_end):
        return None, box_start, False
    ref_start = text.rfind(OBJECT_REF_START, floor, ref_end)
    if ref_start < 0:
        return None, box_start, False
    phrase = text[ref_start + len(OBJECT_REF_START):ref_end]
    if any(token in phrase for token in _PHRASE_FORBIDDEN):
        return None, box_start, False
    return phrase, ref_start, end != box_start


def _diagnose_box(text: str, pos: int, next_start: int) -> str:
    """Why the `<|box_start|>` at `pos` begins no box; looks no further than the next `<|box_start|>`."""
    limit = len(text) if next_start < 0 else next_start
    close = text.find(BOX_END, pos + len(BOX_START), limit)
    stop = min(limit if close < 0 else close + len(BOX_END), pos + _SNIPPET)
    found = text[pos:stop] + ("..." if stop == pos + _SNIPPET and stop < len(text) else "")
    if close >= 0:
        why = "the box does not hold two points of non-negative whole numbers"
    elif next_start >= 0:
        why = f"{BOX_START} is followed by another {BOX_START} before its {BOX_END}"
    else:
        why = f"{BOX_START} is never closed by {BOX_END}"
    return (f"{why}; found {found!r}. Write a box as {BOX_START}(x1,y1),(x2,y2){BOX_END} (color) with "
            f"whole numbers 0..1000, or delete the stray {BOX_START}")


def _checked_box(box: object) -> tuple[int, int, int, int]:
    if (not isinstance(box, (tuple, list)) or len(box) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
        raise ChainError(f"a box is four whole numbers (x1, y1, x2, y2) on the 0..1000 grid, got {box!r}")
    x1, y1, x2, y2 = box
    if not all(0 <= v <= GRID for v in box):
        raise ChainError(f"box {tuple(box)} leaves the 0..{GRID} grid; use values from 0 to {GRID}")
    if x1 > x2 or y1 > y2:
        raise ChainError(f"box {tuple(box)} is inverted; give the top-left corner (x1, y1) first, "
                         f"then the bottom-right (x2, y2)")
    return (x1, y1, x2, y2)


def _check_editable(obj: GoTObject) -> None:
    if obj.color is not None and (not isinstance(obj.color, str) or not _COLOR_WORD.fullmatch(obj.color)):
        raise ChainError(f"colour {obj.color!r} must be one word (a PIL colour name such as 'red' or "
                         f"'lightblue'), or None for no colour")
    if obj.phrase is not None:
        if not isinstance(obj.phrase, str):
            raise ChainError(f"a phrase is text or None, got {type(obj.phrase).__name__}")
        bad = [token for token in _PHRASE_FORBIDDEN if token in obj.phrase]
        if bad:
            raise ChainError(f"phrase {obj.phrase!r} contains {bad[0]}; a phrase cannot hold box or "
                             f"object-reference tokens")
