"""The live decoder of one model: the KV cache kept between calls, rebuilt when the weights move, dropped when
anything (a cancel included) interrupts work on it. Every model that generates (GoT's reasoner, a chat model)
keeps one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from ..errors import GoTError
from .conversation import model_device
from .decoding import Decoder, PlainDecoder, weights_signature
from .fast_decode import StaticDecoder, UnsupportedModelError

log = logging.getLogger(__name__)

Decoding = Literal["fast", "plain"]


class DecodingChoiceError(GoTError):
    """A decoding that is neither "fast" nor "plain"."""


class DecoderSlot:
    """Holds at most one decoder of `model`: "fast" (the static / CUDA-graph step, falling back to the plain one
    for models it does not support) or "plain" (Hugging Face's dynamic cache)."""

    def __init__(self, model: torch.nn.Module, decoding: Decoding, owner: str) -> None:
        if decoding not in ("fast", "plain"):
            raise DecodingChoiceError(f"decoding must be 'fast' or 'plain', not {decoding!r}")
        self.model, self.decoding, self.owner = model, decoding, owner
        self.decoder: Decoder | None = None
        self.note: str | None = None  # why the fast decoder is not in use, if it is not

    @property
    def cached_tokens(self) -> int:
        return len(self.decoder.ids) if self.decoder is not None else 0

    @property
    def cache_bytes(self) -> int:
        """Bytes the KV cache holds on the model's device (0 without a decoder)."""
        return self.decoder.cache_bytes() if self.decoder is not None else 0

    def acquire(self, tokens: int) -> Decoder:
        """The live decoder (rebuilt if the weights moved since it was made), with room for `tokens`."""
        if self.decoder is not None and self.decoder.signature != weights_signature(self.model):
            self.release()
        if self.decoder is None:
            self.decoder = self._new_decoder()
        self.decoder.reserve(tokens)
        return self.decoder

    def forget(self) -> None:
        """Forget the cached tokens but keep the KV buffers and any captured CUDA graph."""
        if self.decoder is not None:
            self.decoder.forget()

    def release(self) -> None:
        """Free the KV cache, its buffers and any captured CUDA graph."""
        if self.decoder is not None:
            self.decoder.release()
        self.decoder = None

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Drop the KV cache when anything (a cancel included) interrupts work on it."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    def _new_decoder(self) -> Decoder:
        if self.decoding == "plain":
            return PlainDecoder(self.model)
        try:
            return StaticDecoder(self.model)
        except UnsupportedModelError as err:
            self.note = f"fast decoding unavailable ({err}); using the plain decoder"
            log.warning("%s: %s", self.owner, self.note)
            return PlainDecoder(self.model)


class CachedModel:
    """What a model holding one DecoderSlot (`self.model`, `self._slot`) says of itself and its cache; shared by
    the GoT MLLM and the chat model."""

    model: torch.nn.Module
    _slot: DecoderSlot

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def decoder_note(self) -> str | None:
        """Why the fast decoder is not in use, if it is not."""
        return self._slot.note

    @property
    def cached_tokens(self) -> int:
        """Tokens whose keys/values the cache holds (0 after `release_caches`, a cancel or a failure)."""
        return self._slot.cached_tokens

    @property
    def cache_bytes(self) -> int:
        """Bytes the KV cache holds on the model's device: its capacity follows the longest turn asked for (prompt
        + max_new_tokens), and it is kept between calls until `release_caches`."""
        return self._slot.cache_bytes

    def release_caches(self) -> None:
        """Free the KV cache, its buffers and any captured CUDA graph."""
        self._slot.release()
