"""Semantic guidance (docs/ALGORITHM.md §6): the MLLM's final hidden states at the 64 image-query tokens, projected."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .decoder_slot import DecoderSlot
from .conversation import TokenSequence, forward_sequence, model_device

IMAGE_QUERY_COUNT = 64


@dataclass(frozen=True)
class SemanticGuidance:
    """What the UNet is conditioned on (float32, on the MLLM's device)."""

    context: torch.Tensor  # output_projector(h): the cross-attention tokens [1, 64, 2048]
    pooled: torch.Tensor  # mean over the 64 tokens of output_projector_add(h): SDXL's text_embeds [1, 1280]
    null_context: torch.Tensor  # output_projector(zeros): the unconditional context [1, 64, 2048]
    hidden_states: torch.Tensor  # h, the final-norm hidden states at the 64 query tokens [1, 64, D]
    reused_tokens: int  # tokens whose KV came from the generation cache (0: one full forward)


def compute_semantic_guidance(model: nn.Module, slot: DecoderSlot, sequence: TokenSequence, edited: bool,
                              output_projector: nn.Linear, output_projector_add: nn.Linear) -> SemanticGuidance:
    """§6 for `sequence`: a chain ending with <|im_gen_start|>, then the 64 image queries. An `edited` chain is
    read in one full forward, as the reference does; otherwise the KV cache the generation left in `slot` is
    reused and only <|im_gen_start|> + the 64 queries run."""
    with slot.guard(), torch.inference_mode():
        if edited:
            _, states = forward_sequence(model, sequence, hidden=True)
            reused = 0
        else:
            fed = slot.acquire(len(sequence.ids)).feed(sequence, hidden=True, run_last=IMAGE_QUERY_COUNT)
            states, reused = fed.hidden, fed.reused
    output_projector.to(model_device(model))
    output_projector_add.to(model_device(model))
    with torch.no_grad():  # outside inference mode: the caller gets ordinary tensors
        return project(states[:, -IMAGE_QUERY_COUNT:].clone(), output_projector, output_projector_add, reused)


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
