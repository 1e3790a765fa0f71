"""One reasoning turn: generate from a token sequence until a stop token (docs/ALGORITHM.md §5) or the token limit."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .conversation import TokenSequence
from .decoding import Decoder
from .prompts import Task
from .sampling import TokenPicker
from ..errors import GoTError

StopReason = Literal["boi", "vision_start", "endoftext", "max_tokens"]


class ReasoningCancelled(GoTError):
    """The caller's cancel check asked to stop; the KV cache was dropped."""


class ChainNotReadyError(GoTError):
    """Semantic tokens were asked for a chain that does not end with <|im_gen_start|>."""


class ConversationError(GoTError):
    """A multi-turn continuation that does not fit where the conversation stopped."""


@dataclass(frozen=True)
class TokenEvent:
    """Sent to `on_token` after every generated token."""

    index: int  # 1 for the first new token
    token_id: int
    text: str  # the text this token completed (may be empty while a multi-byte character is incomplete)
    max_new_tokens: int


@dataclass(frozen=True)
class ReasoningStats:
    decoder: str  # "cuda_graph", "static" (same step, eager) or "plain" (Hugging Face dynamic cache)
    time_to_first_token: float  # seconds from the call to the first new token (prefill included)
    decode_seconds: float  # from the first to the last new token, CUDA graph capture not counted
    tokens_per_second: float  # decode steps per second after the first token (0 with fewer than 2 tokens)
    capture_seconds: float  # CUDA graph capture done during this call (the first one after a (re)load)
    reused_tokens: int  # prompt tokens whose KV came from the cache
    seed: int | None  # the sampling seed (None when greedy)


@dataclass(frozen=True)
class Reasoning:
    """One turn of GoT's reasoning, with the conversation it belongs to."""

    text: str  # this turn's assistant text with its special tokens (any assistant prefix included)
    stop: StopReason
    sequence: TokenSequence  # the whole conversation so far, ending with this turn's tokens
    turn_start: int  # where this turn's tokens begin in `sequence.ids`
    prompt_length: int  # where the first assistant turn begins
    prompt: str
    task: Task
    new_tokens: int  # generated in this turn (an assistant prefix not counted)
    edited: bool = False  # the chain text was written or changed by the user: no KV reuse
    stats: ReasoningStats | None = None
    # Where the reference's `generate` would have stopped inside this turn (the generation config's eos tokens
    # that do not end a turn: <|im_end|>); its layout reads only the boxes after the last one. Empty when the
    # user wrote the turn's start and the model finished it: then every box of the turn is drawn.
    layout_breaks: tuple[str, ...] = ()  # for parse_chain(text, drawn_after=...)

    @property
    def token_ids(self) -> tuple[int, ...]:
        return self.sequence.ids[self.turn_start:]

    @property
    def ready_for_image(self) -> bool:
        """The chain ends with <|im_gen_start|>: semantic guidance can be computed and an image rendered."""
        return self.stop == "boi"

    @property
    def finished(self) -> bool:
        return self.stop == "endoftext"


# Why a turn that is not ready for an image stopped, and what to do, by its stop reason (a model's chain).
UNFINISHED_ADVICE: dict[StopReason, str] = {
    "max_tokens": "stopped at max_new_tokens before the chain was finished (no <|im_gen_start|>): raise "
                  "max_new_tokens, or end the chain yourself in a GoT Chain Parser",
    "vision_start": "stopped to see the image first (<|vision_start|>): continue with GoT Next Turn and the "
                    "rendered image",
    "endoftext": "ended the conversation (<|endoftext|>) without asking for an image",
}


def not_ready_message(reasoning: Reasoning) -> str:
    """Why `reasoning` cannot give semantic tokens, told apart for a chain a person edited and one the model
    wrote (whose fix is in the Reasoner, not in the text)."""
    tail = reasoning.text.rstrip()[-60:]
    ends = f"it ends with {tail!r}" if tail else "it is empty"
    if reasoning.edited:
        return (f"semantic tokens need a chain that ends with <|im_gen_start|>, and the edited chain does not ({ends}"
                "): fix its text in the GoT Chain Parser or the GoT Plan Editor, end it with <|im_gen_start|> and "
                "write nothing after it")
    return (f"semantic tokens need a chain that ends with <|im_gen_start|>, and the model's chain does not ({ends}): "
            f"it {UNFINISHED_ADVICE[reasoning.stop]}")


class _TextStream:
    """Incremental detokenisation: the text each new token adds, decoding only the last few tokens (the
    byte-level BPE decodes token by token, except characters split over several tokens)."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.decode, self.start, self.sent = decode, 0, 0  # sent: tokens whose text went out

    def push(self, ids: Sequence[int]) -> str:
        before = self.decode(ids[self.start:self.sent])
        text = self.decode(ids[self.start:])
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            return ""
        self.start, self.sent = self.sent, len(ids)
        return text[len(before):]


@dataclass(frozen=True)
class TurnOutput:
    new_ids: list[int]
    stop: StopReason
    time_to_first_token: float
    decode_seconds: float
    reused_tokens: int


def _check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise ReasoningCancelled("reasoning was cancelled")


def generate_turn(decoder: Decoder, sequence: TokenSequence, pick: TokenPicker, stops: dict[int, StopReason],
                  max_new_tokens: int, decode: Callable[[Sequence[int]], str],
                  on_token: Callable[[TokenEvent], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None) -> TurnOutput:
    """Generate after `sequence` until a token in `stops` or `max_new_tokens` tokens. The cancel check runs
    before the prefill, between its chunks and between tokens; the caller drops the cache when this raises."""
    started = time.perf_counter()
    _check_cancel(should_cancel)
    fed = decoder.feed(sequence, between_chunks=lambda: _check_cancel(should_cancel))
    logits, new_ids = fed.logits, []
    stream = _TextStream(decode) if on_token is not None else None
    first_token_at = started
    while True:
        token = pick(logits)
        new_ids.append(token)
        if len(new_ids) == 1:
            first_token_at = time.perf_counter()
        if on_token is not None:
            on_token(TokenEvent(len(new_ids), token, stream.push(new_ids), max_new_tokens))
        if token in stops or len(new_ids) >= max_new_tokens:
            break
        _check_cancel(should_cancel)
        logits = decoder.step(token)
    ended = time.perf_counter()
    return TurnOutput(new_ids, stops.get(new_ids[-1], "max_tokens"), first_token_at - started,
                      ended - first_token_at, fed.reused)


def turn_stats(out: TurnOutput, decoder: Decoder, seed: int | None) -> ReasoningStats:
    """The timings of a generated turn; CUDA graph capture (done once, at the first step) is not decoding."""
    steps, capture = len(out.new_ids) - 1, decoder.take_capture_seconds()
    decoding = out.decode_seconds - capture
    return ReasoningStats(
        decoder=decoder.kind, time_to_first_token=out.time_to_first_token, decode_seconds=decoding,
        tokens_per_second=steps / decoding if steps and decoding > 0 else 0.0, capture_seconds=capture,
        reused_tokens=out.reused_tokens, seed=seed)
