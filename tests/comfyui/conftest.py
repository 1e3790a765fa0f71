"""ComfyUI integration fixtures: a real ComfyUI next to this pack, skipped LOUDLY without one.

Environment:
- COMFYUI_DIR: a ComfyUI checkout (e.g. the harness's, see shared/comfyui-harness/README.md). Unset: every test
  here is skipped with a message saying so, and the run ends with a warning banner.
- COMFYUI_PYTHON: the python of ComfyUI's venv (default: this interpreter). The server runs under it, and the
  in-process tests are re-run under it (tests/comfyui/test_inprocess_suite.py) when this interpreter cannot
  import ComfyUI's dependencies.

Fixtures (session-scoped; reuse them in any test under tests/comfyui/):
- `comfyui_root` -> Path of COMFYUI_DIR.
- `inproc` -> InProcessComfy: ComfyUI's modules imported into this interpreter on the CPU, the pack loaded as the
  package `comfyui_got` (as ComfyUI loads a custom node: relative imports, its own `nodes` subpackage) and the
  tiny converted models registered in folder_paths. `inproc.pack_module("nodes.guider")` imports a pack module.
- `comfyui_server` -> ComfyServer: `python main.py --cpu` on a free loopback port with
  `--base-directory` a temporary folder whose custom_nodes/comfyui-got links to this checkout, the tiny models
  through `--extra-model-paths-config`, and an in-memory database, so nothing is written into COMFYUI_DIR.
  Methods: object_info(), submit(graph) -> (http status, body), run(graph) -> /history entry,
  execution_error(entry) -> the node error of a failed prompt, log();
  `base_dir / "models" / <folder>` is one more model folder a test may write files into (e.g. a bad UNet).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_got"
HARNESS_HINT = ("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its venv's python); see the ComfyUI "
                "harness README, shared/comfyui-harness/README.md")
SERVER_START_TIMEOUT = 180.0
INPROCESS_MARK = "comfyui_inprocess"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{INPROCESS_MARK}: uses ComfyUI's modules inside the test process")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker("comfyui")
        if "inproc" in getattr(item, "fixturenames", ()):
            item.add_marker(INPROCESS_MARK)


def pytest_terminal_summary(terminalreporter) -> None:
    if not os.environ.get("COMFYUI_DIR"):
        terminalreporter.write_sep("!", "ComfyUI integration tests were SKIPPED: COMFYUI_DIR is not set", red=True)
        terminalreporter.write_line(HARNESS_HINT, red=True)


def loud_skip(reason: str) -> None:
    warnings.warn(reason, stacklevel=2)
    print(f"\n*** SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def comfyui_root() -> Path:
    value = os.environ.get("COMFYUI_DIR")
    if not value:
        loud_skip(f"ComfyUI integration test skipped: COMFYUI_DIR is not set; {HARNESS_HINT}")
    root = Path(value).resolve()
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        pytest.fail(f"COMFYUI_DIR={root} is not a ComfyUI checkout (no main.py / comfy/)")
    return root


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


# --- in-process ------------------------------------------------------------------------------------------------

@dataclass
class InProcessComfy:
    root: Path
    models_dir: Path
    pack: types.ModuleType

    def pack_module(self, name: str) -> types.ModuleType:
        return importlib.import_module(f"{PACK_NAME}.{name}")


def comfyui_importable_here() -> str | None:
    """None if this interpreter has ComfyUI's third-party dependencies, else the first missing one."""
    for module in ("einops", "torchsde", "av", "scipy", "aiohttp", "yaml", "safetensors", "PIL"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


def import_comfyui(root: Path, cpu: bool = True) -> None:
    """ComfyUI's modules importable here, on the CPU unless `cpu` is False (bench/guider_step.py on a GPU)."""
    ours = sys.modules.get("nodes")
    if ours is not None and Path(getattr(ours, "__file__", "")).resolve() != root / "nodes.py":
        raise RuntimeError(f"`nodes` is already imported from {ours.__file__}, not from ComfyUI: import the pack as "
                           f"`{PACK_NAME}` (the `inproc` fixture), never as top-level `nodes`")
    # Appended, not prepended: ComfyUI's top-level `tests` (and `nodes`) must not shadow this repository's.
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from comfy.cli_args import args

    # Outside main.py the command line is not parsed: --cpu must be set before model_management is imported.
    args.cpu = cpu
    importlib.import_module("comfy.model_management")
    if ours is None:  # ComfyUI's nodes.py, which comfy_extras and the executor import as `nodes`
        spec = importlib.util.spec_from_file_location("nodes", root / "nodes.py")
        sys.modules["nodes"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def load_pack() -> types.ModuleType:
    """This checkout imported as the package `comfyui_got`, as ComfyUI loads a custom node."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def inprocess_rerun_python(comfyui_root: Path) -> str:
    """The python to re-run the in-process tests with, when this interpreter cannot import ComfyUI."""
    if comfyui_importable_here() is None:
        pytest.skip("not needed: this interpreter imports ComfyUI, so the in-process tests ran directly")
    python = os.environ.get("COMFYUI_PYTHON")
    if not python:
        loud_skip(f"in-process ComfyUI tests skipped: {sys.executable} lacks ComfyUI's dependencies and "
                  f"COMFYUI_PYTHON is not set; {HARNESS_HINT}")
    return python


@pytest.fixture(scope="session")
def inproc(comfyui_root: Path, tiny_models_dir: Path) -> InProcessComfy:
    missing = comfyui_importable_here()
    if missing is not None:
        loud_skip(f"in-process ComfyUI test skipped here: this interpreter ({sys.executable}) lacks ComfyUI's "
                  f"dependency `{missing}`; tests/comfyui/test_inprocess_suite.py re-runs these tests under "
                  "COMFYUI_PYTHON")
    import_comfyui(comfyui_root)
    import folder_paths

    for folder in sorted(p for p in tiny_models_dir.iterdir() if p.is_dir()):
        folder_paths.add_model_folder_path(folder.name, str(folder))
    return InProcessComfy(comfyui_root, tiny_models_dir, load_pack())


# --- server ----------------------------------------------------------------------------------------------------

def _http(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@dataclass
class ComfyServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    base_dir: Path
    models_dir: Path

    def get(self, path: str) -> tuple[int, object]:
        return _http("GET", self.url + path)

    def post(self, path: str, body: dict) -> tuple[int, object]:
        return _http("POST", self.url + path, body)

    def object_info(self) -> dict:
        status, info = self.get("/object_info")
        assert status == 200, f"/object_info -> HTTP {status}"
        return info

    def submit(self, graph: dict) -> tuple[int, dict]:
        """POST /prompt; (200, {prompt_id, ...}) if queued, (400, {error, node_errors}) if validation refused it."""
        return self.post("/prompt", {"prompt": graph, "client_id": str(uuid.uuid4())})

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, history = self.get(f"/history/{prompt_id}")
            entry = (history or {}).get(prompt_id) if status == 200 else None
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            assert self.process.poll() is None, f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}"
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log()[-4000:]}")

    def run(self, graph: dict, timeout: float = 300.0) -> dict:
        """Queue `graph` and return its /history entry (status_str 'success' or 'error')."""
        status, body = self.submit(graph)
        assert status == 200, f"/prompt refused the graph (HTTP {status}): {json.dumps(body, indent=1)}"
        return self.wait(body["prompt_id"], timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @staticmethod
    def execution_error(entry: dict) -> dict | None:
        """The `execution_error` message of a /history entry (node_type, exception_message, ...), or None."""
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return data
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_model_paths(models_dir: Path, yaml_path: Path) -> None:
    folders = sorted(p.name for p in models_dir.iterdir() if p.is_dir())
    lines = ["got_tests:", f"    base_path: {json.dumps(str(models_dir))}"]
    lines += [f"    {name}: {json.dumps(name)}" for name in folders]
    yaml_path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def serving(comfyui_root: Path, tiny_models_dir: Path, base: Path, *extra_args: str,
            extra_nodes: tuple[Path, ...] = ()):
    """A ComfyUI server on the CPU with the pack and the tiny models (see the module docstring), until exit;
    `extra_nodes` are test-only node packs (folders) installed beside it."""
    (base / "custom_nodes").mkdir()
    (base / "models" / "diffusion_models").mkdir(parents=True)  # ComfyUI's own default, for test-made files
    (base / "custom_nodes" / "comfyui-got").symlink_to(REPO, target_is_directory=True)
    for folder in extra_nodes:
        (base / "custom_nodes" / folder.name).symlink_to(folder, target_is_directory=True)
    yaml_path = base / "extra_model_paths.yaml"
    _write_model_paths(tiny_models_dir, yaml_path)
    port = _free_port()
    log_path = base / "comfyui.log"
    command = [comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--extra-model-paths-config", str(yaml_path),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfyui_root, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = ComfyServer(f"http://127.0.0.1:{port}", process, log_path, base, tiny_models_dir)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited during startup (code {process.returncode}):\n{server.log()[-4000:]}")
            try:
                if server.get("/object_info")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI not ready after {SERVER_START_TIMEOUT}s:\n{server.log()[-4000:]}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="session")
def comfyui_server(comfyui_root: Path, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with serving(comfyui_root, tiny_models_dir, tmp_path_factory.mktemp("comfyui_base")) as server:
        yield server


@pytest.fixture(scope="session")
def newest_frontend_server(comfyui_root: Path, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same server with the newest frontend (PyPI's comfyui-frontend-package, unpacked into a folder named by
    GOT_FRONTEND_ROOT: its `static` folder, or the folder holding the unpacked wheel), served with
    --front-end-root; skipped loudly without one. .ci/run unpacks 1.58.1 and sets GOT_FRONTEND_ROOT."""
    root = os.environ.get("GOT_FRONTEND_ROOT")
    static = next((p for p in (Path(root) / "comfyui_frontend_package" / "static", Path(root))
                   if (p / "index.html").is_file()), None) if root else None
    if static is None:
        loud_skip("newest-frontend browser test skipped: set GOT_FRONTEND_ROOT to an unpacked "
                  "comfyui-frontend-package wheel (pip download comfyui-frontend-package==1.58.1 --no-deps, unzip)")
    with serving(comfyui_root, tiny_models_dir, tmp_path_factory.mktemp("comfyui_base_newest"),
                 "--front-end-root", str(static)) as server:
        yield server


# --- browser ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium_browser():
    """A headless Chromium (the system's: Debian's `chromium`, or GOT_CHROMIUM) under Playwright for Python, for
    tests of the frontend extension against `comfyui_server`; skipped loudly without either."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        loud_skip("browser test skipped: Playwright for Python is not installed (pip install -r "
                  "requirements-test.txt; its own browser download is not needed)")
    candidates = (os.environ.get("GOT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium")
    executable = next((c for c in candidates if c and Path(c).is_file()), None)
    if executable is None:
        loud_skip("browser test skipped: no Chromium found (apt-get install chromium, or set GOT_CHROMIUM to a "
                  "Chromium binary)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def skip_loudly():
    """`loud_skip` for a test body (test modules cannot import a conftest by name)."""
    return loud_skip
