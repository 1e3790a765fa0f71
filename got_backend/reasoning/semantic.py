"""Semantic guidance (docs/ALGORITHM.md §6): the MLLM's final hidden states at the 64 image-query tokens, projected."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IMAGE_QUERY_COUNT = 64


@dataclass(frozen=True)
class SemanticGuidance:
    """What the UNet is conditioned on (float32, on the MLLM's device)."""

    context: torch.Tensor  # output_projector(h): the cross-attention tokens [1, 64, 2048]
    pooled: torch.Tensor  # mean over the 64 tokens of output_projector_add(h): SDXL's text_embeds [1, 1280]
    null_context: torch.Tensor  # output_projector(zeros): the unconditional context [1, 64, 2048]
    hidden_states: torch.Tensor  # h, the final-norm hidden states at the 64 query tokens [1, 64, D]
    reused_tokens: int  # tokens whose KV came from the generation cache (0: one full forward)


def project(hidden_states: torch.Tensor, output_projector: nn.Linear, output_projector_add: nn.Linear,
            reused_tokens: int) -> SemanticGuidance:
    """Apply GoT's two projectors to h [1, 64, D] (in the projectors' dtype and device)."""
    weight = output_projector.weight
    h = hidden_states.to(device=weight.device, dtype=weight.dtype)
    return SemanticGuidance(
        context=output_projector(h),
        pooled=output_projector_add(h).mean(dim=1),
        null_context=output_projector(torch.zeros_like(h)),
        hidden_states=h,
        reused_tokens=reused_tokens,
    )


def projectors_from_state(state: dict[str, torch.Tensor],
                          dtype: torch.dtype = torch.float32) -> tuple[nn.Linear, nn.Linear]:
    """`output_projector` and `output_projector_add` from a state dict with keys
    `output_projector.{weight,bias}` and `output_projector_add.{weight,bias}`."""
    layers = []
    for name in ("output_projector", "output_projector_add"):
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=True, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        layers.append(layer.eval().requires_grad_(False))
    return layers[0], layers[1]
