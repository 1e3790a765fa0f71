"""GoT's reasoner: the Qwen2.5-VL MLLM that writes the chain and yields the semantic tokens.

`GoTMLLM` loads the MLLM and GoT's two projectors, writes reasoning chains (`reason`, continued turn by turn
with `continue_reasoning` for docs/ALGORITHM.md §10), takes user-written or edited chains (`user_chain`, `edit_chain`)
and computes semantic guidance (`semantic_guidance`, §6). One KV cache is kept between calls so that semantic
tokens and continuations reuse the generation's cache; `release_caches` (also done on cancel and on any
failure) frees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..weights.checkpoint import GoTWeights
from .decoder_slot import CachedModel, DecoderSlot, Decoding
from .conversation import (MAX_SEQUENCE_TOKENS, SequenceTooLongError, TokenSequence, VisionInput,
                           check_sequence_length)
from .decoding import Decoder
from ..weights.mllm_files import MLLMLoadError, MLLMParts, read_converted, read_release, resolve_dtype
from .positions import image_runs
from ..images import MissingImageError
from .prompts import ImageInput, PromptError, Task, chat_sequence, condition_image, instruction
from .turns import (ChainNotReadyError, ConversationError, Reasoning, ReasoningStats, StopReason, TokenEvent,
                    generate_turn, not_ready_message, turn_stats)
from .sampling import ReasoningSettings, SamplingSettings, TokenPicker
from .semantic import IMAGE_QUERY_COUNT, SemanticGuidance, compute_semantic_guidance
from .tokens import resolve_got_tokens

__all__ = ["GoTMLLM", "MLLMLoadError", "resolve_dtype", "Decoding"]

MAX_TEXT_CHARS = 16 * MAX_SEQUENCE_TOKENS  # longer text cannot fit: tokens are rarely 16 characters long


@dataclass(frozen=True)
class _TurnOptions:
    settings: ReasoningSettings
    sampling: SamplingSettings
    on_token: Callable[[TokenEvent], None] | None
    should_cancel: Callable[[], bool] | None


class GoTMLLM(CachedModel):
    """The MLLM (`model`, a Qwen2_5_VLForConditionalGeneration), its processor and GoT's projectors."""

    def __init__(self, model: nn.Module, processor, output_projector: nn.Linear, output_projector_add: nn.Linear,
                 *, decoding: Decoding = "fast", repetition_penalty: float = 1.0,
                 eos_token_ids: Sequence[int] = ()) -> None:
        self._slot = DecoderSlot(model, decoding, "GoT reasoner")
        self.model = model.eval().requires_grad_(False)
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.tokens = resolve_got_tokens(self.tokenizer)
        text_config = model.config.get_text_config()
        self.hidden_size, self.vocab_size = text_config.hidden_size, text_config.vocab_size
        for name, layer in (("output_projector", output_projector), ("output_projector_add", output_projector_add)):
            if layer.in_features != self.hidden_size:
                raise MLLMLoadError(f"{name} takes {layer.in_features} features but the MLLM's hidden size is "
                                    f"{self.hidden_size}: the projectors and the MLLM come from different models")
        self.output_projector = output_projector.eval().requires_grad_(False)
        self.output_projector_add = output_projector_add.eval().requires_grad_(False)
        self.context_size, self.pooled_size = output_projector.out_features, output_projector_add.out_features
        self.repetition_penalty = repetition_penalty  # default for `reason` (GoT inherits Qwen's generation config)
        self._stops: dict[int, StopReason] = dict(zip(self.tokens.stop_ids, ("boi", "vision_start", "endoftext")))
        # The reference's `generate` also stops on the generation config's other eos tokens (<|im_end|>); its
        # loop generates on, but its layout then reads only the boxes after the last such stop.
        self.layout_breaks = tuple(self.tokenizer.convert_ids_to_tokens(i) for i in eos_token_ids
                                   if i not in self._stops)

    # Loading

    @classmethod
    def from_parts(cls, parts: MLLMParts, device: torch.device | str, decoding: Decoding) -> GoTMLLM:
        """The reasoner from what `mllm_files` read, moved to `device`."""
        return cls(parts.model.to(device), parts.processor, parts.output_projector.to(device),
                   parts.output_projector_add.to(device), decoding=decoding,
                   repetition_penalty=parts.repetition_penalty, eos_token_ids=parts.eos_token_ids)

    @classmethod
    def from_converted(cls, folder: str | Path, dtype: torch.dtype | str = torch.bfloat16,
                       device: torch.device | str = "cpu", decoding: Decoding = "fast") -> GoTMLLM:
        """A converted `models/LLM/GoT-6B/` folder (`python -m got_backend.convert`)."""
        return cls.from_parts(read_converted(folder, dtype), device, decoding)

    @classmethod
    def from_release(cls, got_dir: str | Path, qwen_dir: str | Path, dtype: torch.dtype | str = torch.bfloat16,
                     device: torch.device | str = "cpu", decoding: Decoding = "fast",
                     weights: GoTWeights | None = None) -> GoTMLLM:
        """The released GoT-6B folder and the Qwen2.5-VL-3B-Instruct folder, without converting them
        (`weights`: the checkpoint as `read_got_checkpoint` already gave it)."""
        return cls.from_parts(read_release(got_dir, qwen_dir, dtype, weights), device, decoding)

    # Devices

    def to(self, device: torch.device | str) -> GoTMLLM:
        """Move the MLLM and the projectors (dropping the KV cache and any CUDA graph)."""
        self.release_caches()
        self.model.to(device)
        self.output_projector.to(device)
        self.output_projector_add.to(device)
        return self

    @property
    def decoding(self) -> Decoding:
        return self._slot.decoding

    @property
    def _decoder(self) -> Decoder | None:
        return self._slot.decoder

    def clear_context(self) -> None:
        """Forget the cached conversation (the next call prefills from scratch) but keep the KV buffers and
        any captured CUDA graph."""
        self._slot.forget()

    # Reasoning

    def reason(self, prompt: str, image: ImageInput | None = None, *, task: Task | None = None,
               assistant_prefix: str = "", settings: ReasoningSettings = ReasoningSettings(),
               on_token: Callable[[TokenEvent], None] | None = None,
               should_cancel: Callable[[], bool] | None = None, **changes) -> Reasoning:
        """Write a reasoning chain for a text-to-image prompt, or for an edit of `image`.

        `task` defaults to "edit" with an image and "t2i" without. Generation continues after
        `assistant_prefix` (text the chain must start with) and stops on <|im_gen_start|>, <|vision_start|> or
        <|endoftext|>, or after `settings.max_new_tokens` (then `stop == "max_tokens"`). `changes`: fields of
        `settings` to change for this call (`max_new_tokens=64, do_sample=True`). `on_token` gets a
        `TokenEvent` per new token; `should_cancel` is checked between tokens and raises `ReasoningCancelled`."""
        task = task or ("edit" if image is not None else "t2i")
        if task == "edit" and image is None:
            raise MissingImageError("an edit needs the image to edit: connect a source image, or use the "
                                    "text-to-image task")
        text = instruction(prompt, task)
        view = condition_image(image, "input image") if image is not None else None
        sequence = self._prompt_sequence(text, view)
        prompt_length = len(sequence.ids)
        sequence = sequence + self._chain_ids(assistant_prefix, "chain_start")
        return self._turn(sequence, prompt_length, prompt_length, prompt, task,
                          self._options(settings, changes, on_token, should_cancel))

    def continue_reasoning(self, previous: Reasoning, image: ImageInput | None = None, *,
                           assistant_prefix: str = "", settings: ReasoningSettings = ReasoningSettings(),
                           on_token: Callable[[TokenEvent], None] | None = None,
                           should_cancel: Callable[[], bool] | None = None, **changes) -> Reasoning:
        """The next turn of a multi-turn reasoning (docs/ALGORITHM.md §10), as the reference continues it:
        after <|im_gen_start|> the 64 image-query tokens are appended; after <|vision_start|> `image` (the last
        rendered output) is appended as 256 image pads; after the token limit generation just goes on.
        `assistant_prefix` is text the new turn starts with (a replayed or edited turn); `settings` and
        `changes` as in `reason`."""
        if previous.stop == "endoftext":
            raise ConversationError("this reasoning ended with <|endoftext|>: there is nothing to continue; "
                                    "start a new one with reason()")
        if previous.stop == "vision_start":
            if image is None:
                raise MissingImageError("the reasoning stopped on <|vision_start|>: it asks to see the last "
                                        "rendered image; pass that image to continue")
            sequence = self._with_image(previous.sequence, condition_image(image, "rendered image"))
        elif image is not None:
            raise ConversationError(f"the reasoning stopped on {previous.stop!r}, not <|vision_start|>: it does "
                                    "not ask for an image; continue without one")
        elif previous.stop == "boi":
            sequence = previous.sequence + self.tokens.image_queries
        else:
            sequence = previous.sequence
        turn_start = len(sequence.ids)
        return self._turn(sequence + self._chain_ids(assistant_prefix, "assistant_prefix"), turn_start,
                          previous.prompt_length,
                          previous.prompt, previous.task, self._options(settings, changes, on_token, should_cancel))

    # User-written chains (interactive generation)

    def edit_chain(self, reasoning: Reasoning, chain_text: str) -> Reasoning:
        """`reasoning` with this turn's text replaced by `chain_text` (re-tokenized; marked edited)."""
        if chain_text == reasoning.text:
            return reasoning
        prefix = reasoning.sequence.ids[:reasoning.turn_start]
        images = reasoning.sequence.images[:self._images_before(reasoning.sequence, reasoning.turn_start)]
        return self._chain(TokenSequence(prefix, images), chain_text, reasoning.prompt_length, reasoning.prompt,
                           reasoning.task)

    def user_chain(self, prompt: str, chain_text: str, image: ImageInput | None = None, *,
                   task: Task | None = None) -> Reasoning:
        """A chain the user wrote for `prompt` (and `image` for an edit), as if the MLLM had written it."""
        task = task or ("edit" if image is not None else "t2i")
        if task == "edit" and image is None:
            raise MissingImageError("an edit chain needs the image it edits")
        view = condition_image(image, "input image") if image is not None else None
        sequence = self._prompt_sequence(instruction(prompt, task), view)
        return self._chain(sequence, chain_text, len(sequence.ids), prompt, task)

    # Semantic guidance

    def semantic_guidance(self, reasoning: Reasoning, chain_text: str | None = None) -> SemanticGuidance:
        """docs/ALGORITHM.md §6 for a turn that ends with <|im_gen_start|>. With `chain_text` different from the
        turn's text, the edited chain is used (re-tokenized, one full forward, as the reference does);
        otherwise the generation's KV cache is reused and only the <|im_gen_start|> + 64 query tokens run."""
        reasoning = self.semantic_input(reasoning, chain_text)
        return compute_semantic_guidance(self.model, self._slot, reasoning.sequence + self.tokens.image_queries,
                                         reasoning.edited, self.output_projector, self.output_projector_add)

    def semantic_input(self, reasoning: Reasoning, chain_text: str | None = None) -> Reasoning:
        """The turn `semantic_guidance` reads (the edited chain when `chain_text` differs), checked without
        running the model: it ends with <|im_gen_start|> and, with the 64 queries, fits the sequence limit."""
        if chain_text is not None:
            reasoning = self.edit_chain(reasoning, chain_text)
        if not reasoning.ready_for_image:
            raise ChainNotReadyError(not_ready_message(reasoning))
        check_sequence_length(self.model, len(reasoning.sequence.ids) + IMAGE_QUERY_COUNT,
                              "the chain with its prompt and GoT's 64 image queries",
                              "shorten the chain (fewer boxes or words) or the prompt")
        return reasoning

    # Internals

    def _options(self, settings: ReasoningSettings, changes: dict, on_token: Callable[[TokenEvent], None] | None,
                 should_cancel: Callable[[], bool] | None) -> _TurnOptions:
        settings = replace(settings, **changes) if changes else settings
        return _TurnOptions(settings, settings.sampling(self.repetition_penalty), on_token, should_cancel)

    def _encode(self, text: str) -> tuple[int, ...]:
        if len(text) > MAX_TEXT_CHARS:  # refused before the tokenizer spends time on it
            raise SequenceTooLongError(f"a text of {len(text):,} characters is far above GoT's limit of "
                                       f"{MAX_SEQUENCE_TOKENS:,} tokens per sequence: shorten it")
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

    def _chain_ids(self, text: str, what: str = "the chain text") -> tuple[int, ...]:
        """Chain text as tokens: its special tokens are the chain's format, but not the image placeholders,
        which only the reasoner inserts."""
        ids = self._encode(text)
        if {self.tokens.image_pad, *self.tokens.image_queries} & set(ids):
            raise PromptError(f"{what} contains image placeholder tokens (<|image_pad|> or <|im_gen_NNNN|>); "
                              "remove them: images and image queries are inserted by the reasoner")
        return ids

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _prompt_sequence(self, text: str, view: Image.Image | None) -> TokenSequence:
        """The chat-templated user turn with the generation prompt, as the processor tokenizes it."""
        return chat_sequence(self.processor, text, view)

    def _with_image(self, sequence: TokenSequence, view: Image.Image) -> TokenSequence:
        """`sequence` + the image's pad tokens (the reference appends no <|vision_end|>; the model writes it)."""
        batch = self.processor.image_processor(images=[view], return_tensors="pt")
        grid = tuple(int(n) for n in batch["image_grid_thw"][0])
        merge = self.model.config.vision_config.spatial_merge_size
        pads = (self.tokens.image_pad,) * (grid[0] * grid[1] * grid[2] // merge ** 2)
        return sequence.with_image(pads, VisionInput(view, batch["pixel_values"], grid))

    def _images_before(self, sequence: TokenSequence, index: int) -> int:
        merge = self.model.config.vision_config.spatial_merge_size
        runs = image_runs(sequence.ids, self.tokens.image_pad, [t * h * w // merge ** 2 for t, h, w in
                                                                  (image.grid_thw for image in sequence.images)])
        return sum(1 for start, _ in runs if start < index)

    def _chain(self, context: TokenSequence, chain_text: str, prompt_length: int, prompt: str,
               task: Task) -> Reasoning:
        if not isinstance(chain_text, str) or not chain_text.strip():
            raise PromptError("the chain text is empty: write the chain (ending with <|im_gen_start|> to render)")
        ids = self._chain_ids(chain_text.rstrip())
        sequence = context + ids
        return Reasoning(text=self._decode(ids), stop=self._stops.get(ids[-1], "max_tokens"), sequence=sequence,
                         turn_start=len(context.ids), prompt_length=prompt_length, prompt=prompt, task=task,
                         new_tokens=0, edited=True, layout_breaks=self.layout_breaks)

    def _turn(self, sequence: TokenSequence, turn_start: int, prompt_length: int, prompt: str, task: Task,
              options: _TurnOptions) -> Reasoning:
        if len(sequence.ids) > turn_start and sequence.ids[-1] in self._stops:  # the prefix already stops
            return self._reasoning(sequence, turn_start, prompt_length, prompt, task, 0, None)
        # A start the user wrote and the model finished: every box of the turn is drawn (a deliberate deviation,
        # docs/ALGORITHM.md "Deliberate deviations"); the reference has no such turn.
        breaks = () if len(sequence.ids) > turn_start else self.layout_breaks
        # Inference mode throughout, whoever calls: the KV buffers are only ever updated in it.
        limit = options.settings.max_new_tokens
        check_sequence_length(self.model, len(sequence.ids) + limit + IMAGE_QUERY_COUNT + 1,
                              f"this turn ({len(sequence.ids):,} tokens of prompt and chain so far, up to "
                              f"max_new_tokens {limit:,} more and GoT's 65 image tokens)",
                              "shorten the prompt or chain_start, or lower max_new_tokens")
        with self._slot.guard(), torch.inference_mode():
            picker = TokenPicker(options.sampling, sequence.ids, self.vocab_size, self.device,
                                 options.settings.logits_processor)
            decoder = self._slot.acquire(len(sequence.ids) + limit + IMAGE_QUERY_COUNT + 1)
            out = generate_turn(decoder, sequence, picker, self._stops, limit, self._decode,
                                options.on_token, options.should_cancel)
        self._slot.note = decoder.note or self._slot.note
        stats = turn_stats(out, decoder, picker.seed if options.sampling.do_sample else None)
        return self._reasoning(sequence + out.new_ids, turn_start, prompt_length, prompt, task,
                               len(out.new_ids), stats, out.stop, breaks)

    def _reasoning(self, sequence: TokenSequence, turn_start: int, prompt_length: int, prompt: str, task: Task,
                   new_tokens: int, stats: ReasoningStats | None, stop: StopReason | None = None,
                   breaks: tuple[str, ...] | None = None) -> Reasoning:
        stop = stop or self._stops.get(sequence.ids[-1], "max_tokens")
        return Reasoning(text=self._decode(sequence.ids[turn_start:]), stop=stop, sequence=sequence,
                         turn_start=turn_start, prompt_length=prompt_length, prompt=prompt, task=task,
                         new_tokens=new_tokens, stats=stats,
                         layout_breaks=self.layout_breaks if breaks is None else breaks)
