"""GoT Chain Parser: the editable plan (interactive generation, docs/ALGORITHM.md §5).

Connect a Reasoner's chain and leave the text empty: the chain passes through unchanged (the semantic tokens
then reuse the reasoner's KV cache). Paste the reasoner's text, change a phrase, a box or a colour, and re-queue:
the Reasoner is cached (its inputs did not change), and only this node and what follows it run again; the SSGM
Conditioner recomputes the semantic tokens from the edited text and the layout from its boxes.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..got_backend.ssgm.chain import ChainError, GoTChain
from ..got_backend.ssgm.typed_plan import NO_OBJECTS, check_plan_objects, read_typed_plan
from .comfy_bridge import queue_time_check, show_on_node
from .types import ChainSocket, ReasonedChain, typed_chain


def edited_chain(text: str, chain: ReasonedChain | None) -> ReasonedChain:
    """The chain this node passes on: the connected one when `text` is empty or the same, else `text` read and
    checked as a typed plan (a mistake is a ChainError saying where), tied to the connected chain's reasoning."""
    if not text.strip():
        if chain is None:
            raise ChainError("there is no chain: write one in the text box, or connect a GoT Reasoner's chain")
        return chain
    if chain is not None and text.strip() == chain.text.strip():
        return chain
    return typed_chain(text, getattr(chain, "reasoning", None))


def check_typed_text(text: str) -> None:
    """A plan typed into a widget, at queue time (empty: the connected chain, checked when it arrives)."""
    if text.strip():
        read_typed_plan(text)


def describe_boxes(chain: GoTChain) -> str:
    """One line per object: number, phrase, box on the 0..1000 grid, colour, and what the parser changed."""
    lines = []
    for number, obj in enumerate(chain.objects, 1):
        phrase = f'"{obj.phrase}"' if obj.phrase is not None else "(no phrase)"
        x1, y1, x2, y2 = obj.box
        notes = f"  [{', '.join(obj.notes)}]" if obj.notes else ""
        color = obj.color or "(no colour: not drawn)"
        if obj.color is not None and not chain.draws(obj):
            color += " (before the last <|im_end|>: not drawn)"
        lines.append(f"{number}. {phrase} ({x1},{y1})-({x2},{y2}) {color}{notes}")
    lines += [f"ignored at character {issue.position}: {issue.reason}" for issue in chain.issues]
    return "\n".join(lines) if lines else NO_OBJECTS


class GoTChainParser(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTChainParser",
            display_name="GoT Chain Parser",
            category="GoT/reasoning",
            description="The editable GoT plan. Leave the text empty to pass the connected chain on unchanged; "
                        "paste the Reasoner's text and edit a phrase, a box or a colour to re-render from your "
                        "plan (only this node and those after it run again). Lists the boxes it read.",
            inputs=[
                io.String.Input("text", multiline=True, default="",
                                tooltip="Empty: use the connected chain. Otherwise the chain to render, e.g. "
                                        "A <|object_ref_start|>red ball<|object_ref_end|><|box_start|>(100,500),"
                                        "(400,900)<|box_end|> (red) ... ending with <|im_gen_start|> (or "
                                        "<|vision_start|> for a multi-turn edit), nothing after it; checked when "
                                        "you queue. Boxes are "
                                        "(x1,y1),(x2,y2) on a 0..1000 grid of the image; colours are one-word "
                                        "colour names (red, lightblue, gold)."),
                ChainSocket.Input("chain", optional=True,
                               tooltip="The chain from a GoT Reasoner (or Next Turn). Needed for the semantic "
                                       "tokens: your edited text is read with its prompt and image."),
            ],
            outputs=[
                ChainSocket.Output("edited_chain", display_name="chain",
                                tooltip="The (edited) chain for the GoT SSGM Conditioner and GoT Mask from Boxes."),
                io.String.Output("boxes", display_name="boxes",
                                 tooltip="The objects read from the chain, one per line: phrase, box (0..1000 "
                                         "grid), colour, and any fix the parser made."),
                io.String.Output("chain_text", display_name="text", tooltip="The chain text in use."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, text: str | None = None) -> bool | str:
        """At queue time: the typed plan (a text from another node is checked when run)."""
        return queue_time_check(check_typed_text, text)

    @classmethod
    def execute(cls, text: str, chain: ReasonedChain | None = None) -> io.NodeOutput:
        result = edited_chain(text, chain)
        check_plan_objects(result)  # the connected chain too: it is drawn from here on
        boxes = describe_boxes(result)
        show_on_node(cls.hidden.unique_id, boxes)
        return io.NodeOutput(result, boxes, result.text, ui=ui.PreviewText(boxes))


NODES: list[type[io.ComfyNode]] = [GoTChainParser]
