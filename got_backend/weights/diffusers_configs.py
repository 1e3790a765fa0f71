"""diffusers configs of GoT's UNet and VAE, read off their tensors' shapes, and checked by building the model.

Only what shapes cannot tell is taken from SDXL (docs/ALGORITHM.md §1: GoT's UNet and VAE are SDXL's): sample size,
group-norm groups, 64-channel attention heads, the VAE's scaling factor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .shapes import meta_model, state_shapes
from ..errors import GoTError

SDXL_HEAD_CHANNELS = 64
SDXL_TIME_IDS = 6  # SDXL's size and crop conditioning: original h, w, crop top, left, target h, w
SDXL_ADD_TIME_DIM = 256  # SDXL's `addition_time_embed_dim`: sinusoid channels per time id
GOT_IN_CHANNELS = 12  # GoT's UNet input: noisy latent (4) + reference latent (4) + spatial latent (4), §9
SDXL_VAE_SCALING = 0.13025

Shapes = Mapping[str, torch.Size]


class ConfigInferenceError(GoTError):
    """The tensors do not form a UNet/VAE of the supported (SDXL-like) structure."""


def _count(shapes: Shapes, prefix: str) -> int:
    """How many numbered children `prefix.N.` exist."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for m in map(pattern.match, shapes) if m})


def _shape(shapes: Shapes, key: str, part: str) -> torch.Size:
    if key not in shapes:
        raise ConfigInferenceError(f"the {part} has no tensor {key!r}, which every SDXL-structured {part} has")
    return shapes[key]


def _has(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def infer_unet_config(shapes: Shapes, pooled_dim: int | None = None) -> dict:
    """UNet2DConditionModel config for an SDXL-structured UNet (any widths/depths, any input channels).

    `pooled_dim` (the pooled text embedding's width, i.e. output_projector_add's output size) separates
    the add-embedding input into text and time-id channels; without it SDXL's 256 per time id is assumed.
    """
    levels = _count(shapes, "down_blocks")
    if levels == 0:
        raise ConfigInferenceError("the UNet has no down_blocks.N tensors; it is not a diffusers UNet2DConditionModel")
    channels = [_shape(shapes, f"down_blocks.{i}.resnets.0.conv1.weight", "UNet")[0] for i in range(levels)]
    down_attention = [_has(shapes, f"down_blocks.{i}.attentions.") for i in range(levels)]
    up_attention = [_has(shapes, f"up_blocks.{i}.attentions.") for i in range(_count(shapes, "up_blocks"))]
    transformer_layers = [max(1, _count(shapes, f"down_blocks.{i}.attentions.0.transformer_blocks"))
                          for i in range(levels)]
    attention = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    if not attention:
        raise ConfigInferenceError("the UNet has no cross-attention (attn2.to_k) tensors")
    proj_in = next((k for k in shapes if k.endswith("attentions.0.proj_in.weight")), None)
    if proj_in is None:
        raise ConfigInferenceError("the UNet has attention blocks without proj_in tensors")
    config = {
        "sample_size": 128,
        "center_input_sample": False,
        "in_channels": _shape(shapes, "conv_in.weight", "UNet")[1],
        "out_channels": _shape(shapes, "conv_out.weight", "UNet")[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if _has(shapes, "mid_block.attentions.") else "UNetMidBlock2D",
        "block_out_channels": channels,
        "layers_per_block": _count(shapes, "down_blocks.0.resnets"),
        "transformer_layers_per_block": transformer_layers,
        "attention_head_dim": [max(1, c // SDXL_HEAD_CHANNELS) for c in channels],  # diffusers: heads per level
        "cross_attention_dim": shapes[attention[0]][1],
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "norm_num_groups": 32,
    }
    if "add_embedding.linear_1.weight" in shapes:
        add_in = shapes["add_embedding.linear_1.weight"][1]
        time_dim = SDXL_ADD_TIME_DIM if pooled_dim is None else (add_in - pooled_dim) // SDXL_TIME_IDS
        if time_dim <= 0 or (pooled_dim is not None and pooled_dim + SDXL_TIME_IDS * time_dim != add_in):
            raise ConfigInferenceError(f"the UNet's add_embedding takes {add_in} inputs, which is not the pooled "
                                       f"embedding ({pooled_dim}) plus 6 time ids of equal width")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=add_in)
    return config


def infer_vae_config(shapes: Shapes) -> dict:
    """AutoencoderKL config of an SDXL-structured VAE."""
    levels = _count(shapes, "encoder.down_blocks")
    if levels == 0:
        raise ConfigInferenceError("the VAE has no encoder.down_blocks.N tensors; it is not a diffusers AutoencoderKL")
    channels = [int(_shape(shapes, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", "VAE")[0]) for i in range(levels)]
    return {
        "in_channels": int(_shape(shapes, "encoder.conv_in.weight", "VAE")[1]),
        "out_channels": int(_shape(shapes, "decoder.conv_out.weight", "VAE")[0]),
        "latent_channels": int(_shape(shapes, "decoder.conv_in.weight", "VAE")[1]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": _count(shapes, "encoder.down_blocks.0.resnets"),
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 1024,
        "scaling_factor": SDXL_VAE_SCALING,
        "force_upcast": True,
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": _has(shapes, "encoder.mid_block.attentions."),
    }


def model_shapes(model_class: type, config: dict) -> dict[str, torch.Size]:
    """Parameter names and shapes of `model_class(**config)`, built on the meta device (no memory)."""
    return state_shapes(meta_model(model_class, **config).state_dict())


def unet_shapes(config: dict) -> dict[str, torch.Size]:
    from diffusers import UNet2DConditionModel

    return model_shapes(UNet2DConditionModel, config)


def vae_shapes(config: dict) -> dict[str, torch.Size]:
    from diffusers import AutoencoderKL

    return model_shapes(AutoencoderKL, config)
