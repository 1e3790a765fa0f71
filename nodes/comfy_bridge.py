"""The node helpers between ComfyUI's conventions and got_backend's: image layout, text on the node, the size
widget and the VAE encode callable.

- Images: ComfyUI's IMAGE is [B, H, W, C] in [0, 1]; the backend takes [B, C, H, W].
- VAE: got_backend.ssgm.latents wants `encode(pixels [B,3,H,W] in [-1,1]) -> unscaled VAE mode`; ComfyUI's
  `VAE.encode` takes [B,H,W,C] in [0,1] and returns exactly that kind of latent (its SDXL VAE regulariser takes
  the distribution's mode and leaves scaling to the model's `process_latent_in`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from comfy_api.latest import io


def comfy_image(image: torch.Tensor | None) -> torch.Tensor | None:
    """ComfyUI's IMAGE [B, H, W, C] as the backend's [B, C, H, W] (the backend refuses B > 1 and C != 3)."""
    return None if image is None else image.movedim(-1, 1)


def show_on_node(node_id: str | None, text: str) -> None:
    """Text on the node in the frontend (its progress-text preview); nothing when run outside a prompt."""
    if node_id is not None:
        from server import PromptServer  # imported late: only a running ComfyUI server has an instance

        PromptServer.instance.send_progress_text(text, node_id)


def vae_encode_fn(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """got_backend.ssgm.latents' `encode` callable over a ComfyUI VAE: [B,3,H,W] in [-1,1] -> unscaled mode latent."""
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return vae.encode(((pixels + 1.0) / 2.0).movedim(1, -1))
    return encode


def size_input(name: str, purpose: str) -> io.Int.Input:
    """An output-size widget (docs/ALGORITHM.md §9: 1024 by default), in steps of 8 like the core Empty Latent Image."""
    return io.Int.Input(name, default=1024, min=64, max=8192, step=8,
                        tooltip=f"Output image {name} in pixels (GoT renders 1024x1024); {purpose}")
