"""`ChatModel`: a Qwen2.5-VL folder asked one question (text, optionally after an image), answering in text or
scoring the first token of its answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import GoTError
from ..images import ImageInput
from ..reasoning.decoder_slot import CachedModel, DecoderSlot, Decoding
from ..reasoning.conversation import TokenSequence
from ..reasoning.mllm import GoTMLLM
from ..reasoning.prompts import chat_sequence, condition_image
from ..reasoning.sampling import LogitsProcessor, ReasoningSettings, TokenPicker
from ..reasoning.tokens import ENDOFTEXT, IM_END
from ..reasoning.turns import ReasoningCancelled, ReasoningStats, TokenEvent, generate_turn, turn_stats
from ..weights.mllm_files import read_vlm
from .batch import last_token_logits

FIRST_TOKEN_BATCH = 8  # queries per forward in `first_token_probabilities`


class ChatError(GoTError):
    """A question the chat model cannot be asked (empty text, candidate words that are not one token)."""


@dataclass(frozen=True)
class ChatAnswer:
    text: str  # the answer, without the token it stopped on
    stop: str  # the stop token's text ("<|im_end|>", "<|endoftext|>") or "max_tokens"
    new_tokens: int
    sequence: TokenSequence  # the question and the answer's tokens
    prompt_length: int  # where the answer begins in `sequence.ids`
    stats: ReasoningStats | None


@dataclass(frozen=True)
class FirstTokenProbabilities:
    probabilities: torch.Tensor  # float32 [queries, words] on the CPU: softmax over the whole vocabulary
    token_ids: tuple[int, ...]  # the token of each candidate word


class ChatModel(CachedModel):
    """A Qwen2_5_VLForConditionalGeneration and its processor, with one KV cache of its own."""

    def __init__(self, model: nn.Module, processor, *, decoding: Decoding = "fast",
                 repetition_penalty: float = 1.0, eos_token_ids: Sequence[int] = ()) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.vocab_size = model.config.get_text_config().vocab_size
        self.repetition_penalty = repetition_penalty
        ids = tuple(eos_token_ids) or tuple(self.tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT]))
        self.stops = {i: self.tokenizer.convert_ids_to_tokens(i) for i in ids}
        self._slot = DecoderSlot(model, decoding, "GoT chat model")

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype | str = torch.bfloat16,
                    device: torch.device | str = "cpu", decoding: Decoding = "fast") -> ChatModel:
        """Any Qwen2.5-VL folder with safetensors weights (`weights.mllm_files.read_vlm`)."""
        parts = read_vlm(folder, dtype)
        return cls(parts.model.to(device), parts.processor, decoding=decoding,
                   repetition_penalty=parts.repetition_penalty, eos_token_ids=parts.eos_token_ids)

    @classmethod
    def for_folder(cls, folder: str | Path, got: GoTMLLM, got_folder: str | Path,
                   device: torch.device | str | None = None) -> ChatModel:
        """`got` as a chat model when `folder` is its own folder (nothing loaded again), else the Qwen2.5-VL of
        `folder` in `got`'s dtype, on `device` (default: `got`'s device)."""
        if Path(folder).resolve() == Path(got_folder).resolve():
            return cls.of(got)
        return cls.from_folder(folder, dtype=got.dtype, device=got.device if device is None else device)

    @classmethod
    def of(cls, got: GoTMLLM) -> ChatModel:
        """GoT's MLLM as a chat model: the same weights and processor (nothing loaded again), its own KV cache
        (so the reasoner's cache, kept for semantic guidance, is not disturbed)."""
        return cls(got.model, got.processor, decoding=got.decoding, repetition_penalty=got.repetition_penalty)

    # Devices and caches

    def to(self, device: torch.device | str) -> ChatModel:
        self.release_caches()
        self.model.to(device)
        return self

    # Questions

    def sequence(self, text: str, image: ImageInput | None = None, system: str | None = None) -> TokenSequence:
        """The question as the model reads it: the chat template with the image (squashed to 448x448, as GoT
        shows images) before the text, then the assistant's turn opened."""
        if not isinstance(text, str) or not text.strip():
            raise ChatError("the question to the chat model is empty: give it some text")
        view = condition_image(image, "chat image") if image is not None else None
        return chat_sequence(self.processor, text, view, system)

    def generate(self, text: str, image: ImageInput | None = None, *, system: str | None = None,
                 assistant_prefix: str = "", settings: ReasoningSettings = ReasoningSettings(),
                 on_token: Callable[[TokenEvent], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, **changes) -> ChatAnswer:
        """The model's answer, greedy unless `settings.do_sample`, until an eos token of the folder's generation
        config (<|im_end|>, <|endoftext|>) or `settings.max_new_tokens`. `changes`: fields of `settings` to
        change for this call (`max_new_tokens=64, logits_processor=[...]`); `on_token` and `should_cancel`
        (raises `ReasoningCancelled`, the cache dropped) as in `GoTMLLM.reason`."""
        settings = replace(settings, **changes) if changes else settings
        question = self.sequence(text, image, system)
        sequence = question + self._encode(assistant_prefix)
        with self._slot.guard(), torch.inference_mode():
            picker = TokenPicker(settings.sampling(self.repetition_penalty), sequence.ids, self.vocab_size,
                                 self.device, settings.logits_processor)
            decoder = self._slot.acquire(len(sequence.ids) + settings.max_new_tokens + 1)
            out = generate_turn(decoder, sequence, picker, self.stops, settings.max_new_tokens, self._decode,
                                on_token, should_cancel)
        self._slot.note = decoder.note or self._slot.note
        answer = out.new_ids[:-1] if out.new_ids[-1] in self.stops else out.new_ids
        return ChatAnswer(text=self._decode(sequence.ids[len(question.ids):] + tuple(answer)),
                          stop=self.stops.get(out.new_ids[-1], "max_tokens"), new_tokens=len(out.new_ids),
                          sequence=sequence + out.new_ids, prompt_length=len(question.ids),
                          stats=turn_stats(out, decoder, picker.seed if settings.do_sample else None))

    def word_token(self, word: str) -> int:
        """The one token `word` is written with at the start of an answer; a word of several tokens is refused
        (its first token would stand for other words too)."""
        ids = self._encode(word)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise ChatError(f"the candidate word {word!r} is {len(ids)} tokens {pieces}, not one: the first answer "
                            "token can only score one-token words (try another spelling or case)")
        return ids[0]

    def first_token_probabilities(self, queries: Sequence[tuple[str, ImageInput | None]], words: Sequence[str], *,
                                  system: str | None = None, logits_processor: Sequence[LogitsProcessor] = (),
                                  should_cancel: Callable[[], bool] | None = None) -> FirstTokenProbabilities:
        """For each (text, image) query, the probability (softmax over the vocabulary) of each word's token as
        the first token of the answer. Queries run as batches of FIRST_TOKEN_BATCH (the cancel check runs
        between them); `logits_processor` gets each query's (input_ids [1, N], scores [1, V]) before the
        softmax, as in generation."""
        if not queries:
            raise ChatError("no queries to score: give at least one (text, image) pair")
        token_ids = tuple(self.word_token(word) for word in words)
        sequences = [self.sequence(text, image, system) for text, image in queries]
        rows = []
        with torch.inference_mode():
            for start in range(0, len(sequences), FIRST_TOKEN_BATCH):
                if should_cancel is not None and should_cancel():
                    raise ReasoningCancelled("scoring was cancelled")
                chunk = sequences[start:start + FIRST_TOKEN_BATCH]
                for sequence, logits in zip(chunk, last_token_logits(self.model, chunk)):
                    rows.append(self._processed(sequence, logits, logits_processor).softmax(-1)[list(token_ids)])
        return FirstTokenProbabilities(torch.stack(rows).cpu(), token_ids)

    # Internals

    def _processed(self, sequence: TokenSequence, logits: torch.Tensor,
                   processors: Sequence[LogitsProcessor]) -> torch.Tensor:
        if not processors:
            return logits
        ids, scores = torch.tensor([sequence.ids], device=logits.device), logits[None]
        for processor in processors:
            scores = processor(ids, scores)
        return scores[0]

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
