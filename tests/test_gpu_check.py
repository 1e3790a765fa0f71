"""The GPU check's CPU rehearsal: `bench/gpu_check.py --tiny` runs every part, in order, each in its own process,
and writes one JSON and one Markdown table holding every part with its status and figures (the CI rehearsal of
the command that measures the GPU figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Four processes, each importing torch, transformers and diffusers: about 2.5 minutes of CPU time in all.
pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[1]
PARTS = ("cuda_tests", "reasoner", "end_to_end", "guider_step")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    return out, done


def test_every_part_runs_in_order_with_a_status(rehearsal) -> None:
    out, done = rehearsal
    report = json.loads((out / "gpu_check.json").read_text())
    parts = {part["name"]: part for part in report["parts"]}
    assert [part["name"] for part in report["parts"]] == list(PARTS)
    cuda = "passed" if report["machine"]["gpu"] else "skipped"
    comfy = "passed" if os.environ.get("COMFYUI_DIR") else "skipped"
    expected = {"cuda_tests": cuda, "reasoner": "passed", "end_to_end": "passed", "guider_step": comfy}
    got = {name: part["status"] for name, part in parts.items()}
    assert got == expected, "\n".join(f"{name}: {part['status']}\n" + "\n".join(part.get("log_tail", []))
                                      for name, part in parts.items()) + done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in PARTS:
        if parts[name]["status"] != "skipped" or name == "cuda_tests":
            assert (out / f"{name}.log").is_file() and parts[name]["seconds"] > 0
    assert len(list(out.iterdir())) <= 8  # what a device run returns from its output folder


def test_the_figures_are_the_benches_own(rehearsal) -> None:
    out, _ = rehearsal
    parts = {part["name"]: part for part in json.loads((out / "gpu_check.json").read_text())["parts"]}
    reasoner = parts["reasoner"]["figures"]
    assert reasoner["ours_tok_s"] > 0 and reasoner["hf_generate_tok_s"] > 0
    # greedy decoding: the fast decoder writes the plain decoder's and transformers' tokens
    assert reasoner["tokens_agree_plain"] == reasoner["tokens_agree_hf"] == reasoner["tokens_compared"] == 8
    e2e = parts["end_to_end"]["figures"]
    assert e2e["same_chain"] is True
    assert set(e2e["end_to_end_s"]) == {"released loop", "ours", "ours, offload"}
    assert {"reasoning", "semantic tokens", "VAE encodes", "denoise", "decode"} <= set(e2e["stages_s"]["ours"])
    if parts["guider_step"]["status"] == "passed":  # at the t2i defaults U has weight 0: 3 branches, one call
        assert parts["guider_step"]["figures"]["unet_batches"] == {"GoT Guider": [3], "CFGGuider": [2]}


def test_the_markdown_has_a_row_per_part_and_the_goals(rehearsal) -> None:
    out, _ = rehearsal
    report = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.md").read_text()
    for index, part in enumerate(report["parts"], 1):
        assert f"| {index} | {part['title']} | {part['status']} |" in table
    for goal in ("decode rate", "end to end vs released loop", "peak VRAM with offload"):
        assert goal in table
    assert "n/a (CPU rehearsal)" in table and "End-to-end stages" in table
