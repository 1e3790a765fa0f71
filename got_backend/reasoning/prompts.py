"""What GoT's MLLM is asked (docs/ALGORITHM.md §4) and the input images it sees."""

from __future__ import annotations

import re
from typing import Literal

from PIL import Image

from ..errors import GoTError
from ..images import ImageInput, as_rgb_image
from .conversation import MAX_SEQUENCE_TOKENS, TokenSequence, VisionInput

T2I_INSTRUCTION = "Follow the caption to generate an image through a chain of thought process: {prompt}"
EDIT_INSTRUCTION = "Follow the instruction to edit the given image through a chain of thought process: {prompt}"
CONDITION_IMAGE_SIZE = 448  # squashed to 448x448 -> 32x32 patches -> 256 <|image_pad|> tokens

Task = Literal["t2i", "edit"]
TASK_WORDS = {"t2i": "text-to-image", "edit": "edit"}
MAX_PROMPT_CHARS = 16384  # docs/ALGORITHM.md "Limits"
MAX_CHAT_CHARS = MAX_PROMPT_CHARS + 4096  # a prompt within the pack's own wording (GoT's instruction, a question)
MAX_CHAT_TOKENS = MAX_SEQUENCE_TOKENS // 2  # a question leaves half of the sequence for the answer and the image
CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,64}\|>")  # how every special token of Qwen2.5-VL and GoT is written


class PromptError(GoTError):
    """The prompt cannot be sent to the MLLM (empty, or an unknown task)."""


def check_prompt(prompt: str, task: Task | None = None) -> None:
    """A prompt the MLLM can be given: not empty, and text a person wrote as `check_text` reads it. The messages
    name the task when it is known."""
    what = f"{TASK_WORDS.get(task, task)} prompt" if task else "prompt"
    if not isinstance(prompt, str) or not prompt.strip():
        hint = {"t2i": "", "edit": " (or how the image should change)"}.get(task, " (or, for an edit, how it "
                                                                                 "should change)")
        raise PromptError(f"the {what} is empty: write what the image should show{hint}")
    check_text(prompt, what)


def check_text(text: str, what: str, limit: int = MAX_PROMPT_CHARS) -> None:
    """The rule for every text a person wrote that reaches a tokenizer (a prompt, a question to the judge or the
    thinker), checked before any model work: at most `limit` characters (counted before the tokenizer spends
    time on it), and plain text: a control token of the chat format (<|im_end|>, <|image_pad|>, ...) is refused,
    as the tokenizer would read it as that token (ending the user's turn, faking the assistant's, or asking for
    an image that is not there). `chat_sequence` applies it to every chat text; nodes call it at queue time."""
    if not isinstance(text, str):
        raise PromptError(f"the {what} must be text, got {type(text).__name__}")
    if len(text) > limit:
        raise PromptError(f"the {what} has {len(text):,} characters, above GoT's limit of {limit:,}: shorten it "
                          "(GoT's prompts are a sentence or two)")
    token = CONTROL_TOKEN.search(text)
    if token:
        raise PromptError(f"the {what} contains {token.group(0)!r} at character {token.start()}, which the "
                          "model would read as a control token of its chat format, not as text: remove it, or "
                          "write it without the <| |> marks")


def instruction(prompt: str, task: Task) -> str:
    """The user turn's text: GoT's fixed instruction for the task with the user's prompt (`check_prompt`)
    appended."""
    check_prompt(prompt, task)
    if task == "t2i":
        return T2I_INSTRUCTION.format(prompt=prompt)
    if task == "edit":
        return EDIT_INSTRUCTION.format(prompt=prompt)
    raise PromptError(f"unknown task {task!r}: use 't2i' (text to image) or 'edit'")


def chat_messages(text: str, with_image: bool, system: str | None = None) -> list[dict]:
    """One user turn for the Qwen2.5-VL chat template; an input image comes before the text. Without
    `system` the template writes Qwen's default system turn ("You are a helpful assistant.")."""
    content: list[dict] = [{"type": "text", "text": text}]
    if with_image:
        content.insert(0, {"type": "image"})
    messages = [{"role": "user", "content": content}]
    return ([{"role": "system", "content": system}] if system is not None else []) + messages


def chat_sequence(processor, text: str, view: Image.Image | None, system: str | None = None) -> TokenSequence:
    """The chat-templated user turn (after `view`, an image as `condition_image` gives it) with the generation
    prompt, as the processor tokenizes it; every chat text passes here, so `check_text` and the token limit hold
    for every model question, whichever node asks it."""
    check_text(text, "text for the model", MAX_CHAT_CHARS)
    if system is not None:
        check_text(system, "system text for the model", MAX_CHAT_CHARS)
    chat = processor.apply_chat_template(chat_messages(text, view is not None, system), tokenize=False,
                                         add_generation_prompt=True)
    batch = processor(text=[chat], images=[view] if view is not None else None, return_tensors="pt")
    ids = tuple(batch["input_ids"][0].tolist())
    if len(ids) > MAX_CHAT_TOKENS:
        raise PromptError(f"the text for the model is {len(ids):,} tokens, above the limit of {MAX_CHAT_TOKENS:,} "
                          "tokens of a question: shorten the prompt")
    if view is None:
        return TokenSequence(ids)
    grid = tuple(int(n) for n in batch["image_grid_thw"][0])
    return TokenSequence(ids, (VisionInput(view, batch["pixel_values"], grid),))


def condition_image(image: ImageInput, what: str = "image") -> Image.Image:
    """The MLLM's view of an input image: squashed to 448x448 with bicubic resampling (aspect not kept)."""
    size = (CONDITION_IMAGE_SIZE, CONDITION_IMAGE_SIZE)
    return as_rgb_image(image, what).resize(size, Image.Resampling.BICUBIC)
