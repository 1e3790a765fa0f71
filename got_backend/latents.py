"""The spatial and reference latents of GoT's 12-channel UNet input (GOT_SPEC §7, §8).

Both are VAE *modes*, not multiplied by the scaling factor. `Encode` is whatever VAE the caller has: it takes
pixels [B, 3, H, W] in [-1, 1] (float32, on the CPU) and returns latents [B, 4, H/8, W/8]; `vae_mode_encoder`
makes one from a diffusers AutoencoderKL.

Images are [1, 3, H, W] floats in [0, 1] (channels first; ComfyUI's [B, H, W, C] IMAGE is permuted by the
caller). The reference opens its source image with PIL (uint8) and resizes it with PIL's bicubic filter, so
an image is turned into uint8 by rounding x*255 (the exact inverse of ComfyUI's LoadImage, which divides by
255) and resized by PIL as well: a file loaded in ComfyUI gives the reference's numbers exactly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from .chain import GoTChain
from .layout import color_canvases, uint8_to_signed

Encode = Callable[[torch.Tensor], torch.Tensor]
LATENT_FACTOR = 8


class LatentInputError(ValueError):
    """An image or output size the guidance latents cannot be made from."""


def spatial_latent(chain: GoTChain, encode: Encode, width: int, height: int, *,
                   batch_size: int | None = None) -> torch.Tensor:
    """[1, 4, H/8, W/8]: the mean of the latents of the coloured boxes' canvases, or the latent of a black
    image when no box has a colour. The reference encodes one canvas per call; here they go through `encode`
    in batches of `batch_size` (all at once by default; smaller batches need less VRAM at large sizes)."""
    check_output_size(width, height)
    canvases = color_canvases(chain, width, height)
    if len(canvases) == 0:
        canvases = black_pixels(width, height)
    step = len(canvases) if batch_size is None else batch_size
    if not isinstance(step, int) or step < 1:
        raise LatentInputError(f"batch_size must be a positive number of canvases or None, got {batch_size!r}")
    latents = torch.cat([encode(canvases[i:i + step]) for i in range(0, len(canvases), step)])
    return latents.mean(dim=0, keepdim=True)


def reference_latent(image: torch.Tensor | None, encode: Encode, width: int, height: int) -> torch.Tensor:
    """[1, 4, H/8, W/8]: the source image resized to the output size (PIL bicubic, aspect not kept), or a
    black image for text-to-image (image None)."""
    check_output_size(width, height)
    if image is None:
        return encode(black_pixels(width, height))
    pixels = to_uint8_pil(check_rgb_image(image)).resize((width, height), Image.BICUBIC)
    return encode(uint8_to_signed(torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None]))


def black_pixels(width: int, height: int) -> torch.Tensor:
    """An all-black image [1, 3, H, W] in [-1, 1]."""
    return torch.full((1, 3, height, width), -1.0, dtype=torch.float32)


def to_uint8_pil(image: torch.Tensor) -> Image.Image:
    """A checked [1, 3, H, W] image in [0, 1] as an RGB PIL image (round(x * 255))."""
    levels = image[0].detach().to("cpu", torch.float32).mul(255).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).contiguous().numpy())


def check_rgb_image(image: torch.Tensor) -> torch.Tensor:
    """`image` if it is one RGB image [1, 3, H, W] of finite floats in [0, 1]; otherwise a LatentInputError
    that says how to fix it."""
    if not isinstance(image, torch.Tensor):
        raise LatentInputError(f"expected the image as a torch tensor [1, 3, H, W], got {type(image).__name__}")
    shape = tuple(image.shape)
    if image.dim() != 4:
        hint = " (add the batch dimension: image[None])" if image.dim() == 3 else ""
        raise LatentInputError(f"expected one image shaped [1, 3, H, W], got shape {list(shape)}{hint}")
    if shape[1] != 3:
        raise LatentInputError(f"expected an RGB image [1, 3, H, W], got shape {list(shape)}: {_channel_hint(shape)}")
    if shape[0] != 1:
        raise LatentInputError(f"got a batch of {shape[0]} images; GoT edits one image at a time: pick one "
                               f"(ComfyUI's 'ImageFromBatch' node, or image[i:i+1])")
    if shape[2] == 0 or shape[3] == 0:
        raise LatentInputError(f"the image is empty (shape {list(shape)})")
    if not image.is_floating_point():
        raise LatentInputError(f"expected float pixels in [0, 1], got dtype {image.dtype} "
                               f"(for 0..255 values use image.float() / 255)")
    low, high = image.min().item(), image.max().item()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise LatentInputError("the image holds NaN or infinite values")
    if low < 0 or high > 1:
        hint = " (it looks like [-1, 1]: use (image + 1) / 2)" if low >= -1 and high <= 1 else ""
        raise LatentInputError(f"pixel values must lie in [0, 1], found {low:.4g}..{high:.4g}{hint}")
    return image


def check_output_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % LATENT_FACTOR:
            raise LatentInputError(f"{name} must be a positive multiple of {LATENT_FACTOR} pixels (the VAE "
                                   f"downsamples by {LATENT_FACTOR}), got {value!r}")


def source_aspect_size(source: tuple[int, int], short_side: int) -> tuple[int, int]:
    """GOT_SPEC §9: an edit's final size, the source's (width, height) aspect ratio with the short side
    `short_side`, the long side truncated with int() as the reference does (it renders square, so its render size
    is the short side)."""
    source_w, source_h = source
    if source_w < source_h:
        return short_side, int(short_side * source_h / source_w)
    return int(short_side * source_w / source_h), short_side


def vae_mode_encoder(vae: torch.nn.Module) -> Encode:
    """Encode with a diffusers AutoencoderKL: the latent distribution's mode, unscaled, in the VAE's dtype."""
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    return encode


def _channel_hint(shape: tuple[int, ...]) -> str:
    channels = shape[1]
    if shape[-1] in (1, 3, 4) and channels not in (1, 3, 4):
        return "this looks channels-last [B, H, W, C] (ComfyUI's IMAGE layout); use image.permute(0, 3, 1, 2)"
    if channels == 1:
        return "a grayscale image; repeat it to three channels with image.expand(-1, 3, -1, -1)"
    if channels == 4:
        return "an RGBA image; drop the alpha channel with image[:, :3] (or composite it over a background first)"
    return f"{channels} channels; convert the image to RGB"
