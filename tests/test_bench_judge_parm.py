"""bench/judge_parm.py runs as shipped (a short rehearsal: 5 steps): it builds the tiny models, counts the UNet
calls of plain best-of-N and of PARM with two of four candidates stopped at 40%, and prints their ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_judge_parm_bench_counts_the_saved_unet_calls(tmp_path: Path) -> None:
    out = tmp_path / "judge_parm.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "judge_parm.py"), "--steps", "5", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    plain, parm = json.loads(out.read_text())["results"]
    assert plain["unet_calls"] == 4 * 5 and plain["stopped"] == []
    assert parm["unet_calls"] == 2 * 5 + 2 * 2 and parm["stopped"] == [1, 3]  # stopped after step 2 of 5
    assert plain["best"] == parm["best"] == 2 and parm["judge_questions"] == 10
    assert "PARM / plain best-of-N: UNet calls 0.70, wall time " in run.stdout
