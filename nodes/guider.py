"""GoT SSGM Conditioner and GoT Guider: GoT's semantic, spatial and reference guidance in ComfyUI terms.

Every branch of GOT_SPEC §9 is an ordinary ComfyUI conditioning: the cross-attention context (c, or the null
context c0), `pooled_output` = p (never nulled), SDXL's size conditioning [H, W, 0, 0, H, W], and
`noise_concat` = reference ‖ spatial latents (zeros where the branch leaves them out). ComfyUI concatenates
`noise_concat` to the noisy latent unscaled, which is how GoT's UNet takes its 8 extra channels.

The conditioner's positive (branch C) and negative (branch U) drive the core KSampler with ordinary CFG; the
GoT Guider runs GoT's own 4-branch formula for SamplerCustomAdvanced.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.samplers

from ..got_backend.guidance import BRANCH_INPUTS, EDIT_SCALES, T2I_SCALES, combine_branches, needed_branches
from ..got_backend.latents import spatial_latent
from .comfy_bridge import size_input, vae_encode_fn
from .model_management import ManagedMLLM
from .types import GotBranches, GotChain, GotMLLM, ReasonedChain

Conditioning = list[list]  # ComfyUI's [[cross_attn, {extra conds}], ...]


class ReferenceLatentError(ValueError):
    """The reference LATENT does not fit the output size asked for."""


def sdxl_size_conds(width: int, height: int) -> dict[str, int]:
    """SDXL's added time ids as ComfyUI's SDXL.encode_adm reads them: original = target = output size, no crop."""
    return {"width": width, "height": height, "crop_w": 0, "crop_h": 0,
            "target_width": width, "target_height": height}


def branch_conditionings(context: torch.Tensor, null_context: torch.Tensor, pooled: torch.Tensor,
                         reference: torch.Tensor, spatial: torch.Tensor,
                         width: int, height: int) -> dict[str, Conditioning]:
    """The conditioning of each guidance branch C, T, I, U, built from GOT_SPEC §9's table (BRANCH_INPUTS)."""
    contexts = {"c": context, "c0": null_context}
    branches = {}
    for name, inputs in BRANCH_INPUTS.items():
        extra = torch.cat([reference if inputs.reference else torch.zeros_like(reference),
                           spatial if inputs.spatial else torch.zeros_like(spatial)], dim=1)
        branches[name] = [[contexts[inputs.context],
                           {"pooled_output": pooled, "noise_concat": extra, **sdxl_size_conds(width, height)}]]
    return branches


def check_reference(reference: dict, width: int, height: int) -> torch.Tensor:
    samples = reference["samples"]
    expected = (1, 4, height // 8, width // 8)
    if tuple(samples.shape) != expected:
        raise ReferenceLatentError(
            f"the reference latent has shape {list(samples.shape)} but a {width}x{height} output needs "
            f"{list(expected)}: give the GoT Reference Encoder the same width and height as this node")
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
                GotMLLM.Input("mllm", tooltip="The GoT MLLM (GoT MLLM Loader); it reads the chain once more to get "
                                              "the semantic tokens."),
                GotChain.Input("chain", tooltip="The reasoning chain, possibly edited: its text gives the semantic "
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
                GotBranches.Output("branches", display_name="branches",
                                   tooltip="All four branch conditionings C, T, I, U for the GoT Guider."),
            ],
        )

    @classmethod
    def execute(cls, mllm: ManagedMLLM, chain: ReasonedChain, vae, reference: dict, width: int,
                height: int) -> io.NodeOutput:
        ref = check_reference(reference, width, height)
        spatial = spatial_latent(chain, vae_encode_fn(vae), width, height)
        guidance = mllm.semantic_guidance(chain)
        device = comfy.model_management.intermediate_device()
        context, null_context, pooled = (t.to(device, torch.float32) for t in
                                         (guidance.context, guidance.null_context, guidance.pooled))
        branches = branch_conditionings(context, null_context, pooled, ref.to(device), spatial.to(device),
                                        width, height)
        return io.NodeOutput(branches["C"], branches["U"], branches)


class GoTGuider(comfy.samplers.CFGGuider):
    """GOT_SPEC §9's guidance: eps = sum over branches of w_b eps_b, the branches batched into one UNet call by
    ComfyUI's calc_cond_batch (where memory allows) and branches of weight 0 not run.

    calc_cond_batch returns denoised predictions x - sigma * eps_b rather than eps_b; GoT's branch weights sum to
    1, so the same weighted sum of the denoised predictions is exactly the denoised prediction of GoT's eps.
    ComfyUI's CFG hooks assume a cond/uncond pair and are not applied: sampler_cfg_function,
    sampler_pre_cfg_function, sampler_post_cfg_function (CFG++ samplers, some model patches) and
    sampler_calc_cond_batch_function. The branches are not named positive/negative, so ControlNets marked
    "apply to uncond" and GLIGEN are not spread across them either."""

    def set_guidance(self, branches: dict[str, Conditioning], a_t: float, a_s: float, a_r: float) -> None:
        self.scales = (a_t, a_s, a_r)
        self.branch_names = needed_branches(a_t, a_s, a_r)
        self.inner_set_conds({name: branches[name] for name in self.branch_names})

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict = {},
                      seed: int | None = None) -> torch.Tensor:  # noqa: B006 - CFGGuider's signature
        conds = [self.conds[name] for name in self.branch_names]
        denoised = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        return combine_branches(dict(zip(self.branch_names, denoised)), *self.scales)


def _scale_input(name: str, default: float, edit: float, meaning: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=-30.0, max=30.0, step=0.1, round=0.01,
                          tooltip=f"{meaning}. GoT's default is {default} for text-to-image, {edit} for editing.")


class GoTGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTGuider",
            display_name="GoT Guider",
            category="GoT/sampling",
            description="GoT's three-scale classifier-free guidance over the branches of the SSGM Conditioner: "
                        "eps = eps_U + a_t (eps_T - eps_I) + a_s (eps_C - eps_T) + a_r (eps_I - eps_U). Connect to "
                        "SamplerCustomAdvanced. Branches with weight 0 are skipped (U at the text-to-image defaults).",
            inputs=[
                io.Model.Input("model", tooltip="GoT's 12-channel UNet (GoT UNet Loader), with any patches or LoRAs."),
                GotBranches.Input("branches", tooltip="The four branch conditionings from the GoT SSGM Conditioner."),
                _scale_input("a_t", T2I_SCALES.text, EDIT_SCALES.text, "Text (semantic) guidance scale a_t"),
                _scale_input("a_s", T2I_SCALES.spatial, EDIT_SCALES.spatial, "Spatial (box layout) guidance scale a_s"),
                _scale_input("a_r", T2I_SCALES.reference, EDIT_SCALES.reference, "Reference (source image) guidance scale a_r"),
            ],
            outputs=[io.Guider.Output("guider", display_name="guider",
                                      tooltip="A guider for SamplerCustomAdvanced running GoT's guidance.")],
        )

    @classmethod
    def execute(cls, model, branches: dict[str, Conditioning], a_t: float, a_s: float, a_r: float) -> io.NodeOutput:
        guider = GoTGuider(model)
        guider.set_guidance(branches, a_t, a_s, a_r)
        return io.NodeOutput(guider)


NODES: list[type[io.ComfyNode]] = [GoTSSGMConditioner, GoTGuiderNode]
