"""What the artist sees: the judge's scores, the reflection's correction and the rounds' report on their nodes,
in a real Chromium against a real ComfyUI server, on the server's own frontend (1.27.10 with ComfyUI 0.3.64)
and on the newest (comfyui-frontend-package 1.58.1 through --front-end-root, the `newest_frontend_server`
fixture), in the classic canvas and in Nodes 2.0. The judge and reflect templates are loaded and queued at test
size; every text the server sent for a node (its history's `text` output) must be on that node. Screenshots go to
tests/artifacts/result_text/ (git-ignored)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from test_plan_editor_browser import prepare_frontend
from test_workflows import CHAIN, SIZE

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "result_text"
JUDGE, REFLECT, ROUND = 15, 40, 50
TEMPLATES = {"GoT best of N with a judge": [JUDGE], "GoT best of N, then reflect": [JUDGE, REFLECT, ROUND]}
PROMPT = "a red apple and a green pear"
TIMEOUT_MS = 240_000


def at_test_size(page, prompt: str) -> None:
    """The loaded template at test size, as tests/comfyui/test_workflows.small() sets its API twin; the
    reflection's threshold 1, so that the correction is written and one edit rendered."""
    page.evaluate("""([size, chain, prompt]) => {
        const set = (node, name, value) => { const w = node.widgets?.find((w) => w.name === name); if (w) w.value = value; };
        for (const node of app.graph._nodes) {
            if (node.type === "PrimitiveInt") set(node, "value", size);
            if (node.type === "GoTDDPMSchedule") set(node, "steps", 2);
            if (node.type === "GoTReasoner") { set(node, "chain_start", chain); set(node, "max_new_tokens", 8); }
            if (node.type === "PrimitiveStringMultiline") set(node, "value", prompt);
            if (node.type === "GoTReflect") set(node, "threshold", 1.0);
        } }""", [SIZE, CHAIN, prompt])


def shown_on(page, node: int) -> str:
    """The text on the node: its result widget's text (a textarea, or the prose view)."""
    return page.evaluate("""(id) => {
        const node = app.graph.getNodeById(id);
        const widget = node.widgets?.find((w) => w.name === "got_result");
        return widget ? String(widget.value ?? "") : ""; }""", node)


def visible_on(page, node: int, vue: bool) -> bool:
    """The text is drawn: a visible textarea holding it (inside the Vue node with Nodes 2.0)."""
    scope = f'[data-node-id="{node}"] ' if vue else ""
    return page.evaluate("""([scope, id]) => {
        const text = app.graph.getNodeById(id).widgets.find((w) => w.name === "got_result").value;
        return [...document.querySelectorAll(scope + "textarea")].some((area) =>
            area.value === text && area.offsetParent !== null && area.getBoundingClientRect().height > 0); }""",
                         [scope, node])


def run_templates(server, browser, label: str) -> list[Path]:
    prepare_frontend(server)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(server.url)
    page.wait_for_function("window.app?.graph && window.app.extensionManager?.setting")
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? ''")
    shots = []
    for name, nodes in TEMPLATES.items():
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }",
                      json.loads((REPO / "workflows" / f"{name}.json").read_text()))
        at_test_size(page, f"{PROMPT} ({name})")  # a prompt of its own: cached nodes send no text again
        with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as sent:
            page.evaluate("app.queuePrompt(0, 1)")
        prompt_id = sent.value.json()["prompt_id"]
        entry = server.wait(prompt_id, timeout=TIMEOUT_MS / 1000)
        assert entry["status"]["status_str"] == "success", server.execution_error(entry)
        for node in nodes:
            (expected,) = entry["outputs"][str(node)]["text"]
            with contextlib.suppress(PlaywrightTimeout):  # the assertion says what the node shows instead
                page.wait_for_function("([id, text]) => app.graph.getNodeById(id).widgets?.find((w) => "
                                       "w.name === 'got_result')?.value === text", arg=[node, expected],
                                       timeout=20_000)
            assert shown_on(page, node) == expected, (node, page.evaluate(
                "(id) => app.graph.getNodeById(id).widgets?.map((w) => [w.name, w.type, String(w.value)])", node),
                errors, [c for c in console if "got" in c.lower() or "rror" in c][-10:])
        scores = shown_on(page, JUDGE).splitlines()
        assert len(scores) == 4 and sum(line.startswith("*") for line in scores) == 1
        if ROUND in nodes:
            reflect = shown_on(page, REFLECT).splitlines()
            assert reflect[0][2:].startswith("round 0: ") and reflect[-1].startswith("correction: ")
            assert len(reflect[-1]) > len("correction: ")
            assert shown_on(page, ROUND).splitlines()[1][2:].startswith("round 1: ")
        for vue in (False, True):
            page.evaluate("async (on) => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on); }",
                          vue)
            page.wait_for_timeout(500)
            for node in nodes:
                page.evaluate("(id) => { app.canvas.ds.scale = 1; app.canvas.centerOnNode(app.graph.getNodeById(id));"
                              " app.canvas.setDirty(true, true); }", node)
                page.wait_for_timeout(300)
                assert visible_on(page, node, vue), f"{name}: node {node}'s text is not drawn ({label} {version}, " \
                                                    f"Nodes 2.0 {'on' if vue else 'off'})"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"{label}_{version}_{'nodes2' if vue else 'classic'}_{name.replace(' ', '_')}.png"
            page.evaluate("(id) => app.canvas.centerOnNode(app.graph.getNodeById(id))", nodes[-1])
            page.wait_for_timeout(300)
            page.screenshot(path=str(shot))
            shots.append(shot)
        page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); }")
    assert not [e for e in errors if "got" in e.lower()], errors
    page.close()
    print(f"\n[frontend {version}] screenshots: " + ", ".join(str(s.relative_to(REPO)) for s in shots))
    return shots


def test_results_on_the_nodes_with_the_servers_frontend(comfyui_server, chromium_browser):
    run_templates(comfyui_server, chromium_browser, "own")


def test_results_on_the_nodes_with_the_newest_frontend(newest_frontend_server, chromium_browser):
    run_templates(newest_frontend_server, chromium_browser, "newest")
