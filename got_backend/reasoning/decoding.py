"""Decoders: the KV cache of one conversation (conversation.py), fed by Hugging Face's forward, and the plain
(Hugging Face dynamic-cache) decoder.

A decoder holds the KV cache of one token sequence. `feed` brings the cache up to a whole sequence, reusing the
longest prefix it already holds (same tokens and the same image objects) and running Hugging Face's forward over
the rest in chunks of at most PREFILL_CHUNK tokens (an image's pads never split), calling the caller's cancel
check between chunks; `step` appends one token and returns the next logits. Both paths share everything but the single-token
step: `PlainDecoder` steps with Hugging Face's forward over a `DynamicCache` (the reference behaviour),
`fast_decode.StaticDecoder` with a fixed-shape step over preallocated KV buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .conversation import ModelLayout, TokenSequence, VisionInput, forward_segment
from .positions import image_runs, mrope_positions


# A 32,768-token prompt is 16 chunks: Cancel lands between two of them, and no forward holds the activations of
# the whole prompt at once. Chunked prefill attends exactly as one forward does (docs/ALGORITHM.md §13).
PREFILL_CHUNK = 2048


@dataclass
class Fed:
    """What a forward pass over the new part of a sequence gives."""

    logits: torch.Tensor  # float32 [vocab] for the token after the sequence
    hidden: torch.Tensor | None  # final-norm hidden states of the tokens that were run, [1, T, D]
    reused: int  # tokens whose KV came from the cache


def weights_signature(model: torch.nn.Module) -> tuple:
    """Changes when any weight is moved or replaced (e.g. by ComfyUI's model management)."""
    return tuple((p.data_ptr(), p.device, p.dtype) for p in model.parameters())


def dynamic_cache(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A Hugging Face DynamicCache holding the given per-layer (keys, values) [1, kv_heads, T, head_dim]."""
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(pairs):
        cache.update(keys, values, layer)
    return cache


def cache_pairs(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a DynamicCache (iteration yields them first in every version)."""
    return [(entry[0], entry[1]) for entry in cache]


class Decoder:
    """The KV cache of one token sequence, fed by Hugging Face's forward; subclasses provide the step."""

    kind = "abstract"
    note: str | None = None  # why a faster way was given up, if it was
    chunk = PREFILL_CHUNK  # the most tokens one prefill forward runs

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.layout = ModelLayout.of(model)
        self.signature = weights_signature(model)
        self.ids: list[int] = []
        self.images: list[VisionInput] = []
        self.delta = 0

    def feed(self, sequence: TokenSequence, hidden: bool = False, run_last: int = 1,
             between_chunks: Callable[[], None] | None = None) -> Fed:
        """Make the cache hold `sequence` (at least its last `run_last` tokens are run, so their hidden states
        come back even when the cache already holds them) and return what comes next. `between_chunks` runs
        before every chunk after the first (a cancel check raises there; the caller then drops the cache)."""
        if not sequence.ids:
            raise ValueError("cannot feed an empty token sequence")
        layout = self.layout
        grids = [image.grid_thw for image in sequence.images]
        positions, delta = mrope_positions(sequence.ids, grids, layout.image_pad_id, layout.merge_size)
        runs = image_runs(sequence.ids, layout.image_pad_id,
                          [t * h * w // layout.merge_size ** 2 for t, h, w in grids])
        keep = self._reusable_prefix(sequence, runs, run_last)
        states = []
        for start, end in prefill_chunks(keep, len(sequence.ids), runs, self.chunk):
            if start > keep and between_chunks is not None:
                between_chunks()
            chunk_images = [image for (first, _), image in zip(runs, sequence.images) if start <= first < end]
            logits, chunk_states = self._forward(start, sequence.ids[start:end], positions[:, start:end],
                                                 chunk_images, hidden)
            self.ids = list(sequence.ids[:end])
            self.images = [image for (first, _), image in zip(runs, sequence.images) if first < end]
            states.append(chunk_states)
        self.delta = delta
        return Fed(logits, torch.cat(states, dim=1) if hidden else None, keep)

    def step(self, token: int) -> torch.Tensor:
        """Append `token` (a text token) and return the float32 logits [vocab] of the one after it."""
        slot = len(self.ids)
        logits = self._step(token, slot, slot + self.delta)
        self.ids.append(token)
        return logits

    def reserve(self, tokens: int) -> None:
        """Room for a sequence of `tokens` tokens (static caches allocate it up front)."""

    def take_capture_seconds(self) -> float:
        """Seconds spent capturing CUDA graphs since the last call."""
        return 0.0

    def cache_bytes(self) -> int:
        """Bytes the KV cache occupies on the model's device (its allocated buffers, not only the used part)."""
        return 0

    def forget(self) -> None:
        """Forget the cached tokens (the next feed starts from scratch); buffers and graphs stay."""
        self.ids, self.images = [], []

    def release(self) -> None:
        """Drop the cache and everything allocated for it."""
        self.forget()

    def _reusable_prefix(self, sequence: TokenSequence, runs: list[tuple[int, int]], run_last: int) -> int:
        limit = min(len(self.ids), len(sequence.ids) - run_last)
        keep = 0
        while keep < limit and self.ids[keep] == sequence.ids[keep]:
            keep += 1
        for index, (start, end) in enumerate(runs):
            if start >= keep:
                break
            if end > keep or index >= len(self.images) or self.images[index] is not sequence.images[index]:
                return start
        return keep

    def _forward(self, keep: int, ids: tuple[int, ...], positions: torch.Tensor, images: list[VisionInput],
                 hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run `ids` on top of the first `keep` cached tokens (dropping the rest of the cache)."""
        raise NotImplementedError

    def _step(self, token: int, slot: int, position: int) -> torch.Tensor:
        raise NotImplementedError


def prefill_chunks(keep: int, total: int, runs: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """(start, end) of the chunks that run tokens `keep`..`total`: at most `size` tokens each, except that an
    image's run of pads (`runs`, [start, end) each) is never split (its image is encoded with the chunk that holds
    it; a run longer than `size` is a chunk of its own)."""
    chunks, start = [], keep
    while start < total:
        end = min(start + size, total)
        for first, last in runs:
            if first < end < last:
                end = first if first > start else last
        chunks.append((start, end))
        start = end
    return chunks


class PlainDecoder(Decoder):
    """Hugging Face's forward with a DynamicCache for every token: what `generate` does by default."""

    kind = "plain"

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.cache: DynamicCache | None = None

    def forget(self) -> None:
        super().forget()
        self.cache = None

    def cache_bytes(self) -> int:
        return 0 if self.cache is None else sum(k.nbytes + v.nbytes for k, v in cache_pairs(self.cache))

    def _forward(self, keep, ids, positions, images, hidden):
        if keep == 0:
            self.cache = None
        elif keep < len(self.ids):
            self.cache = dynamic_cache([(k[:, :, :keep], v[:, :, :keep]) for k, v in cache_pairs(self.cache)])
        logits, states, self.cache = forward_segment(self.model, self.layout, ids, positions, images,
                                                     self.cache, hidden)
        return logits, states

    def _step(self, token: int, slot: int, position: int) -> torch.Tensor:
        positions = torch.full((3, 1), position, dtype=torch.long)
        logits, _, self.cache = forward_segment(self.model, self.layout, (token,), positions, [], self.cache, False)
        return logits
