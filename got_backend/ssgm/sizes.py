"""Image sizes: the one owner of what a canvas and a render may measure (docs/ALGORITHM.md §9)."""

from __future__ import annotations

from ..errors import GoTError

LATENT_FACTOR = 8  # the VAE downsamples by 8
LATENT_CHANNELS = 4


class SizeError(GoTError):
    """A width or height that cannot be drawn on or rendered."""


def check_canvas_size(width: int, height: int) -> None:
    """A size boxes can be drawn at: positive whole numbers of pixels."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SizeError(f"{name} must be a positive whole number of pixels, got {value!r}")


def check_output_size(width: int, height: int) -> None:
    """A size an image can be rendered at: a canvas size that is a multiple of the VAE's factor."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % LATENT_FACTOR:
            raise SizeError(f"{name} must be a positive multiple of {LATENT_FACTOR} pixels (the VAE "
                            f"downsamples by {LATENT_FACTOR}), got {value!r}")


def latent_shape(width: int, height: int) -> tuple[int, int, int, int]:
    """The shape [1, 4, H/8, W/8] of one latent of a checked output size."""
    check_output_size(width, height)
    return (1, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)


def check_latent(name: str, latent_size: tuple[int, ...], width: int, height: int, fix: str) -> None:
    """A latent made for the output size, or a SizeError naming it and saying how to `fix` it."""
    expected = latent_shape(width, height)
    if tuple(latent_size) != expected:
        raise SizeError(f"the {name} has shape {list(latent_size)} but a {width}x{height} output needs "
                        f"{list(expected)}: {fix}")


def source_aspect_size(source: tuple[int, int], short_side: int) -> tuple[int, int]:
    """docs/ALGORITHM.md §9: an edit's final size, the source's (width, height) aspect ratio with the short side
    `short_side`, the long side truncated with int() as the reference does (it renders square, so its render size
    is the short side)."""
    source_w, source_h = source
    if source_w < source_h:
        return short_side, int(short_side * source_h / source_w)
    return int(short_side * source_w / source_h), short_side
