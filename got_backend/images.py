"""Input images, shared by reasoning (the MLLM's view) and SSGM (the reference latent): one validator and the
uint8 conversions the reference's PIL path implies (round(x * 255), the inverse of ComfyUI's LoadImage)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import GoTError

ImageInput = Image.Image | torch.Tensor


class ImageInputError(GoTError):
    """An input image that is batched, not RGB, out of range, or not an image."""


class MissingImageError(ImageInputError):
    """A step that needs an input image got none."""


def check_rgb_image(image: torch.Tensor) -> torch.Tensor:
    """`image` if it is one RGB image [1, 3, H, W] of finite floats in [0, 1]; otherwise an ImageInputError
    that says how to fix it."""
    check_rgb_batch(image)
    if image.shape[0] != 1:
        raise ImageInputError(f"got a batch of {image.shape[0]} images; GoT edits one image at a time: connect a "
                              f"single image (pick one from the batch with ComfyUI's 'Image From Batch' node)")
    return image


def check_rgb_batch(images: torch.Tensor) -> torch.Tensor:
    """`images` if it is a batch of at least one RGB image [B, 3, H, W] of finite floats in [0, 1] (the one image
    validator: every image the pack takes passes it); otherwise an ImageInputError that says how to fix it."""
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(f"expected the image as a torch tensor [1, 3, H, W], got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.dim() != 4:
        hint = " (add the batch dimension: image[None])" if images.dim() == 3 else ""
        raise ImageInputError(f"expected one image shaped [1, 3, H, W] (a batch: [B, 3, H, W]), got shape "
                              f"{list(shape)}{hint}")
    if shape[1] != 3:
        raise ImageInputError(f"expected an RGB image [1, 3, H, W], got shape {list(shape)}: {_channel_hint(shape)}")
    if shape[0] == 0:
        raise ImageInputError("the image batch is empty (it holds no image): connect a node that gives at least "
                              "one image")
    if shape[2] == 0 or shape[3] == 0:
        raise ImageInputError(f"the image is empty (shape {list(shape)})")
    if not images.is_floating_point():
        raise ImageInputError(f"expected float pixels in [0, 1], got dtype {images.dtype}: connect an IMAGE as "
                              f"ComfyUI's Load Image gives it (0..255 values must be divided by 255)")
    low, high = images.min().item(), images.max().item()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageInputError("the image holds NaN or infinite values: check the node that made it (an fp16 VAE "
                              "can overflow)")
    if low < 0 or high > 1:
        hint = (" (it looks like [-1, 1]: connect an IMAGE in 0..1, e.g. from Load Image or VAE Decode, not a "
                "tensor normalised to [-1, 1])" if low >= -1 and high <= 1 else "")
        raise ImageInputError(f"pixel values must lie in [0, 1], found {low:.4g}..{high:.4g}{hint}")
    return images


def to_uint8_pil(image: torch.Tensor) -> Image.Image:
    """A checked [1, 3, H, W] image in [0, 1] as an RGB PIL image (round(x * 255))."""
    levels = image[0].detach().to("cpu", torch.float32).mul(255).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).contiguous().numpy())


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
    except ImageInputError as err:
        raise ImageInputError(f"the {what}: {err}") from err


def uint8_to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [-1, 1] as torchvision's ToTensor + Normalize(0.5, 0.5) compute it."""
    return pixels.to(torch.float32).div(255).sub(0.5).div(0.5)


def _channel_hint(shape: tuple[int, ...]) -> str:
    channels = shape[1]
    if shape[-1] in (1, 3, 4) and channels not in (1, 3, 4):
        return "this looks channels-last [B, H, W, C] (ComfyUI's IMAGE layout); use image.permute(0, 3, 1, 2)"
    if channels == 1:
        return ("a grayscale image; connect an RGB image instead (ComfyUI's Load Image gives RGB for any file, "
                "grayscale ones included)")
    if channels == 4:
        return ("an RGBA image; drop the alpha channel: connect Load Image's IMAGE output, which is RGB (the alpha "
                "comes out separately as its MASK), or composite the image over a background first")
    return f"{channels} channels; connect an RGB image (e.g. Load Image's IMAGE output)"
