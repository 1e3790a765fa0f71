"""Runs the in-process ComfyUI tests under COMFYUI_PYTHON when this interpreter lacks ComfyUI's dependencies
(as in CI, where the suite runs in the pack's own venv): their results then count here, not as skips."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def test_inprocess_tests_pass_under_comfyui_python(inprocess_rerun_python: str):
    result = subprocess.run(
        [inprocess_rerun_python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "comfyui_inprocess",
         str(HERE)], cwd=HERE.parents[1], capture_output=True, text=True, timeout=1500)
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1]
    print(output[-3000:])
    assert result.returncode == 0, output[-6000:]
    assert "passed" in summary and "skipped" not in summary and "deselected" in summary, summary
