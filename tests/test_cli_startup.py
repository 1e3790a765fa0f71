"""The command line says what it is doing before the seconds of silence the library imports take: its first line
is the plain-words loading message, printed before PyTorch's import has finished (python -X importtime reports
each import when it completes, on the same stream)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from got_backend.__main__ import LOADING

REPO = Path(__file__).resolve().parents[1]
IMPORT_TIME = "import time:"


def test_the_smoke_run_says_it_is_loading_before_torch_is_imported(tmp_path: Path) -> None:
    command = [sys.executable, "-u", "-X", "importtime", "-m", "got_backend", "generate", "--smoke",
               "--out", str(tmp_path / "smoke.png"), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lines: list[str] = []
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as child:
        try:
            for line in child.stdout:  # stops at torch's import: the rest is the smoke run tests/test_cli.py checks
                lines.append(line.rstrip("\n"))
                if line.startswith(IMPORT_TIME) and line.rstrip().endswith("| torch"):
                    break
        finally:
            child.kill()
    torch_done = [i for i, line in enumerate(lines) if line.startswith(IMPORT_TIME) and line.endswith("| torch")]
    assert torch_done, f"python -X importtime never reported torch's import:\n" + "\n".join(lines[-20:])
    said = [line for line in lines[:torch_done[0]] if not line.startswith(IMPORT_TIME)]
    assert said == [LOADING]  # the first line, and nothing else (no warning) before torch is loaded
