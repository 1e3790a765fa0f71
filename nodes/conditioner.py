"""GoT SSGM Conditioner: GoT's semantic, spatial and reference guidance as ComfyUI conditioning.

Every branch of docs/ALGORITHM.md §9 is an ordinary ComfyUI conditioning: the cross-attention context (c, or the
null context c0), `pooled_output` = p (never nulled), SDXL's size conditioning [H, W, 0, 0, H, W], and
`noise_concat` = reference ‖ spatial latents (zeros where the branch leaves them out). ComfyUI concatenates
`noise_concat` to the noisy latent unscaled, which is how GoT's UNet takes its 8 extra channels.

The positive (branch C) and negative (branch U) drive the core KSampler with ordinary CFG; the branches feed the
GoT Guider (nodes/guider.py).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management

from ..got_backend.ssgm.branches import branch_extra_channels
from ..got_backend.ssgm.guidance import BRANCH_INPUTS
from ..got_backend.ssgm.latents import spatial_latent
from ..got_backend.ssgm.chain import check_box_count
from ..got_backend.ssgm.sizes import check_latent, check_widget_size
from .comfy_bridge import cancellable_progress, checked_latent, size_input, vae_encode_fn
from .model_management import ManagedMLLM
from .types import BranchesSocket, ChainSocket, ComfyConditioning, MLLMSocket, ReasonedChain


def sdxl_size_conds(width: int, height: int) -> dict[str, int]:
    """SDXL's added time ids as ComfyUI's SDXL.encode_adm reads them: original = target = output size, no crop."""
    return {"width": width, "height": height, "crop_w": 0, "crop_h": 0,
            "target_width": width, "target_height": height}


def branch_conditionings(context: torch.Tensor, null_context: torch.Tensor, pooled: torch.Tensor,
                         reference: torch.Tensor, spatial: torch.Tensor,
                         width: int, height: int) -> dict[str, ComfyConditioning]:
    """The conditioning of each guidance branch C, T, I, U, built from docs/ALGORITHM.md §9's table."""
    contexts = {"c": context, "c0": null_context}
    return {name: [[contexts[inputs.context],
                    {"pooled_output": pooled, "noise_concat": branch_extra_channels(name, reference, spatial),
                     **sdxl_size_conds(width, height)}]]
            for name, inputs in BRANCH_INPUTS.items()}


def check_reference(reference: dict, width: int, height: int) -> torch.Tensor:
    samples = checked_latent(reference, "GoT SSGM Conditioner's reference")
    check_latent("reference latent", tuple(samples.shape), width, height,
                 "give the GoT Reference Encoder the same width and height as this node")
    return samples


class GoTSSGMConditioner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTSSGMConditioner",
            display_name="GoT SSGM Conditioner",
            category="GoT/conditioning",
            description="GoT's Semantic-Spatial Guidance Module: the MLLM's 64 semantic tokens for the chain, the "
                        "spatial latent of its coloured boxes and the reference latent, as conditioning for GoT's "
                        "12-channel UNet. positive/negative work with the core KSampler (plain CFG between the "
                        "full guidance and the null branch); branches feed the GoT Guider (GoT's 3-scale guidance).",
            inputs=[
                MLLMSocket.Input("mllm", tooltip="The GoT MLLM (GoT MLLM Loader); it reads the chain once more to get "
                                              "the semantic tokens."),
                ChainSocket.Input("chain", tooltip="The reasoning chain, possibly edited: its text gives the semantic "
                                                "guidance and its coloured boxes the spatial guidance."),
                io.Vae.Input("vae", tooltip="The SDXL VAE; encodes one colour canvas per coloured box."),
                io.Latent.Input("reference", tooltip="From the GoT Reference Encoder at the same width and height "
                                                     "(the source image for edits, black for text-to-image)."),
                size_input("width", "must match the reference latent and the empty latent you sample"),
                size_input("height", "must match the reference latent and the empty latent you sample"),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive",
                                       tooltip="Branch C: context c, pooled p, reference and spatial latents (GoT's "
                                               "full guidance)."),
                io.Conditioning.Output("negative", display_name="negative",
                                       tooltip="Branch U: null context c0, pooled p, zero reference and spatial "
                                               "latents."),
                BranchesSocket.Output("branches", display_name="branches",
                                   tooltip="All four branch conditionings C, T, I, U for the GoT Guider."),
            ],
        )

    @classmethod
    def execute(cls, mllm: ManagedMLLM, chain: ReasonedChain, vae, reference: dict, width: int,
                height: int) -> io.NodeOutput:
        check_widget_size("GoT SSGM Conditioner", width, height)
        check_box_count(chain)  # the limits first: a shared workflow must not start unbounded work
        ref = check_reference(reference, width, height)
        mllm.check_chain(chain)
        spatial = spatial_latent(chain, vae_encode_fn(vae), width, height, on_batch=cancellable_progress())
        guidance = mllm.semantic_guidance(chain)
        device = comfy.model_management.intermediate_device()
        context, null_context, pooled = (t.to(device, torch.float32) for t in
                                         (guidance.context, guidance.null_context, guidance.pooled))
        branches = branch_conditionings(context, null_context, pooled, ref.to(device), spatial.to(device),
                                        width, height)
        return io.NodeOutput(branches["C"], branches["U"], branches)


NODES: list[type[io.ComfyNode]] = [GoTSSGMConditioner]
