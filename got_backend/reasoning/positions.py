"""Qwen2.5-VL's 3D rotary positions (M-RoPE) for a token sequence with still images.

Text tokens count up by one on all three axes. The `<|image_pad|>` run of an image with a merged grid of
h x w tokens gets (t, row, column) positions offset by the position where the run starts, and the text after
it continues at that offset + max(h, w). This is what transformers' `get_rope_index` computes for images
(4.49 and 5.x agree for single-frame images); owning it keeps positions identical across versions and lets
decoding continue a sequence: the token at index i >= N of a sequence of N tokens sits at i + delta on every
axis, with delta = max position + 1 - N.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ..errors import GoTError


class PositionError(GoTError):
    """The image pads of a token sequence do not match the images given for it."""


def image_runs(ids: Sequence[int], image_pad_id: int, tokens_per_image: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of each image's pad tokens, in order; consecutive runs are split by image size."""
    runs, index, count = [], 0, len(ids)
    images = iter(tokens_per_image)
    while index < count:
        if ids[index] != image_pad_id:
            index += 1
            continue
        size = next(images, None)
        if size is None:
            raise PositionError(f"image pad at token {index} but only {len(runs)} image(s) were given")
        end = index + size
        if end > count or any(t != image_pad_id for t in ids[index:end]):
            raise PositionError(f"image {len(runs)} needs {size} consecutive pad tokens from token {index}")
        runs.append((index, end))
        index = end
    if len(runs) != len(tokens_per_image):
        raise PositionError(f"{len(tokens_per_image)} image(s) given but the tokens hold {len(runs)}")
    return runs


def mrope_positions(ids: Sequence[int], image_grids: Sequence[tuple[int, int, int]], image_pad_id: int,
                    merge_size: int) -> tuple[torch.Tensor, int]:
    """Positions [3, N] (long) of every token and the decode delta, for images with (t, h, w) patch grids."""
    merged = [(t, h // merge_size, w // merge_size) for t, h, w in image_grids]
    runs = image_runs(ids, image_pad_id, [t * h * w for t, h, w in merged])
    pieces, cursor, position = [], 0, 0
    for (start, end), (t, h, w) in zip(runs, merged):
        text = start - cursor
        pieces.append(torch.arange(position, position + text).expand(3, -1))
        position += text
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        pieces.append(grid.reshape(3, -1) + position)
        position += max(h, w)
        cursor = end
    pieces.append(torch.arange(position, position + len(ids) - cursor).expand(3, -1))
    positions = torch.cat(pieces, dim=1)
    delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return positions, delta
