"""GoT Guider: GoT's own 4-branch guidance (docs/ALGORITHM.md §9) for SamplerCustomAdvanced."""

from __future__ import annotations

import torch
from comfy_api.latest import io
from typing_extensions import override

import comfy.samplers

from ..got_backend.ssgm.guidance import EDIT_SCALES, T2I_SCALES, combine_branches, needed_branches
from .types import Conditioning, GotBranches


class GoTGuider(comfy.samplers.CFGGuider):
    """docs/ALGORITHM.md §9's guidance: eps = sum over branches of w_b eps_b, the branches batched into one UNet call by
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

    @override
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


NODES: list[type[io.ComfyNode]] = [GoTGuiderNode]
