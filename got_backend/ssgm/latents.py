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

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import GoTError
from ..images import check_rgb_image, to_uint8_pil, uint8_to_signed
from .chain import GoTChain
from .layout import color_canvases
from .typed_plan import check_plan_objects
from .sizes import check_output_size

Encode = Callable[[torch.Tensor], torch.Tensor]
BatchCallback = Callable[[int, int], None]  # (canvases encoded so far, canvases in all)
# Canvases drawn and encoded at once: at most four, and at most four of GoT's 1024x1024 in pixels. Cancel takes
# effect between batches, so one batch is the longest Cancel waits for.
BATCH_CANVASES = 4
BATCH_PIXELS = 4 * 1024 * 1024


class LatentInputError(GoTError):
    """Settings the guidance latents cannot be made with."""


def spatial_latent(chain: GoTChain, encode: Encode, width: int, height: int, *,
                   batch_size: int | None = None, on_batch: BatchCallback | None = None) -> torch.Tensor:
    """[1, 4, H/8, W/8]: the mean of the latents of the coloured boxes' canvases, or the latent of a black
    image when no box has a colour. The reference encodes one canvas per call; here they are drawn and go
    through `encode` in batches of `batch_size` (by default BATCH_CANVASES, fewer above BATCH_PIXELS), and the mean is
    accumulated, so memory does not grow with the number of boxes. `on_batch(done, total)` is called before
    each batch (a node checks Cancel there). The box count and every colour are checked before any work."""
    check_output_size(width, height)
    check_plan_objects(chain)  # the box count and every colour, before anything is encoded
    step = max(1, min(BATCH_CANVASES, BATCH_PIXELS // (width * height))) if batch_size is None else batch_size
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise LatentInputError(f"batch_size must be a positive number of canvases or None, got {batch_size!r}")
    drawn = chain.colored
    if not drawn:
        return encode(black_pixels(width, height))
    total, latents = None, None
    for start in range(0, len(drawn), step):
        if on_batch is not None:
            on_batch(start, len(drawn))
        latents = encode(color_canvases(replace(chain, objects=drawn[start:start + step]), width, height))
        part = latents.sum(dim=0, keepdim=True, dtype=torch.float32)
        total = part if total is None else total + part
    if on_batch is not None:
        on_batch(len(drawn), len(drawn))
    return (total / len(drawn)).to(latents.dtype)


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
