"""The pack's template cards in ComfyUI's template browser, in a real Chromium against a real ComfyUI server, on the
server's own frontend (1.27.10 with 0.3.64) and the newest (1.58.1, `newest_frontend_server`): the pack's
templates are listed text-to-image first, in web/template_cards.js' order, each card saying when to use it
(the frontends write the file name as the description; web/template_browser.js replaces it). Screenshots go to
tests/artifacts/template_browser/ (git-ignored)."""

from __future__ import annotations

import json
from pathlib import Path

from test_plan_editor_browser import prepare_frontend

from tests.test_newcomer import template_cards as planned_cards

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "template_browser"


def open_pack_cards(server, browser, label: str) -> tuple[str, list[str]]:
    prepare_frontend(server)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(server.url)
    page.wait_for_function("window.app?.graph && window.app.extensionManager?.command")
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? ''")
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.wait_for_selector('[role="dialog"]')
    page.wait_for_timeout(1500)
    (module,) = [name for name, names in server.get("/workflow_templates")[1].items() if planned_cards()[0][0] in names]
    page.get_by_text(module, exact=True).first.click()
    page.wait_for_timeout(1500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{label}_{version}.png"
    page.screenshot(path=str(shot))
    text = page.evaluate("() => document.querySelector('[role=\"dialog\"]').innerText")
    page.close()
    return version, text.splitlines()


def check_cards(lines: list[str], version: str) -> None:
    planned = planned_cards()
    order = [name for name, _ in planned]
    shown = [line.strip() for line in lines if line.strip() in order]
    assert shown == order, (version, shown)  # each title once, text-to-image first
    for name, description in planned:
        assert description in lines, (version, name, lines)


def test_the_cards_on_the_servers_frontend(comfyui_server, chromium_browser):
    version, lines = open_pack_cards(comfyui_server, chromium_browser, "own")
    check_cards(lines, version)


def test_the_cards_on_the_newest_frontend(newest_frontend_server, chromium_browser):
    version, lines = open_pack_cards(newest_frontend_server, chromium_browser, "newest")
    check_cards(lines, version)


WINDOW = {"width": 1366, "height": 768}  # the window tests/workflows_api/make_workflows.py FIRST_VIEW is made for
OUTPUTS = ("SaveImage", "PreviewImage")


def outputs_off_the_first_view(server, browser) -> tuple[str, dict]:
    """Per template, the output nodes (title bar included) not wholly inside the canvas when it opens."""
    prepare_frontend(server)
    page = browser.new_page(viewport=WINDOW)
    page.goto(server.url)
    page.wait_for_function("window.app?.graph && window.app.extensionManager?.command")
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? ''")
    outside = {}
    for path in sorted((REPO / "workflows").glob("*.json")):
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text()))
        page.wait_for_timeout(300)
        outside[path.stem] = page.evaluate("""(types) => {
            const box = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            return app.graph._nodes.filter((node) => types.includes(node.type)).filter((node) => {
                const x0 = (node.pos[0] + ds.offset[0]) * ds.scale, y0 = (node.pos[1] - title + ds.offset[1]) * ds.scale;
                const x1 = (node.pos[0] + node.size[0] + ds.offset[0]) * ds.scale;
                const y1 = (node.pos[1] + node.size[1] + ds.offset[1]) * ds.scale;
                return x0 < 0 || y0 < 0 || x1 > box.width || y1 > box.height;
            }).map((node) => node.title || node.type); }""", list(OUTPUTS))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"first_view_{version}.png"))
    page.close()
    return version, outside


def test_every_output_node_is_in_the_first_view(comfyui_server, chromium_browser):
    version, outside = outputs_off_the_first_view(comfyui_server, chromium_browser)
    assert not any(outside.values()), (version, outside)


def test_every_output_node_is_in_the_first_view_on_the_newest_frontend(newest_frontend_server, chromium_browser):
    version, outside = outputs_off_the_first_view(newest_frontend_server, chromium_browser)
    assert not any(outside.values()), (version, outside)
