"""GoT Guider: GoT's own 4-branch guidance (docs/ALGORITHM.md §9) for SamplerCustomAdvanced."""

from __future__ import annotations

import torch
from comfy_api.latest import io
from typing_extensions import override

import comfy.samplers

from ..got_backend.ssgm.denoise import check_finite_latents
from ..got_backend.ssgm.guidance import (EDIT_SCALES, SCALE_LIMIT, T2I_SCALES, cfg_pair, combine_branches,
                                         needed_branches)
from .comfy_bridge import cancellable_forward, check_widget_number
from .types import BranchesSocket, ComfyConditioning

UNET_CANCEL_DEPTH = 2  # the UNet's blocks (input_blocks[i], middle_block[i], output_blocks[i])


class GoTGuider(comfy.samplers.CFGGuider):
    """docs/ALGORITHM.md §9's guidance: eps = sum over branches of w_b eps_b, the branches batched into one UNet call by
    ComfyUI's calc_cond_batch (where memory allows) and branches of weight 0 not run.

    calc_cond_batch returns denoised predictions x - sigma * eps_b rather than eps_b; GoT's branch weights sum to
    1, so the same weighted sum of the denoised predictions is exactly the denoised prediction of GoT's eps.

    GoT's combination is the CFG, and ComfyUI's CFG hooks are re-run around it, as core's own multi-branch
    guider does (comfy_extras/nodes_perpneg.py): sampler_pre_cfg_function on the branch predictions, then
    sampler_cfg_function (e.g. RescaleCFG) and sampler_post_cfg_function (CFG++ samplers, CFGNorm, ...) on a
    cond/uncond pair whose plain CFG is GoT's guidance (guidance.cfg_pair: cond = branch C, the full guidance).
    sampler_calc_cond_batch_function is not applied, and the branches are not named positive/negative, so
    ControlNets marked "apply to uncond" and GLIGEN are not spread across them."""

    def set_guidance(self, branches: dict[str, ComfyConditioning], a_t: float, a_s: float, a_r: float,
                     node: str = "GoT Guider") -> None:
        for name, value in (("a_t", a_t), ("a_s", a_s), ("a_r", a_r)):
            check_widget_number(node, name, value, -SCALE_LIMIT, SCALE_LIMIT)
        self.scales = (a_t, a_s, a_r)
        self.branch_names = needed_branches(a_t, a_s, a_r)
        self.inner_set_conds({name: branches[name] for name in self.branch_names})

    @override
    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """CFGGuider's sampling, Cancel checked before each UNet block, then a check that the result is finite,
        naming what made it not."""
        with cancellable_forward(self.model_patcher.model.diffusion_model, depth=UNET_CANCEL_DEPTH):
            latents = super().sample(noise, latent_image, *args, **kwargs)
        return check_finite_latents(latents, self.nan_cause(noise))

    def nan_cause(self, noise: torch.Tensor) -> str:
        """The first input that is itself not finite, or else the UNet's arithmetic."""
        for name in self.branch_names:
            for cond in self.original_conds.get(name, []):
                tensors = [v for v in cond.values() if isinstance(v, torch.Tensor)]  # cross_attn, noise_concat, ...
                if any(not torch.isfinite(t).all() for t in tensors):
                    return (f"the conditioning of branch {name} from the GoT SSGM Conditioner already holds NaN or "
                            "infinite values (its semantic tokens or its reference/spatial latents): check the GoT MLLM "
                            "and the VAE (an fp16 VAE can overflow; use SDXL's fp16-fix VAE or a bf16/fp32 one)")
        unet = self.model_patcher.model.diffusion_model
        damaged = next((name for name, p in unet.named_parameters() if not torch.isfinite(p).all()), None)
        if damaged is not None:
            return (f"GoT's UNet's weights hold NaN or infinite values (first in {damaged}): the UNet file is "
                    "damaged; convert the GoT-6B release again (`python -m got_backend.convert`) and pick its "
                    "GoT-6B-unet.safetensors")
        if not torch.isfinite(noise).all():
            return "the noise fed to the sampler is not finite: check the node that makes the noise"
        return (f"GoT's UNet overflowed while sampling with a_t={self.scales[0]}, a_s={self.scales[1]}, "
                f"a_r={self.scales[2]}: use scales nearer GoT's defaults ({T2I_SCALES.text}, {T2I_SCALES.spatial}, "
                f"{T2I_SCALES.reference}), or load the UNet with weight_dtype 'default' instead of fp8 (or start "
                "ComfyUI with --force-fp32)")

    @override
    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict = {},
                      seed: int | None = None) -> torch.Tensor:  # noqa: B006 - CFGGuider's signature
        conds = [self.conds[name] for name in self.branch_names]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.scales[0], "timestep": timestep,
                      "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        denoised = dict(zip(self.branch_names, out))
        return self.patched_cfg(x, timestep, denoised, combine_branches(denoised, *self.scales), model_options)

    def patched_cfg(self, x: torch.Tensor, timestep: torch.Tensor, denoised: dict[str, torch.Tensor],
                    guided: torch.Tensor, model_options: dict) -> torch.Tensor:
        """What comfy.samplers.cfg_function does after its plain CFG, with GoT's guidance as that CFG."""
        positive = "C" if "C" in denoised else self.branch_names[0]
        cond_pred = denoised[positive]
        uncond_pred, scale = cfg_pair(guided, cond_pred, self.scales[0])
        cond, uncond = self.conds[positive], self.conds.get("U")
        if "sampler_cfg_function" in model_options:
            guided = x - model_options["sampler_cfg_function"]({
                "cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": self.inner_model, "model_options": model_options, "input_cond": cond,
                "input_uncond": uncond})
        for fn in model_options.get("sampler_post_cfg_function", []):
            guided = fn({"denoised": guided, "cond": cond, "uncond": uncond, "cond_scale": scale,
                         "model": self.inner_model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                         "sigma": timestep, "model_options": model_options, "input": x})
        return guided


def _scale_input(name: str, default: float, edit: float, meaning: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=-SCALE_LIMIT, max=SCALE_LIMIT, step=0.1, round=0.01,
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
                BranchesSocket.Input("branches", tooltip="The four branch conditionings from the GoT SSGM Conditioner."),
                _scale_input("a_t", T2I_SCALES.text, EDIT_SCALES.text, "Text (semantic) guidance scale a_t"),
                _scale_input("a_s", T2I_SCALES.spatial, EDIT_SCALES.spatial, "Spatial (box layout) guidance scale a_s"),
                _scale_input("a_r", T2I_SCALES.reference, EDIT_SCALES.reference, "Reference (source image) guidance scale a_r"),
            ],
            outputs=[io.Guider.Output("guider", display_name="guider",
                                      tooltip="A guider for SamplerCustomAdvanced running GoT's guidance.")],
        )

    @classmethod
    def execute(cls, model, branches: dict[str, ComfyConditioning], a_t: float, a_s: float,
                a_r: float) -> io.NodeOutput:
        guider = GoTGuider(model)
        guider.set_guidance(branches, a_t, a_s, a_r)
        return io.NodeOutput(guider)


NODES: list[type[io.ComfyNode]] = [GoTGuiderNode]
