"""GoT UNet Loader: GoT's 12-channel SDXL UNet as an ordinary ComfyUI MODEL.

The model is a real `comfy.model_base.SDXL` behind a `ModelPatcher`, so LoRAs, model patches, the core KSampler
and SamplerCustomAdvanced all work with it. It is built directly rather than through
`supported_models.SDXL.get_model`, which would turn a UNet with more than 4 input channels into an inpainting
model (mask + masked-image channels). GoT's 8 extra channels (reference latent ‖ spatial latent, unscaled) reach
the UNet through each conditioning's `noise_concat`, which ComfyUI concatenates to the noisy latent as given.
"""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import comfy.utils
import folder_paths

from .comfy_bridge import check_widget_choice
from .unet_keys import UNetWeightsError, comfy_unet_state
from ..got_backend.weights.diffusers_configs import GOT_IN_CHANNELS, SDXL_ADD_TIME_DIM, SDXL_TIME_IDS
from ..got_backend.weights.shapes import state_mismatch, state_shapes
from ..got_backend.weights.state_dicts import RECONVERT, load_tensor_file
from ..got_backend.errors import GoTError

SDXL_TIME_IDS_DIM = SDXL_TIME_IDS * SDXL_ADD_TIME_DIM  # the size/crop embeddings beside the pooled vector (ADM input)

WEIGHT_DTYPES = {
    "default": {},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}


def got_unet_config(state: dict[str, torch.Tensor], where: str = "the UNet") -> dict:
    """ComfyUI's unet_config detected from GoT UNet weights in ComfyUI names, checked to be GoT-shaped."""
    config = comfy.model_detection.detect_unet_config(state, "")
    if config is None or config.get("num_classes") != "sequential" or not config.get("context_dim"):
        raise UNetWeightsError(f"{where} is not an SDXL-structured UNet (no cross-attention or no added "
                               "pooled/size conditioning); GoT needs its own 12-channel SDXL UNet")
    channels = config["in_channels"]
    if channels != GOT_IN_CHANNELS:
        kind = {4: "a plain SDXL UNet", 8: "an instruct-pix2pix-style UNet", 9: "an SDXL inpainting UNet"}.get(
            channels, "a UNet")
        raise UNetWeightsError(
            f"{where} has {channels} input channels ({kind}); GoT's UNet takes {GOT_IN_CHANNELS} (latent, reference, "
            "spatial). Convert the GoT-6B release with `python -m got_backend.convert` and pick "
            "GoT-6B-unet.safetensors")
    if config["out_channels"] != 4 or (config["adm_in_channels"] or 0) <= SDXL_TIME_IDS_DIM:
        raise UNetWeightsError(f"{where} has {config['out_channels']} output channels and an added-conditioning "
                               f"input of {config['adm_in_channels']}; GoT's SDXL UNet has 4 and pooled + {SDXL_TIME_IDS_DIM}")
    return config


class GoTConditioningError(GoTError):
    """Conditioning that does not give GoT's UNet its 8 extra channels at the sampled latent's size."""


def check_got_channels(executor, x: torch.Tensor, t: torch.Tensor, c_concat: torch.Tensor | None = None,
                       *args, **kwargs) -> torch.Tensor:
    """APPLY_MODEL wrapper: a clear error for the usual wiring mistakes, instead of a shape mismatch deep
    inside the UNet."""
    extra = GOT_IN_CHANNELS - x.shape[1]
    if c_concat is None or c_concat.shape[1] != extra:
        found = "none" if c_concat is None else str(c_concat.shape[1])
        raise GoTConditioningError(
            f"GoT's UNet takes {extra} extra input channels (reference and spatial latents) in every conditioning "
            f"it samples with, positive and negative, but got {found}: use the GoT SSGM Conditioner's outputs, "
            "not CLIP Text Encode or conditioning from another model")
    if c_concat.shape[-2:] != x.shape[-2:]:
        raise GoTConditioningError(
            f"the latent being sampled is {x.shape[-1] * 8}x{x.shape[-2] * 8} pixels but the GoT conditioning was "
            f"made for {c_concat.shape[-1] * 8}x{c_concat.shape[-2] * 8}: give the empty latent the width and "
            "height of the SSGM Conditioner and Reference Encoder")
    return executor(x, t, c_concat, *args, **kwargs)


