"""Small adapters between GoT's diffusers-side conventions and ComfyUI's objects.

- UNet weights: the converter writes diffusers `UNet2DConditionModel` names; ComfyUI's `UNetModel` uses the
  original SGM names. `comfy.utils.unet_to_diffusers` gives the name map once the block structure is known, and
  the structure is read off the diffusers keys themselves (ComfyUI's own detector only knows 4/8/9-channel UNets).
- VAE: got_backend.ssgm.latents wants `encode(pixels [B,3,H,W] in [-1,1]) -> unscaled VAE mode`; ComfyUI's
  `VAE.encode` takes [B,H,W,C] in [0,1] and returns exactly that kind of latent (its SDXL VAE regulariser takes
  the distribution's mode and leaves scaling to the model's `process_latent_in`).
"""

from __future__ import annotations

import torch

import comfy.model_detection
import comfy.utils
from ..got_backend.errors import GoTError


class UNetWeightsError(GoTError):
    """The file's tensors do not form a UNet this pack can load."""


def _count(keys: list[str], pattern: str) -> int:
    return comfy.model_detection.count_blocks(keys, pattern)


def diffusers_unet_structure(sd: dict[str, torch.Tensor]) -> dict:
    """Block structure of a diffusers UNet2DConditionModel state dict, in ComfyUI's unet_config terms."""
    keys = list(sd)
    model_channels = sd["conv_in.weight"].shape[0]
    levels = _count(keys, "down_blocks.{}.")
    num_res_blocks, channel_mult, depth_in, depth_out = [], [], [], []
    for level in range(levels):
        resnets = _count(keys, f"down_blocks.{level}.resnets.{{}}.")
        num_res_blocks.append(resnets)
        channel_mult.append(sd[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0] // model_channels)
        depth_in += [_count(keys, f"down_blocks.{level}.attentions.{i}.transformer_blocks.{{}}.") for i in range(resnets)]
    for level in range(levels):
        resnets = _count(keys, f"up_blocks.{level}.resnets.{{}}.")
        if resnets != num_res_blocks[levels - 1 - level] + 1:
            raise UNetWeightsError(
                f"up_blocks.{level} has {resnets} resnets but its down block has {num_res_blocks[levels - 1 - level]}: "
                "not an SDXL-structured UNet")
        depth_out += [_count(keys, f"up_blocks.{level}.attentions.{i}.transformer_blocks.{{}}.") for i in range(resnets)]
    return {
        "num_res_blocks": num_res_blocks,
        "channel_mult": channel_mult,
        "transformer_depth": depth_in,
        # unet_to_diffusers pops output depths from the end, starting with up_blocks.0 (lowest resolution).
        "transformer_depth_output": depth_out[::-1],
        "transformer_depth_middle": _count(keys, "mid_block.attentions.0.transformer_blocks.{}."),
    }


def diffusers_unet_to_comfy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet state dict to ComfyUI's names; every tensor must find a place."""
    try:
        structure = diffusers_unet_structure(sd)
    except KeyError as err:
        raise UNetWeightsError(f"the UNet has no tensor {err}, which every SDXL-structured diffusers UNet has") from err
    name_map = comfy.utils.unet_to_diffusers(structure)
    unplaced = sorted(k for k in sd if k not in name_map)
    if unplaced:
        raise UNetWeightsError(f"{len(unplaced)} UNet tensors have no ComfyUI name (first: {unplaced[:5]}); "
                               "the file is not an SDXL-structured diffusers UNet")
    return {name_map[k]: v for k, v in sd.items()}


def comfy_unet_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UNet state dict in ComfyUI names, from diffusers names (the converter's output) or ComfyUI names
    (a UNet saved by ComfyUI itself, with or without the checkpoint prefix `model.diffusion_model.`)."""
    if "conv_in.weight" in sd:
        return diffusers_unet_to_comfy(sd)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    stripped = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    state = stripped if stripped else sd
    if "input_blocks.0.0.weight" not in state:
        raise UNetWeightsError("found neither `conv_in.weight` (diffusers names) nor `input_blocks.0.0.weight` "
                               "(ComfyUI names): this file does not hold a UNet")
    return state
