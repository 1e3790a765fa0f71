"""GoT Mask from Boxes: the chain's object boxes as ComfyUI masks, and a preview of the colour layout."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..got_backend.ssgm.chain import GoTChain
from ..got_backend.ssgm.layout import box_masks, layout_preview
from ..got_backend.ssgm.sizes import check_widget_size
from .comfy_bridge import size_input
from .types import ChainSocket


def object_masks(chain: GoTChain, width: int, height: int) -> torch.Tensor:
    """[N, H, W], one mask per object; a single empty mask when the chain places no object, because ComfyUI's
    mask nodes expect a batch of at least one."""
    masks = box_masks(chain, width, height)
    return masks if len(masks) else torch.zeros(1, height, width)


class GoTMaskFromBoxes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTMaskFromBoxes",
            display_name="GoT Mask from Boxes",
            category="GoT/layout",
            description="Turns the object boxes of a GoT chain into one MASK per object (for inpainting, regional "
                        "prompting or compositing) and draws the colour layout GoT's spatial guidance is built from.",
            inputs=[
                ChainSocket.Input(
                    "chain", tooltip="The reasoning chain (from the GoT Reasoner or the GoT Chain Parser); its boxes "
                                     "are on a 0..1000 grid scaled to width x height."),
                size_input("width", "the masks and the preview get this width"),
                size_input("height", "the masks and the preview get this height"),
            ],
            outputs=[
                io.Mask.Output("masks", display_name="masks",
                               tooltip="One mask per object in chain order (1 inside the box, also for boxes without a "
                                       "colour); a single empty mask if there are no boxes."),
                io.Image.Output("layout", display_name="layout",
                                tooltip="Preview of the layout: each box in its colour over a 100-unit grid; boxes "
                                        "without a colour in grey."),
            ],
        )

    @classmethod
    def execute(cls, chain: GoTChain, width: int, height: int) -> io.NodeOutput:
        check_widget_size("GoT Mask from Boxes", width, height, render=False)
        preview = layout_preview(chain, width, height)  # first: it names an unknown colour with its object
        return io.NodeOutput(object_masks(chain, width, height), preview.unsqueeze(0))


NODES: list[type[io.ComfyNode]] = [GoTMaskFromBoxes]
