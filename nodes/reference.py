"""GoT Reference Encoder: the source image as GoT's reference latent (docs/ALGORITHM.md §8).

The latent is an ordinary ComfyUI LATENT: ComfyUI keeps every LATENT unscaled (a model multiplies by its VAE
scaling factor, 0.13025 for SDXL, only inside sampling), which is exactly the space GoT's reference channels use.
So this equals the core VAE Encode of the image resized to width x height, and the SSGM Conditioner puts it into
the UNet's extra channels as is.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..got_backend.ssgm.latents import reference_latent
from ..got_backend.ssgm.sizes import check_widget_size, source_aspect_size
from .comfy_bridge import comfy_image, size_input, vae_encode_fn


class GoTReferenceEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTReferenceEncoder",
            display_name="GoT Reference Encoder",
            category="GoT/conditioning",
            description="Encodes the image to edit as GoT's reference latent: resized to width x height (bicubic, "
                        "aspect not kept), VAE-encoded with the distribution's mode, not scaled. Without an image "
                        "(text-to-image) it encodes an all-black image, as GoT does.",
            inputs=[
                io.Vae.Input("vae", tooltip="The SDXL VAE (GoT's VAE is SDXL's, frozen)."),
                size_input("width", "the reference is resized to it; use the same size on the SSGM Conditioner"),
                size_input("height", "the reference is resized to it; use the same size on the SSGM Conditioner"),
                io.Image.Input("image", optional=True,
                               tooltip="The source image for an edit (one RGB image). Leave unconnected for "
                                       "text-to-image."),
            ],
            outputs=[
                io.Latent.Output("reference", display_name="reference",
                                 tooltip="GoT's reference latent [1, 4, height/8, width/8] (unscaled, like every "
                                         "ComfyUI LATENT); connect it to the SSGM Conditioner."),
                io.Int.Output("final_width", display_name="final_width",
                              tooltip="Width to resize the decoded image to: for an edit the source aspect ratio with "
                                      "the short side min(width, height) (GoT: 1024), the long side truncated as GoT "
                                      "does; for text-to-image simply width."),
                io.Int.Output("final_height", display_name="final_height",
                              tooltip="Height to resize the decoded image to (see final_width)."),
            ],
        )

    @classmethod
    def execute(cls, vae, width: int, height: int, image: torch.Tensor | None = None) -> io.NodeOutput:
        check_widget_size("GoT Reference Encoder", width, height)
        pixels = comfy_image(image, "GoT Reference Encoder's image")
        latent = reference_latent(pixels, vae_encode_fn(vae), width, height)
        final = (width, height) if image is None else source_aspect_size((image.shape[2], image.shape[1]),
                                                                         min(width, height))
        return io.NodeOutput({"samples": latent}, *final)


NODES: list[type[io.ComfyNode]] = [GoTReferenceEncoder]
