"""Issue 20: bench/full_size_path.py rehearsed on the tiny models (--tiny), every step as at full size: the release
writer (bench/full_size_release.py, the released layout), the converter, a real ComfyUI server rendering the
text-to-image template's graph from the converted files and loading the MLLM from the raw release, with what
ComfyUI's model management believes each model weighs against its real bytes (within 5%)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.comfyui.conftest import comfyui_python

REPO = Path(__file__).resolve().parents[2]


def test_the_full_size_path_runs_on_the_tiny_models(comfyui_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_root), "COMFYUI_PYTHON": comfyui_python()}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "full_size_path.py"), str(tmp_path / "work"),
                          "--tiny", "--side", "64", "--json", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["machine"]["cores"] >= 1 and figures["machine"]["ram_gb"] > 0
    steps = {step["name"].split(":")[0].split(" (")[0]: step for step in figures["steps"]}
    release, convert = steps["write the synthetic release"], steps["python -m got_backend.convert"]
    assert release["written_gb"] > 0 and convert["written_gb"] > 0
    assert convert["peak_rss_gb"] <= convert["notes"]["limit_gb"]
    rendered = [s for s in figures["steps"] if s["name"].startswith("ComfyUI: text to image")][0]
    from_release = [s for s in figures["steps"] if "raw release" in s["name"]][0]
    loaded = {row["model"] for row in rendered["notes"]["memory"]}
    assert {"ManagedWeights", "SDXL"} <= loaded, loaded  # the MLLM (+ projectors) and the UNet, at least
    for row in rendered["notes"]["memory"] + from_release["notes"]["memory"]:
        assert abs(row["model_size"] / row["real_bytes"] - 1) <= 0.05, row
    assert list((tmp_path / "work" / "comfy_base_1" / "output").rglob("*.png"))  # the render saved its image
    print(run.stdout[-2500:])
