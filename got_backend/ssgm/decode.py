"""Decoding (docs/ALGORITHM.md §9): final latents to pixels through the VAE."""

from __future__ import annotations

import torch


def decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Final latents -> pixels [1, 3, H, W] float32 in [0, 1]: latents / scaling factor through the VAE, then
    (x / 2 + 0.5) clamped, computed in the VAE's dtype as the reference does."""
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return (pixels / 2 + 0.5).clamp(0, 1).float()
