"""The spatial and reference latents of GoT's 12-channel UNet input (docs/ALGORITHM.md §7, §8).

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

from ..errors import GoTError
from ..images import check_rgb_image, to_uint8_pil, uint8_to_signed
from .chain import GoTChain
from .layout import color_canvases
from .sizes import check_output_size

Encode = Callable[[torch.Tensor], torch.Tensor]


class LatentInputError(GoTError):
    """Settings the guidance latents cannot be made with."""


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


def vae_mode_encoder(vae: torch.nn.Module) -> Encode:
    """Encode with a diffusers AutoencoderKL: the latent distribution's mode, unscaled, in the VAE's dtype."""
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    return encode
