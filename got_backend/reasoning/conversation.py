"""The conversation as the MLLM reads it: token ids with the images whose pads they hold, the model's layout
across transformers versions, and Hugging Face's forward over a segment or a whole sequence. The decoders
(decoding.py, fast_decode.py) keep KV caches on top of it; nothing here keeps state."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image
from transformers import DynamicCache

from ..errors import GoTError
from .positions import mrope_positions


# docs/ALGORITHM.md "Limits": tokens one sequence (prompt, image pads, chain, image queries) may hold, and never
# more than the model's positions. GoT's sequences are about 1,500 tokens; the cap bounds memory and time.
MAX_SEQUENCE_TOKENS = 32768


class SequenceTooLongError(GoTError):
    """A token sequence longer than GoT's cap or the model's positions."""


def sequence_limit(model: torch.nn.Module) -> int:
    """The most tokens a sequence of `model` may hold: MAX_SEQUENCE_TOKENS, or fewer if the model has fewer
    positions."""
    return min(MAX_SEQUENCE_TOKENS, model.config.get_text_config().max_position_embeddings)


def check_sequence_length(model: torch.nn.Module, tokens: int, what: str, fix: str) -> None:
    """Refuse, before any forward pass, a sequence of `tokens` tokens that `sequence_limit` does not allow."""
    limit = sequence_limit(model)
    if tokens > limit:
        raise SequenceTooLongError(f"{what} needs {tokens:,} tokens, above GoT's limit of {limit:,} tokens per "
                                   f"sequence: {fix}")


@dataclass(frozen=True, eq=False)
class VisionInput:
    """One input image as the MLLM sees it (identity matters: KV reuse compares image objects)."""

    image: Image.Image  # the 448x448 view
    pixel_values: torch.Tensor  # the processor's patches [patches, 3 * t * p * p]
    grid_thw: tuple[int, int, int]


@dataclass(frozen=True)
class TokenSequence:
    """A conversation as the MLLM reads it: token ids with the images whose pads they hold, in order."""

    ids: tuple[int, ...]
    images: tuple[VisionInput, ...] = ()

    def __add__(self, ids: tuple[int, ...] | list[int]) -> TokenSequence:
        return TokenSequence(self.ids + tuple(ids), self.images)

    def with_image(self, pads: tuple[int, ...], image: VisionInput) -> TokenSequence:
        return TokenSequence(self.ids + pads, self.images + (image,))


@dataclass(frozen=True)
class ModelLayout:
    """Where a Qwen2.5-VL model keeps its decoder parts, across transformers versions (4.49: flat)."""

    merge_size: int
    image_pad_id: int
    accepts_logits_to_keep: bool
    cache_argument: str  # forward's KV-cache argument and output field: `cache` from 5.24, `past_key_values` before

    @staticmethod
    def of(model: torch.nn.Module) -> ModelLayout:
        return ModelLayout(merge_size=model.config.vision_config.spatial_merge_size,
                           image_pad_id=model.config.image_token_id,
                           accepts_logits_to_keep=_accepts(type(model), "logits_to_keep"),
                           cache_argument="cache" if _accepts(type(model), "cache") else "past_key_values")


@lru_cache(maxsize=None)
def _accepts(model_type: type, name: str) -> bool:
    return name in inspect.signature(model_type.forward).parameters


def text_decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The language model (embed_tokens, layers, norm, rotary_emb): `model.model.language_model` from
    transformers 4.52 on, `model.model` before."""
    return getattr(model.model, "language_model", model.model)


def model_device(model: torch.nn.Module) -> torch.device:
    return text_decoder(model).embed_tokens.weight.device


def forward_segment(model: torch.nn.Module, layout: ModelLayout, ids: tuple[int, ...], positions: torch.Tensor,
                    images: list[VisionInput], cache: DynamicCache | None,
                    hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None, DynamicCache]:
    """Hugging Face's forward over `ids` (positions [3, T]) on top of `cache`, with the images whose pads
    they hold. Returns the float32 logits after the last token, the final-norm hidden states if asked, and
    the grown cache."""
    device = model_device(model)
    kwargs = dict(input_ids=torch.tensor([ids], device=device), position_ids=positions[:, None, :].to(device),
                  use_cache=True, return_dict=True)
    kwargs[layout.cache_argument] = cache if cache is not None else DynamicCache()
    if images:
        kwargs["pixel_values"] = torch.cat([image.pixel_values for image in images]).to(device)
        kwargs["image_grid_thw"] = torch.tensor([image.grid_thw for image in images], device=device)
    if hidden:
        kwargs["output_hidden_states"] = True
    if layout.accepts_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    output = model(**kwargs)
    logits = output.logits[0, -1].to(dtype=torch.float32, copy=True)
    states = output.hidden_states[-1] if hidden else None  # after the final norm in every version
    return logits, states, getattr(output, layout.cache_argument)


def forward_sequence(model: torch.nn.Module, sequence: TokenSequence,
                     hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward over a whole sequence without any cache (what the reference does for semantic tokens)."""
    layout = ModelLayout.of(model)
    grids = [image.grid_thw for image in sequence.images]
    positions, _ = mrope_positions(sequence.ids, grids, layout.image_pad_id, layout.merge_size)
    logits, states, _ = forward_segment(model, layout, sequence.ids, positions, list(sequence.images), None, hidden)
    return logits, states


