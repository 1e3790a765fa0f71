"""Each template in workflows/ has a same-name thumbnail for ComfyUI's template browser, made from a real run
of that template on the tests' server (64x64, 2 steps, the tiny models): `GOT_WRITE_THUMBNAILS=1 pytest
tests/comfyui/test_template_thumbnails.py` writes them; otherwise they are checked to be there and readable."""

from __future__ import annotations

import os

import pytest

from tests.comfyui.test_workflows import UI_DIR, WORKFLOWS, ran, saved_image, small, source_image, twin  # noqa: F401


def rendered_image(comfyui_server, name: str):
    graph = small(twin(name))
    entry, _ = ran(comfyui_server, graph, f"{name} (thumbnail)")
    saving = [node_id for node_id, node in graph.items() if node["class_type"] == "SaveImage"]
    return saved_image(comfyui_server, entry, saving[-1])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_template_has_a_thumbnail_from_a_real_run(comfyui_server, source_image, name):
    from PIL import Image

    path = UI_DIR / f"{name}.jpg"
    if os.environ.get("GOT_WRITE_THUMBNAILS"):
        rendered_image(comfyui_server, name).convert("RGB").resize((256, 256), Image.Resampling.NEAREST).save(
            path, quality=90)
    with Image.open(path) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (256, 256)
    import urllib.parse
    import urllib.request

    url = f"{comfyui_server.url}/api/workflow_templates/comfyui-got/{urllib.parse.quote(path.name)}"
    with urllib.request.urlopen(url) as response:  # where the template browser fetches it from
        assert response.status == 200 and response.read() == path.read_bytes()
