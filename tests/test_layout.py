"""Layout against PIL's own drawing, the way the reference draws its spatial canvases."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor, ImageDraw

from got_backend.ssgm.chain import ChainError, parse_chain
from got_backend.images import uint8_to_signed
from got_backend.ssgm.layout import PREVIEW_BACKGROUND, box_masks, box_to_pixels, color_canvases, layout_preview
from got_backend.ssgm.sizes import SizeError

BS, BE = "<|box_start|>", "<|box_end|>"
# Sizes include ones where x/1000*W lands a hair below a whole number (e.g. 145/1000*200 = 28.999999999999996).
SIZES = [(64, 64), (96, 64), (64, 120), (200, 40), (360, 24), (8, 8), (1, 1), (37, 53)]
COLORS = sorted(ImageColor.colormap)


def reference_canvas(box: tuple, color: str, width: int, height: int) -> np.ndarray:
    """The reference: a black RGB canvas with the box drawn by PIL at x/1000*W, y/1000*H."""
    x1, y1, x2, y2 = box
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).rectangle([x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height],
                                    fill=color)
    return np.array(image)


def random_chain(rng: random.Random, count: int) -> tuple[str, list[tuple]]:
    edges = [0, 1, 145, 285, 290, 499, 500, 575, 998, 999, 1000]
    pieces, boxes = [], []
    for _ in range(count):
        x = sorted(rng.choice(edges) if rng.random() < 0.3 else rng.randint(0, 1000) for _ in range(2))
        y = sorted(rng.choice(edges) if rng.random() < 0.3 else rng.randint(0, 1000) for _ in range(2))
        color = rng.choice(COLORS)
        boxes.append(((x[0], y[0], x[1], y[1]), color))
        pieces.append(f"{BS}({x[0]},{y[0]}),({x[1]},{y[1]}){BE} ({color}) ")
    return "".join(pieces), boxes


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_canvases_and_masks_equal_pil(width: int, height: int) -> None:
    rng = random.Random(width * 1000 + height)
    text, boxes = random_chain(rng, 60)
    chain = parse_chain(text)
    canvases, masks = color_canvases(chain, width, height), box_masks(chain, width, height)
    assert canvases.shape == (60, 3, height, width) and canvases.dtype == torch.float32
    assert masks.shape == (60, height, width) and masks.dtype == torch.float32
    for canvas, mask, (box, color) in zip(canvases, masks, boxes):
        expected = reference_canvas(box, color, width, height)
        reference = uint8_to_signed(torch.from_numpy(expected).permute(2, 0, 1))
        assert torch.equal(canvas, reference), (box, color)
        drawn = reference_canvas(box, "white", width, height)[..., 0] > 0
        assert torch.equal(mask, torch.from_numpy(drawn).float()), box


def test_signed_range_matches_to_tensor_normalize() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    signed = uint8_to_signed(levels)
    assert signed[0] == -1 and signed[255] == 1
    assert torch.allclose(signed.double(), levels.double() * 2 / 255 - 1, atol=1e-6)
    transforms = pytest.importorskip("torchvision.transforms")  # ComfyUI ships torchvision
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    to_signed = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    assert torch.equal(uint8_to_signed(torch.from_numpy(np.array(image)).permute(2, 0, 1)), to_signed(image))


def test_uncoloured_boxes_have_masks_but_no_canvas() -> None:
    chain = parse_chain(f"{BS}(0,0),(500,500){BE} and {BS}(500,500),(999,999){BE} (Red)")
    assert box_masks(chain, 16, 16).sum(dim=(1, 2)).tolist() == [81.0, 64.0]  # PIL fills 0..8 inclusive
    canvases = color_canvases(chain, 16, 16)
    assert canvases.shape == (1, 3, 16, 16)
    assert canvases[0, :, 8:16, 8:16].eq(torch.tensor([1.0, -1.0, -1.0])[:, None, None]).all()
    assert canvases[0, :, :8].eq(-1).all()
    assert color_canvases(parse_chain("no boxes"), 16, 8).shape == (0, 3, 8, 16)


def test_unknown_colour_is_a_chain_error_naming_it() -> None:
    chain = parse_chain(f"<|object_ref_start|>cat<|object_ref_end|>{BS}(0,0),(500,500){BE} (blurple)")
    for draw in (color_canvases, layout_preview):
        with pytest.raises(ChainError, match=r"object 0 \('cat', box \(0, 0, 500, 500\)\).*'blurple'"):
            draw(chain, 32, 32)
    assert box_masks(chain, 32, 32).shape == (1, 32, 32)


def test_bad_sizes() -> None:
    chain = parse_chain("")
    for width, height in [(0, 8), (8, -1), (8.0, 8), (True, 8)]:
        with pytest.raises(SizeError, match="positive whole number"):
            box_masks(chain, width, height)


def test_box_to_pixels_is_the_reference_mapping() -> None:
    assert box_to_pixels((145, 0, 1000, 500), 200, 30) == (145 / 1000 * 200, 0.0, 200.0, 15.0)
    assert int(box_to_pixels((145, 0, 0, 0), 200, 8)[0]) == 28  # not 29, as 145*200/1000 would give


def test_layout_preview() -> None:
    chain = parse_chain(f"{BS}(0,0),(499,499){BE} (blue) {BS}(250,250),(749,749){BE} {BS}(1000,0),(1000,1000){BE} (red)")
    preview = layout_preview(chain, 128, 64)
    assert preview.shape == (64, 128, 3) and preview.min() >= 0 and preview.max() <= 1
    assert preview[0, 0].tolist() == [0.0, 0.0, 1.0]  # outline in the box's colour
    inside_blue = preview[10, 20]
    assert inside_blue[2] > inside_blue[0] + 0.2  # translucent blue fill over the dark background
    overlap = preview[24, 50]  # the uncoloured box is drawn over the blue one, in grey
    assert overlap[0] > inside_blue[0] and overlap[2] > 0.3
    assert preview[60, 120].tolist() == pytest.approx([0.12, 0.12, 0.13])  # background
    assert not preview[:, 127].eq(torch.tensor([1.0, 0.0, 0.0])).all(dim=-1).any()  # a box at x=1000 is off-canvas


def test_layout_preview_labels_each_box_with_its_number_and_phrase() -> None:
    """Two boxes of one colour can be told apart: each carries its number and phrase, white on the dark red."""
    ref = "<|object_ref_start|>{}<|object_ref_end|>"
    chain = parse_chain(f"{ref.format('cat')}{BS}(0,0),(450,900){BE} (darkred) "
                        f"{ref.format('dog')}{BS}(500,0),(950,900){BE} (darkred) {BS}(0,950),(1000,1000){BE} (red)")
    preview = layout_preview(chain, 256, 128)
    first, second = preview[1:12, 1:40], preview[1:12, 129:168]  # inside each box, after its outline
    white = first.min(dim=-1).values > 0.7  # anti-aliased white ink
    assert white.sum() > 10 and not torch.equal(first, second)  # ink, and two different labels
    assert torch.equal(preview[1:12, 40:100], layout_preview(parse_chain(f"{BS}(0,0),(450,900){BE} (darkred)"),
                                                             256, 128)[1:12, 40:100])  # short: "1 cat" only
    thin = preview[122:127, 1:255]  # the third box is 6 pixels tall: its label is clipped to the box
    assert torch.equal(preview[127], layout_preview(parse_chain(f"{BS}(0,950),(1000,1000){BE} (red)"), 256, 128)[127])
    assert thin.ne(torch.tensor(PREVIEW_BACKGROUND)).any()
