"""Each template in workflows/ has a same-name thumbnail for ComfyUI's template browser that shows what the template
does. The tiny models render noise, so a thumbnail is drawn from what the graph makes visible in a real run of the
template on the tests' server (256x256, 2 steps, the tests' two-object chain): the plan's labelled boxes, the
image to edit beside them, the judge's score chart, the rounds' scores, with a line saying the steps.
`GOT_WRITE_THUMBNAILS=1 pytest tests/comfyui/test_template_thumbnails.py` writes them; otherwise they are checked
to be there, readable and served where the template browser asks."""

from __future__ import annotations

import os
import urllib.parse
import urllib.request

import pytest

from tests.comfyui.test_workflows import UI_DIR, WORKFLOWS, ran, small, source_image, twin  # noqa: F401

SIDE, CAPTION = 256, 40  # the thumbnail's side; the caption band at its bottom
THUMBNAIL_RUN_SIZE = 256
# Per template: the nodes whose images make the picture (an input image by its file), and the caption.
PICTURES = {
    "GoT text-to-image": (["17"], "prompt > plan > image"),
    "GoT image editing": (["source", "17"], "your image + an edit > plan > image"),
    "GoT interactive generation": (["27"], "drag the plan's boxes > re-render"),
    "GoT think, plan, render": (["17"], "think > rewrite > plan > image"),
    "GoT best of N with a judge": (["17"], "N candidates > scores > best"),
    "GoT best of N, then reflect": (["53"], "best of N > correction > edit"),
}


def node_image(server, entry: dict, node: str):
    from PIL import Image

    image = entry["outputs"][node]["images"][0]
    return Image.open(server.base_dir / image["type"] / image["subfolder"] / image["filename"]).convert("RGB")


def thumbnail(server, source, name: str):
    """The template's picture: its panels side by side above its caption, on the previews' dark background."""
    from PIL import Image, ImageDraw, ImageFont

    graph = small(twin(name))
    for node in graph.values():
        if node["class_type"] == "PrimitiveInt":
            node["inputs"]["value"] = THUMBNAIL_RUN_SIZE  # large enough for the boxes' labels to read
    entry, _ = ran(server, graph, f"{name} (thumbnail)")
    nodes, caption = PICTURES[name]
    panels = [Image.open(source).convert("RGB") if node == "source" else node_image(server, entry, node)
              for node in nodes]
    picture = Image.new("RGB", (SIDE, SIDE), (31, 31, 33))
    width, height = SIDE // len(panels), SIDE - CAPTION
    for index, panel in enumerate(panels):
        panel.thumbnail((width - 8, height - 8), Image.Resampling.LANCZOS)
        picture.paste(panel, (index * width + (width - panel.width) // 2, (height - panel.height) // 2))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=15)
    left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
    assert right - left <= SIDE - 8, f"{name}: the caption {caption!r} is wider than the thumbnail"
    draw.text(((SIDE - (right - left)) // 2, height + (CAPTION - (bottom - top)) // 2 - top), caption,
              fill=(230, 230, 230), font=font)
    return picture


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_template_has_a_thumbnail_that_shows_what_it_does(comfyui_server, source_image, name):
    from PIL import Image

    path = UI_DIR / f"{name}.jpg"
    if os.environ.get("GOT_WRITE_THUMBNAILS"):
        thumbnail(comfyui_server, source_image, name).save(path, quality=90)
    with Image.open(path) as picture:
        assert picture.format == "JPEG" and picture.size == (SIDE, SIDE)
    url = f"{comfyui_server.url}/api/workflow_templates/comfyui-got/{urllib.parse.quote(path.name)}"
    with urllib.request.urlopen(url) as response:  # where the template browser fetches it from
        assert response.status == 200 and response.read() == path.read_bytes()
