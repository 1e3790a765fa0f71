"""GoT Plan Editor: the Reasoner's plan drawn on the node, its boxes dragged by the artist (interactive generation).

The node's canvas and object list are the frontend extension web/plan_editor.js; here is what the graph runs:

- `plan` empty: the model's chain passes on unchanged (the semantic tokens reuse the reasoner's KV cache).
- `plan` set (the editor writes it on every edit, as canonical chain text): that text is the chain, read
  strictly, with the reasoner's prompt and image. Re-queueing runs only this node and what follows it.
- `edited_from` (hidden on the node) is the model chain the edit was made from. When the model's chain has since
  changed (the prompt was changed and the Reasoner ran again), the edit is still used, never silently replaced,
  and the node says so; the editor offers the new plan.

Every run sends the model's chain, the plan in use and the canvas size to the editor (the node's UI output, the
frontend's `executed` message), so the plan arrives on the canvas without copying. With `image` connected (an
edit's source image) the editor draws the boxes over it.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..got_backend.ssgm.sizes import check_widget_size
from ..got_backend.ssgm.typed_plan import check_plan_objects
from .chain import check_typed_text, describe_boxes, edited_chain
from .comfy_bridge import checked_images, queue_time_check, size_input
from .types import ChainSocket, ReasonedChain

MODEL_CHANGED = ("the model's plan changed since this edit (its prompt or input changed and it reasoned again); "
                 "your edited plan is used: choose \"take the model's plan\" in the editor to discard the edit")


def plan_message(model: ReasonedChain, used: ReasonedChain, model_changed: bool, width: int, height: int,
                 source: list[dict]) -> dict:
    """What the editor receives in the node's `executed` message."""
    return {"model_chain": model.text, "plan": used.text, "edited": used is not model,
            "model_changed": model_changed, "width": width, "height": height, "source": source}


class GoTPlanEditor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTPlanEditor",
            display_name="GoT Plan Editor",
            category="GoT/reasoning",
            description="Shows the Reasoner's plan on the node as boxes over a canvas (or over the image to edit): "
                        "drag a box to move it, pull its handles to resize, add, delete or recolour objects and "
                        "edit their phrases, then queue again to re-render from your plan (the Reasoner is not run "
                        "again). Untouched, it passes the model's plan on unchanged.",
            inputs=[
                ChainSocket.Input("chain", tooltip="The chain from a GoT Reasoner (or Next Turn): the model's plan."),
                io.String.Input("plan", multiline=True, default="",
                                tooltip="The edited plan as chain text (the editor writes it; empty: the model's "
                                        "plan unchanged). Saved with the workflow."),
                io.String.Input("edited_from", multiline=True, default="",
                                tooltip="The model's chain the edit was made from (kept by the editor, to tell "
                                        "when the model's plan has changed since)."),
                size_input("width", "the editor's canvas gets this aspect ratio (connect the render's width)"),
                size_input("height", "the editor's canvas gets this aspect ratio (connect the render's height)"),
                io.Image.Input("image", optional=True,
                               tooltip="Edit: the source image, drawn under the boxes (its aspect ratio is used)."),
            ],
            outputs=[
                ChainSocket.Output("planned_chain", display_name="chain",
                                tooltip="The plan in use (edited or the model's) for the GoT SSGM Conditioner and "
                                        "GoT Mask from Boxes."),
                io.String.Output("boxes", display_name="boxes",
                                 tooltip="The plan's objects, one per line: phrase, box (0..1000 grid), colour."),
                io.String.Output("plan_text", display_name="text", tooltip="The chain text in use."),
            ],
        )

    @classmethod
    def validate_inputs(cls, plan: str | None = None) -> bool | str:
        """At queue time: the edited plan the workflow holds (a plan from another node is checked when run)."""
        return queue_time_check(check_typed_text, plan)

    @classmethod
    def execute(cls, chain: ReasonedChain, plan: str, edited_from: str, width: int, height: int,
                image: torch.Tensor | None = None) -> io.NodeOutput:
        check_widget_size("GoT Plan Editor", width, height, render=False)  # a linked size is checked too
        used = edited_chain(plan, chain)
        check_plan_objects(used)
        model_changed = used is not chain and bool(edited_from) and edited_from != chain.text
        boxes = describe_boxes(used)
        if model_changed:
            boxes = f"[{MODEL_CHANGED}]\n{boxes}"
        shown = None if image is None else checked_images(image, "GoT Plan Editor's image")[:1]
        source = [] if shown is None else ui.PreviewImage(shown, cls=cls).as_dict()["images"]
        message = plan_message(chain, used, model_changed, width, height, source)
        return io.NodeOutput(used, boxes, used.text, ui={"got_plan": [message], "text": [boxes]})


NODES: list[type[io.ComfyNode]] = [GoTPlanEditor]
