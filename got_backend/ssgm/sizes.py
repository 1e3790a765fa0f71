"""Image sizes: the one owner of what a canvas and a render may measure (docs/ALGORITHM.md §9)."""

from __future__ import annotations

from ..errors import GoTError

LATENT_FACTOR = 8  # the VAE downsamples by 8
LATENT_CHANNELS = 4
# docs/ALGORITHM.md "Limits": what a shared workflow may ask for. The nodes' size widgets span
# MIN_WIDGET_SIDE..MAX_SIDE; the pixel cap keeps one canvas (and its VAE encode) bounded (GoT renders 1024x1024).
MIN_WIDGET_SIDE = 64
MAX_SIDE = 8192
MAX_CANVAS_PIXELS = 4096 * 4096
MAX_BATCH_PIXELS = 256 * 1024 * 1024  # a batch of masks: 1 GiB of float32 (256 boxes at 1024x1024)


class SizeError(GoTError):
    """A width or height that cannot be drawn on or rendered."""


def check_canvas_size(width: int, height: int) -> None:
    """A size boxes can be drawn at: positive whole numbers of pixels, at most MAX_SIDE a side and
    MAX_CANVAS_PIXELS in all (checked before anything is allocated)."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SizeError(f"{name} must be a positive whole number of pixels, got {value!r}")
        if value > MAX_SIDE:
            raise SizeError(f"{name} {value} is above GoT's limit of {MAX_SIDE} pixels a side: use at most "
                            f"{MAX_SIDE} (GoT renders 1024x1024); a linked value is checked too")
    if width * height > MAX_CANVAS_PIXELS:
        raise SizeError(f"{width}x{height} is {width * height:,} pixels, above GoT's limit of "
                        f"{MAX_CANVAS_PIXELS:,} (4096x4096): lower width or height (GoT renders 1024x1024)")


def check_batch_pixels(count: int, width: int, height: int, what: str) -> None:
    """`count` images of a checked canvas size held at once, at most MAX_BATCH_PIXELS in all."""
    if count * width * height > MAX_BATCH_PIXELS:
        raise SizeError(f"{count} {what} of {width}x{height} pixels are {count * width * height:,} pixels, above "
                        f"GoT's limit of {MAX_BATCH_PIXELS:,} held at once: lower width and height, or use fewer boxes")


def check_widget_size(node: str, width: int, height: int, *, render: bool = True) -> None:
    """A node's width and height as its size widgets allow them (MIN_WIDGET_SIDE..MAX_SIDE, at most
    MAX_CANVAS_PIXELS; multiples of LATENT_FACTOR for a `render` size), also when they come from a link,
    which ComfyUI does not check."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, int) and not isinstance(value, bool) and value < MIN_WIDGET_SIDE:
            raise SizeError(f"{node}: {name} {value} is below the widget's minimum of {MIN_WIDGET_SIDE} pixels; "
                            f"use {MIN_WIDGET_SIDE} to {MAX_SIDE} (check the node linked to {name})")
    try:
        (check_output_size if render else check_canvas_size)(width, height)
    except SizeError as err:
        raise SizeError(f"{node}: {err}") from err


def check_output_size(width: int, height: int) -> None:
    """A size an image can be rendered at: a canvas size that is a multiple of the VAE's factor."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % LATENT_FACTOR:
            raise SizeError(f"{name} must be a positive multiple of {LATENT_FACTOR} pixels (the VAE "
                            f"downsamples by {LATENT_FACTOR}), got {value!r}")
    check_canvas_size(width, height)


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
