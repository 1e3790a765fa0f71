"""Runs the frontend's JavaScript unit tests (tests/js, Node's built-in test runner) so that the one README test
command covers them; skipped loudly without Node.js 18 or newer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_javascript_unit_tests_pass():
    node = shutil.which("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout if node else ""
    if not version.startswith("v") or int(version[1:].split(".")[0]) < 18:
        reason = (f"JavaScript unit tests (tests/js) skipped: Node.js >= 18 is needed for `node --test`, found "
                  f"{version.strip() or 'no node on PATH'}; install it (apt-get install nodejs)")
        warnings.warn(reason)
        print(f"\n*** SKIPPED: {reason}", file=sys.stderr)
        pytest.skip(reason)
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests" / "js").glob("*.test.mjs"))
    assert files, "no tests/js/*.test.mjs"
    result = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
