"""The checks a plan passes before anything is drawn or encoded from it, and the stricter ones for a plan a person
typed or edited (the GoT Chain Parser, the GoT Plan Editor, a Reasoner's chain_start), so that a mistake is named
where it was made, not two nodes later (docs/ALGORITHM.md §5).

- Every plan: at most MAX_BOXES boxes, each colour a name PIL can draw (`check_plan_objects`).
- A typed plan: every `<|box_start|>` begins a well-formed box (parse_chain's strict mode), and, when it is the
  whole turn (`whole=True`), it ends where the model would stop: with `<|im_gen_start|>` (render now) or
  `<|vision_start|>` (look at the render first, then GoT Next Turn), with nothing written after it. A chain start
  (`whole=False`) is continued by the model, so it may end anywhere, but not after either token.
"""

from __future__ import annotations

from ..reasoning.tokens import BOI, BOX_END, BOX_START, IM_START, OBJECT_REF_END, OBJECT_REF_START, VISION_START
from .chain import ChainError, GoTChain, check_box_count, parse_chain
from .layout import color_rgb

PLAN_ENDS = (BOI, VISION_START)
OBJECT_EXAMPLE = f"{OBJECT_REF_START}red ball{OBJECT_REF_END}{BOX_START}(100,500),(400,900){BOX_END} (red)"
NO_OBJECTS = ("(no boxes: this plan places no objects, so the spatial guidance is a black canvas and the image "
              f"follows the text alone; to place an object write {OBJECT_EXAMPLE})")


def check_plan_objects(chain: GoTChain) -> None:
    """At most MAX_BOXES boxes, each in a colour PIL can draw (ChainError naming the object and where it is)."""
    check_box_count(chain)
    for index, obj in enumerate(chain.objects):
        if obj.color is not None:
            color_rgb(obj, index)


def read_typed_plan(text: str, *, whole: bool = True, drawn_after: tuple[str, ...] = ()) -> GoTChain:
    """`text` as a plan a person wrote: parsed strictly, its objects checked, and (`whole`) its end checked."""
    chain = parse_chain(text, strict=True, drawn_after=drawn_after)
    _check_no_new_message(text)
    check_plan_objects(chain)
    _check_plan_end(text, whole)
    return chain


def _check_no_new_message(text: str) -> None:
    """A plan is the assistant's text; <|im_start|> would begin another chat message (a faked turn) inside it."""
    at = text.find(IM_START)
    if at >= 0:
        raise ChainError(f"{IM_START} begins a new chat message and is never part of a plan: remove it (a plan is "
                         "the assistant's text: phrases, boxes and its end token)", at)


def _check_plan_end(text: str, whole: bool) -> None:
    body = text.rstrip()
    for token in PLAN_ENDS:
        first = body.find(token)
        if first >= 0 and first + len(token) < len(body):
            after = body[first + len(token):]
            quoted = repr(after[:40] + ("..." if len(after) > 40 else ""))
            raise ChainError(f"{token} ends the plan, but {quoted} is written after it: write nothing after "
                             f"{token}", first)
    if whole and not body.endswith(PLAN_ENDS):
        tail = repr(body[-40:]) if body else "nothing"
        raise ChainError(f"the plan must end with {BOI} (render it now) or {VISION_START} (render, then continue "
                         f"with GoT Next Turn); it ends with {tail}. Add {BOI} at the end of the text "
                         f"(if it is a model's chain that stopped early, raise the Reasoner's max_new_tokens)",
                         len(body))
