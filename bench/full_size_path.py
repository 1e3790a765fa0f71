"""The artist's file path at full size on the CPU: release -> converter -> ComfyUI's GoT loaders -> an image.

    python bench/full_size_path.py WORK             # full size (about 28 GB release + 26 GB converted, most of an hour)
    python bench/full_size_path.py WORK --bf16      # a bf16 release (half the disk)
    python bench/full_size_path.py WORK --tiny      # the same steps on the tiny models (CI runs this)

Each step runs as its own process and is timed with its peak RSS and the bytes it wrote:

1. bench/full_size_release.py writes a synthetic release in the released layout (random weights);
2. `python -m got_backend.convert` converts it into WORK/models;
3. with COMFYUI_DIR (and COMFYUI_PYTHON) set, a real ComfyUI server on the CPU runs the text-to-image template's
   graph on the converted files (GoT MLLM Loader, GoT UNet Loader, the SSGM nodes, a typed chain with two boxes,
   --side pixels, --steps DDPM steps), then loads the MLLM once from the raw release; after each, a bench-only
   node (bench/comfy_memory_report) reports what ComfyUI's model management believes each loaded model weighs
   against the real bytes of its tensors;
4. with --cli, the command line renders the same chain from the converted files.

Prints a table and, with --json, writes the figures. The machine's cores, RAM and free disk come first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "tests" / "workflows_api" / "GoT text-to-image.api.json"
CHAIN = ("A <|object_ref_start|>red apple<|object_ref_end|><|box_start|>(100,300),(480,800)<|box_end|> (red) and a "
         "<|object_ref_start|>green pear<|object_ref_end|><|box_start|>(520,300),(900,800)<|box_end|> (green) on a "
         "wooden table.<|im_gen_start|>")
PROMPT = "A red apple and a green pear side by side on a wooden table"


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_gb: float
    written_gb: float = 0.0
    notes: dict = field(default_factory=dict)


def machine(work: Path) -> dict:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = lambda key: int(meminfo[key].split()[0]) * 1024  # noqa: E731
    return {"cores": os.cpu_count(), "ram_gb": round(kib("MemTotal") / 1e9, 1),
            "available_gb": round(kib("MemAvailable") / 1e9, 1),
            "free_disk_gb": round(shutil.disk_usage(work).free / 1e9, 1)}


def folder_bytes(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in ([p] if p.is_file() else p.rglob("*"))
               if f.is_file() and not f.is_symlink())


def measured(name: str, argv: list[str], written: list[Path] = (), env: dict | None = None) -> Step:
    """Run `argv` as a child process: wall time, its peak RSS (wait4's ru_maxrss) and the bytes under `written`."""
    print(f"[{name}] {' '.join(map(str, argv))}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen([str(a) for a in argv], cwd=REPO, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"[{name}] failed with exit code {os.waitstatus_to_exitcode(status)}")
    step = Step(name, seconds, usage.ru_maxrss * 1024 / 1e9, folder_bytes(*written) / 1e9)
    print(f"[{name}] {json.dumps(asdict(step))}", flush=True)
    return step


class Server:
    """ComfyUI on the CPU over WORK/models, with the bench's memory report node."""

    def __init__(self, comfyui: Path, python: str, base: Path, models: Path) -> None:
        shutil.rmtree(base, ignore_errors=True)
        (base / "custom_nodes").mkdir(parents=True)
        (base / "custom_nodes" / "comfyui-got").symlink_to(REPO)
        (base / "custom_nodes" / "comfy_memory_report").symlink_to(REPO / "bench" / "comfy_memory_report")
        folders = sorted(p.name for p in models.iterdir() if p.is_dir())
        (base / "extra_model_paths.yaml").write_text(
            "bench:\n" + f"    base_path: {json.dumps(str(models))}\n" + "".join(f"    {f}: {f}\n" for f in folders))
        self.port = 8190 + os.getpid() % 500
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(base / "comfyui.log", "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory",
             str(base), "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
             "--database-url", "sqlite:///:memory:", "--disable-auto-launch"],
            cwd=comfyui, stdout=self.log, stderr=subprocess.STDOUT)
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() - self.started > 300:
                sys.exit(f"ComfyUI did not start; see {base / 'comfyui.log'}")
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            return urllib.request.urlopen(self.url + "/object_info/GoTReasoner", timeout=5).status == 200
        except OSError:
            return False

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            text = response.read()
        return json.loads(text) if text else {}

    def run(self, graph: dict, timeout: float = 7200) -> tuple[dict, float]:
        """Run `graph`; its /history entry and seconds. The server's peak RSS is reset first (clear_refs 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        started = time.monotonic()
        prompt_id = self.post("/prompt", {"prompt": graph, "client_id": str(uuid.uuid4())})["prompt_id"]
        while time.monotonic() - started < timeout:
            try:  # a server busy reading 30 GB can be slow to answer
                with urllib.request.urlopen(f"{self.url}/history/{prompt_id}", timeout=60) as response:
                    entry = json.loads(response.read()).get(prompt_id)
            except OSError:
                entry = None
            status = (entry or {}).get("status", {}).get("status_str")
            if status == "error":
                sys.exit(f"the prompt failed: {json.dumps(entry['status']['messages'])[-2000:]}")
            if status == "success":
                return entry, time.monotonic() - started
            if self.process.poll() is not None:
                sys.exit(f"ComfyUI died (exit {self.process.returncode}; -9: killed, out of memory) after "
                         f"{time.monotonic() - started:.0f} s")
            time.sleep(0.5)
        sys.exit(f"the prompt did not finish in {timeout} s")

    def peak_rss_gb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024 / 1e9

    def stop(self) -> float:
        self.process.terminate()
        _, _, usage = os.wait4(self.process.pid, 0)
        return usage.ru_maxrss * 1024 / 1e9


def render_graph(side: int, steps: int, dtype: str) -> dict:
    """The text-to-image template's graph at `side` pixels and `steps` steps, its plan typed into a Chain Parser
    after the Reasoner (which then writes only 8 tokens), and the memory report after the decode."""
    graph = json.loads(TEMPLATE.read_text())
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "PrimitiveInt":
            inputs["value"] = side
        elif kind == "GoTMLLMLoader":
            inputs["dtype"] = dtype
        elif kind == "GoTReasoner":
            inputs.update(prompt=PROMPT, max_new_tokens=8)
        elif kind == "GoTDDPMSchedule":
            inputs["steps"] = steps
    reasoner = next(k for k, n in graph.items() if n["class_type"] == "GoTReasoner")
    graph["parser"] = {"class_type": "GoTChainParser", "inputs": {"text": CHAIN, "chain": [reasoner, 0]}}
    for node in graph.values():
        for name, value in node["inputs"].items():
            if value == [reasoner, 0] and node["class_type"] != "GoTChainParser":
                node["inputs"][name] = ["parser", 0]
    decode = next(k for k, n in graph.items() if n["class_type"] == "VAEDecode")
    graph["memory"] = {"class_type": "GoTBenchMemoryReport", "inputs": {"after": [decode, 0]}}
    return graph


def release_load_graph(dtype: str) -> dict:
    return {"1": {"class_type": "GoTMLLMLoader", "inputs": {"model_folder": "GoT-6B-release",
                                                            "qwen_folder": "Qwen2.5-VL-3B-Instruct", "dtype": dtype}},
            "2": {"class_type": "GoTReasoner", "inputs": {"mllm": ["1", 0], "prompt": PROMPT, "task": "text-to-image",
                                                          "max_new_tokens": 2, "sampling": False, "seed": 0,
                                                          "temperature": 1.0, "top_p": 1.0}},
            "memory": {"class_type": "GoTBenchMemoryReport", "inputs": {"after": ["2", 0]}}}


def memory_rows(entry: dict) -> list[dict]:
    return json.loads(entry["outputs"]["memory"]["text"][0])


def server_steps(work: Path, models: Path, side: int, steps: int, dtype: str) -> list[Step]:
    """Each graph on a fresh server: on the CPU, ComfyUI's unload leaves the weights in RAM (the offload device)."""
    comfyui, python = Path(os.environ["COMFYUI_DIR"]), os.environ.get("COMFYUI_PYTHON", sys.executable)
    measured_steps = []
    for index, (name, graph) in enumerate(((f"ComfyUI: text to image {side}x{side}, {steps} steps (converted files)",
                         render_graph(side, steps, dtype)),
                        ("ComfyUI: GoT MLLM Loader from the raw release (+ 2 tokens)", release_load_graph(dtype)))):
        server = Server(comfyui, python, work / f"comfy_base_{index + 1}", models)
        print(f"[comfyui] ready in {time.monotonic() - server.started:.1f} s", flush=True)
        entry, seconds = server.run(graph)
        measured_steps.append(Step(name, seconds, server.peak_rss_gb(), notes={"memory": memory_rows(entry)}))
        print(f"[{name}] {json.dumps(asdict(measured_steps[-1]))}", flush=True)
        server.stop()
    return measured_steps


def print_table(facts: dict, steps: list[Step]) -> None:
    print(f"\nmachine: {facts['cores']} cores, {facts['ram_gb']} GB RAM, {facts['free_disk_gb']} GB free disk (CPU)")
    print(f"{'step':72} {'seconds':>8} {'peak RSS GB':>12} {'written GB':>11}")
    for step in steps:
        print(f"{step.name:72} {step.seconds:8.1f} {step.peak_rss_gb:12.2f} {step.written_gb:11.2f}")
        for row in step.notes.get("memory", []):
            off = row["model_size"] / row["real_bytes"] - 1
            print(f"    {row['model']:30} ComfyUI believes {row['model_size'] / 1e9:7.3f} GB (loaded "
                  f"{row['loaded_size'] / 1e9:7.3f}), real {row['real_bytes'] / 1e9:7.3f} GB: {off:+.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tiny models (a rehearsal of every step)")
    parser.add_argument("--bf16", action="store_true", help="a bf16 release (half the disk)")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", default="bf16", help="the GoT MLLM Loader's dtype (bf16 fits 23 GB of RAM)")
    parser.add_argument("--cli", action="store_true", help="also render with the command line")
    parser.add_argument("--reuse-release", action="store_true", help="keep a release written by an earlier run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work, models = args.work.resolve(), args.work.resolve() / "models"
    work.mkdir(parents=True, exist_ok=True)
    facts = machine(work)
    print(json.dumps(facts), flush=True)
    download = work / "download"
    steps = []
    if not (args.reuse_release and (download / "GoT-6B" / "pytorch_model.bin.index.json").is_file()):
        steps.append(measured("write the synthetic release", [sys.executable, REPO / "bench" / "full_size_release.py",
                                                               download, *(["--tiny"] if args.tiny else []),
                                                               *(["--bf16"] if args.bf16 else [])],
                              [download]))
    largest = max(f.stat().st_size for f in (download / "GoT-6B").glob("*.bin"))
    shutil.rmtree(models, ignore_errors=True)
    for folder in ("LLM", "diffusion_models", "vae"):
        (models / folder).mkdir(parents=True)
    convert = measured("python -m got_backend.convert", [sys.executable, "-m", "got_backend.convert", "--release",
                                                          download / "GoT-6B", "--qwen",
                                                          download / "Qwen2.5-VL-3B-Instruct", "--models", models],
                       [models])
    convert.notes = {"largest_shard_gb": largest / 1e9, "limit_gb": largest / 1e9 + 2}
    steps.append(convert)
    (models / "LLM" / "GoT-6B-release").symlink_to(download / "GoT-6B")
    (models / "LLM" / "Qwen2.5-VL-3B-Instruct").symlink_to(download / "Qwen2.5-VL-3B-Instruct")
    if os.environ.get("COMFYUI_DIR"):
        steps += server_steps(work, models, args.side, args.steps, args.dtype)
    else:
        print("COMFYUI_DIR is not set: the ComfyUI steps are skipped", flush=True)
    if args.cli:
        chain_file = work / "chain.txt"
        chain_file.write_text(CHAIN)
        steps.append(measured(f"command line: {args.side}x{args.side}, {args.steps} steps (converted files)",
                              [sys.executable, "-m", "got_backend", "generate", "--models", models, "--chain-file",
                               chain_file, "--prompt", PROMPT, "--width", args.side, "--height", args.side,
                               "--steps", args.steps, "--out", work / "cli.png"]))
    print_table(facts, steps)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "steps": [asdict(s) for s in steps]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
