"""The checks `comfy node validate` (comfy-cli, the Comfy Registry's publish check) runs on a pack: ruff's S102
(exec), S307 (eval) and E702 (several statements on one line), over the pack's own code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_registry_validation_rules_pass() -> None:
    pytest.importorskip("ruff", reason="ruff (requirements-test.txt) runs comfy node validate's checks")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                           "--select", "S102,S307,E702", "__init__.py", "got_backend", "nodes"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
