"""One forward over a batch of token sequences of different lengths, for the logits after each one.

The sequences are padded on the right: with causal attention no real token attends to the padding after it,
so no attention mask is needed and each sequence's last real token sees exactly what it would see alone. Its
M-RoPE positions are its own (`positions.mrope_positions`); the pads just count on. Only the last real token's
hidden state goes through the LM head (the full logits of a batch would be batch x length x 152k floats).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..reasoning.conversation import ModelLayout, TokenSequence, model_device
from ..reasoning.positions import mrope_positions
from ..reasoning.tokens import EXPECTED_IDS, ENDOFTEXT

PAD_ID = EXPECTED_IDS[ENDOFTEXT]  # any text token would do: nothing real attends to the pads


def last_token_logits(model: torch.nn.Module, sequences: Sequence[TokenSequence]) -> torch.Tensor:
    """float32 logits [len(sequences), vocab] of the token after each sequence."""
    layout = ModelLayout.of(model)
    device = model_device(model)
    width = max(len(sequence.ids) for sequence in sequences)
    ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    positions = torch.zeros(3, len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        count = len(sequence.ids)
        grids = [image.grid_thw for image in sequence.images]
        own, _ = mrope_positions(sequence.ids, grids, layout.image_pad_id, layout.merge_size)
        ids[row, :count] = torch.tensor(sequence.ids)
        positions[:, row, :count] = own
        positions[:, row, count:] = own[:, -1:] + torch.arange(1, width - count + 1)
    images = [image for sequence in sequences for image in sequence.images]
    kwargs = dict(input_ids=ids.to(device), position_ids=positions.to(device), use_cache=False,
                  output_hidden_states=True, return_dict=True)
    if images:
        kwargs["pixel_values"] = torch.cat([image.pixel_values for image in images]).to(device)
        kwargs["image_grid_thw"] = torch.tensor([image.grid_thw for image in images], device=device)
    if layout.accepts_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    states = model(**kwargs).hidden_states[-1]  # after the final norm in every version
    last = torch.tensor([len(sequence.ids) - 1 for sequence in sequences], device=states.device)
    picked = states[torch.arange(len(sequences), device=states.device), last]
    return model.lm_head(picked).to(torch.float32)
