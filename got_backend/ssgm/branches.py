"""The four guidance branches as UNet inputs (docs/ALGORITHM.md §9's table): which context each branch sees and
its 8 extra input channels (reference and spatial latents, zeros where the branch leaves them out)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GoTError
from .guidance import BRANCH_INPUTS
from .sizes import check_latent


class BranchError(GoTError):
    """Conditioning whose parts do not fit together."""


def branch_extra_channels(name: str, reference: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
    """Branch `name`'s extra UNet input [B, 8, h, w]: reference ‖ spatial, each zeroed where the branch omits it."""
    inputs = BRANCH_INPUTS[name]
    return torch.cat([reference if inputs.reference else torch.zeros_like(reference),
                      spatial if inputs.spatial else torch.zeros_like(spatial)], dim=1)


@dataclass(frozen=True)
class Conditioning:
    """Everything the UNet is conditioned on, for one image (batch 1)."""

    context: torch.Tensor  # c [1, 64, D]: output_projector(h)
    null_context: torch.Tensor  # c0 [1, 64, D]: output_projector(0)
    pooled: torch.Tensor  # p [1, P]: SDXL's text_embeds, never nulled
    reference: torch.Tensor  # [1, 4, h, w] VAE mode of the source (black for text-to-image), unscaled
    spatial: torch.Tensor  # [1, 4, h, w] mean VAE mode of the coloured boxes, unscaled

    def check(self, width: int, height: int) -> None:
        for name in ("reference", "spatial"):
            check_latent(f"{name} latent", tuple(getattr(self, name).shape), width, height,
                         "encode it at the output size")
        if self.context.shape != self.null_context.shape:
            raise BranchError(f"context {tuple(self.context.shape)} and null context "
                              f"{tuple(self.null_context.shape)} differ in shape")


def add_time_ids(width: int, height: int) -> torch.Tensor:
    """SDXL's micro-conditioning: original size (H, W), crop top-left (0, 0), target size (H, W)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)


def branch_batch(cond: Conditioning, branches: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's cross-attention context [B, 64, D] and extra input channels [B, 8, h, w] (reference,
    spatial) for `branches`, in that order (docs/ALGORITHM.md §9's table)."""
    contexts, extras = [], []
    for name in branches:
        contexts.append(cond.context if BRANCH_INPUTS[name].context == "c" else cond.null_context)
        extras.append(branch_extra_channels(name, cond.reference, cond.spatial))
    return torch.cat(contexts), torch.cat(extras)
