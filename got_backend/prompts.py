"""What GoT's MLLM is asked (GOT_SPEC §4) and the input images it sees."""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image

from .latents import LatentInputError, check_rgb_image, to_uint8_pil

T2I_INSTRUCTION = "Follow the caption to generate an image through a chain of thought process: {prompt}"
EDIT_INSTRUCTION = "Follow the instruction to edit the given image through a chain of thought process: {prompt}"
CONDITION_IMAGE_SIZE = 448  # squashed to 448x448 -> 32x32 patches -> 256 <|image_pad|> tokens

Task = Literal["t2i", "edit"]
ImageInput = Image.Image | torch.Tensor


class PromptError(ValueError):
    """The prompt cannot be sent to the MLLM (empty, or an unknown task)."""


class ImageInputError(LatentInputError):
    """An input image is batched, not RGB, or not an image."""


class MissingImageError(ImageInputError):
    """A step that needs an input image got none."""


def instruction(prompt: str, task: Task) -> str:
    """The user turn's text: GoT's fixed instruction for the task with the user's prompt appended."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"the {task} prompt is empty: write what the image should show"
                          + (" (or how the image should change)" if task == "edit" else ""))
    if task == "t2i":
        return T2I_INSTRUCTION.format(prompt=prompt)
    if task == "edit":
        return EDIT_INSTRUCTION.format(prompt=prompt)
    raise PromptError(f"unknown task {task!r}: use 't2i' (text to image) or 'edit'")


def chat_messages(text: str, with_image: bool) -> list[dict]:
    """One user turn for the Qwen2.5-VL chat template; an input image comes before the text."""
    content: list[dict] = [{"type": "text", "text": text}]
    if with_image:
        content.insert(0, {"type": "image"})
    return [{"role": "user", "content": content}]


def as_rgb_image(image: ImageInput, what: str = "image") -> Image.Image:
    """A PIL RGB image from a PIL RGB image or a float tensor [1, 3, H, W] (or [3, H, W]) in [0, 1]."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ImageInputError(f"the {what} is a {image.mode} image; GoT reads RGB images: "
                                  "convert it first (e.g. image.convert('RGB'))")
        return image
    if not isinstance(image, torch.Tensor):
        raise ImageInputError(f"the {what} must be a PIL image or a [1, 3, H, W] tensor in [0, 1], "
                              f"not {type(image).__name__}")
    try:
        return to_uint8_pil(check_rgb_image(image.unsqueeze(0) if image.ndim == 3 else image))
    except LatentInputError as err:
        raise ImageInputError(f"the {what}: {err}") from err


def condition_image(image: ImageInput, what: str = "image") -> Image.Image:
    """The MLLM's view of an input image: squashed to 448x448 with bicubic resampling (aspect not kept)."""
    size = (CONDITION_IMAGE_SIZE, CONDITION_IMAGE_SIZE)
    return as_rgb_image(image, what).resize(size, Image.Resampling.BICUBIC)