def build_got_unet(state: dict[str, torch.Tensor], model_options: dict | None = None,
                   where: str = "the UNet") -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around a 12-channel `model_base.SDXL` holding `state` (ComfyUI names)."""
    model_options = model_options or {}
    model_config = comfy.supported_models.SDXL(got_unet_config(state, where))
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    dtype = model_options.get("dtype") or comfy.model_management.unet_dtype(
        model_params=comfy.utils.calculate_parameters(state), supported_dtypes=model_config.supported_inference_dtypes,
        weight_dtype=comfy.utils.weight_dtype(state))
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    if model_options.get("fp8_optimizations", False):
        model_config.optimizations["fp8"] = True
    model = comfy.model_base.SDXL(model_config, model_type=model_config.model_type(state))
    mismatch = state_mismatch(state_shapes(model.diffusion_model.state_dict()), state)
    missing, wrong = sorted(mismatch.missing), sorted(name for name, _, _ in mismatch.misshaped)
    if missing or wrong:  # keys beyond the UNet's (e.g. a whole checkpoint's) are left to load_model_weights
        raise UNetWeightsError(f"{where}: {len(missing)} UNet tensors missing (first: {missing[:3]}), "
                               f"{len(wrong)} with the wrong shape (first: {wrong[:3]})")
    model = model.to(offload_device)
    model.load_model_weights(state, "")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "got_channels", check_got_channels)
    return patcher


def load_got_unet(path: str, model_options: dict | None = None) -> comfy.model_patcher.ModelPatcher:
    """Load a converted GoT UNet file (diffusers or ComfyUI names) as a ComfyUI MODEL."""
    return build_got_unet(comfy_unet_state(load_tensor_file(Path(path), fix=RECONVERT)), model_options, path)


class GoTUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTUNetLoader",
            display_name="GoT UNet Loader",
            category="GoT/loaders",
            description="Loads GoT's fine-tuned SDXL UNet (12 input channels: noisy latent, reference latent, "
                        "spatial latent) as a normal MODEL for KSampler, SamplerCustomAdvanced and LoRA nodes.",
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="A converted GoT UNet in models/diffusion_models (GoT-6B-unet.safetensors, "
                                       "written by `python -m got_backend.convert` from the GoT-6B release). "
                                       "A plain 4-channel SDXL UNet is refused."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Weight precision, as in the core Load Diffusion Model node: 'default' lets "
                                       "ComfyUI choose; fp8 variants halve memory at some cost in quality."),
            ],
            outputs=[io.Model.Output("model", display_name="model",
                                     tooltip="GoT's 12-channel SDXL UNet; feed it conditioning from the GoT SSGM "
                                             "Conditioner (which carries the 8 extra channels).")],
        )

    # ComfyUI 0.3.64 does not check V3 combo values against their options: a workflow could name any path. Only
    # unet_name is checked at queue time, as ComfyUI files validate_inputs' message under each of its arguments;
    # weight_dtype is checked when the node runs, before anything loads.
    @classmethod
    def validate_inputs(cls, unet_name: str) -> bool | str:
        if unet_name not in folder_paths.get_filename_list("diffusion_models"):
            return (f"{unet_name!r} is not a file in ComfyUI's diffusion_models folders; put the converted "
                    "GoT-6B-unet.safetensors there and pick it from the list")
        return True

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str) -> io.NodeOutput:
        check_widget_choice("GoT UNet Loader", "weight_dtype", weight_dtype, list(WEIGHT_DTYPES))
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        return io.NodeOutput(load_got_unet(path, WEIGHT_DTYPES[weight_dtype]))


NODES: list[type[io.ComfyNode]] = [GoTUNetLoader]
