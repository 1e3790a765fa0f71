"""Boxes of a GoT chain as pixels: masks, the reference's colour canvases (docs/ALGORITHM.md §7) and an
artist's preview.

The reference draws each box with PIL, `ImageDraw.rectangle([x1/1000*W, y1/1000*H, x2/1000*W, y2/1000*H],
fill=color)` on a black RGB canvas. PIL casts float corners to int (truncation; all corners here are >= 0, so
it is the floor), fills the columns int(x1p)..int(x2p) and rows int(y1p)..int(y2p) inclusive, and clips to the
canvas. The tensor path below does exactly that; tests compare it with PIL pixel for pixel.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont

from ..images import uint8_to_signed
from .chain import GRID, ChainError, GoTChain, GoTObject, check_box_count
from .sizes import check_batch_pixels, check_canvas_size

PREVIEW_BACKGROUND = (0.12, 0.12, 0.13)
PREVIEW_GRID_LINE = (0.2, 0.2, 0.22)
PREVIEW_UNCOLORED = (0.75, 0.75, 0.75)  # boxes without a colour: the reference draws them nowhere
PREVIEW_FILL_ALPHA = 0.35
PREVIEW_LABEL_MIN_SIZE = 10  # pixels; labels grow with the preview (1/48 of its short side)


def box_to_pixels(box: tuple[int, int, int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """The reference's corners in pixels: x/1000*W, y/1000*H (this evaluation order; x*W/1000 differs in the
    last bit for some (x, W), which moves a truncated edge by one pixel)."""
    x1, y1, x2, y2 = box
    return (x1 / GRID * width, y1 / GRID * height, x2 / GRID * width, y2 / GRID * height)


def pixel_extent(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The filled pixels as half-open ranges (col0, row0, col1, row1), as PIL fills them; empty if col0 >= col1."""
    x1, y1, x2, y2 = box_to_pixels(box, width, height)
    return (min(int(x1), width), min(int(y1), height), min(int(x2) + 1, width), min(int(y2) + 1, height))


def box_masks(chain: GoTChain, width: int, height: int) -> torch.Tensor:
    """[N, H, W] float32, 1 inside each object's box (every object, coloured or not), 0 elsewhere."""
    check_canvas_size(width, height)
    check_box_count(chain)
    check_batch_pixels(len(chain.objects), width, height, "masks")
    masks = torch.zeros(len(chain.objects), height, width, dtype=torch.float32)
    for mask, obj in zip(masks, chain.objects):
        c0, r0, c1, r1 = pixel_extent(obj.box, width, height)
        mask[r0:r1, c0:c1] = 1.0
    return masks


def color_rgb(obj: GoTObject, index: int) -> tuple[int, int, int]:
    """The object's colour as PIL reads the name; a name PIL does not know is a ChainError naming it."""
    try:
        return ImageColor.getcolor(obj.color, "RGB")
    except (ValueError, AttributeError) as err:
        raise ChainError(f"object {index} ({_describe(obj)}) has the colour {obj.color!r}, which is not a colour "
                         f"name PIL knows; use a CSS/X11 name such as red, blue, green, gold or lightblue",
                         obj.span[0]) from err


def color_canvases(chain: GoTChain, width: int, height: int) -> torch.Tensor:
    """[N, 3, H, W] float32 in [-1, 1]: per coloured object a black canvas with its box filled in its colour."""
    check_canvas_size(width, height)
    colored = [(i, obj) for i, obj in enumerate(chain.objects) if chain.draws(obj)]
    canvases = torch.zeros(len(colored), 3, height, width, dtype=torch.uint8)
    for canvas, (index, obj) in zip(canvases, colored):
        c0, r0, c1, r1 = pixel_extent(obj.box, width, height)
        canvas[:, r0:r1, c0:c1] = torch.tensor(color_rgb(obj, index), dtype=torch.uint8)[:, None, None]
    return uint8_to_signed(canvases)


def layout_preview(chain: GoTChain, width: int, height: int) -> torch.Tensor:
    """[H, W, 3] in [0, 1]: every box as a translucent fill with a solid outline, in its colour (boxes that are
    not drawn into the guidance, uncoloured or before an <|im_end|>, in grey), later boxes on top, over a dark
    background with a faint line every 100 grid units; each box labelled with its number and phrase, so two boxes
    of one colour can be told apart."""
    check_canvas_size(width, height)
    check_box_count(chain)
    image = torch.tensor(PREVIEW_BACKGROUND).repeat(height, width, 1)
    for k in range(1, 10):
        image[:, min(int(k * 100 / GRID * width), width - 1)] = torch.tensor(PREVIEW_GRID_LINE)
        image[min(int(k * 100 / GRID * height), height - 1), :] = torch.tensor(PREVIEW_GRID_LINE)
    line = max(1, min(width, height) // 256)
    labels = []
    for index, obj in enumerate(chain.objects):
        rgb = tuple(v / 255 for v in color_rgb(obj, index)) if chain.draws(obj) else PREVIEW_UNCOLORED
        color = torch.tensor(rgb)
        c0, r0, c1, r1 = pixel_extent(obj.box, width, height)
        if c0 >= c1 or r0 >= r1:
            continue
        region = image[r0:r1, c0:c1]
        region.mul_(1 - PREVIEW_FILL_ALPHA).add_(PREVIEW_FILL_ALPHA * color)
        region[:line], region[-line:], region[:, :line], region[:, -line:] = color, color, color, color
        labels.append((f"{index + 1} {obj.phrase or ''}".strip(), region[line:-line, line:-line], rgb))
    font = ImageFont.load_default(size=max(PREVIEW_LABEL_MIN_SIZE, min(width, height) // 48))
    for text, inside, rgb in labels:  # after every box, so no later box hides an earlier one's label
        _draw_label(inside, text, rgb, font)
    return image


def _draw_label(inside: torch.Tensor, text: str, rgb: tuple[float, float, float], font: ImageFont.ImageFont) -> None:
    """`text` (the object's number and phrase) in the top-left corner of a box's inside [h, w, 3], in black or
    white on the box's colour, clipped to the box."""
    _, _, right, bottom = font.getbbox(text)
    height, width = min(bottom + 1, inside.shape[0]), min(right + 2, inside.shape[1])
    if height <= 0 or width <= 0:
        return
    mask = Image.new("L", (width, height))
    ImageDraw.Draw(mask).text((1, 0), text, fill=255, font=font)
    alpha = torch.tensor(list(mask.tobytes()), dtype=torch.float32).view(height, width, 1) / 255
    ink = torch.tensor((0.0, 0.0, 0.0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5 else (1.0, 1.0, 1.0))
    corner = inside[:height, :width]
    corner.copy_(torch.tensor(rgb) * (1 - alpha) + ink * alpha)


def _describe(obj: GoTObject) -> str:
    return f"box {obj.box}" if obj.phrase is None else f"{obj.phrase!r}, box {obj.box}"
