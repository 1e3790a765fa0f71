"""The GPU figures in one command: the CUDA tests, the reasoner bench, the end-to-end bench and a ComfyUI guider
step, in that order, each in its own process with its own time limit, within 8 minutes on an H100/H200.

    python bench/gpu_check.py OUT_DIR            # a CUDA GPU; COMFYUI_DIR (+ COMFYUI_PYTHON) for the guider step
    python bench/gpu_check.py --tiny OUT_DIR     # CPU rehearsal on the tiny models (tests/test_gpu_check.py)
    python bench/gpu_check.py OUT_DIR --parts reasoner,end_to_end   # rerun only some parts
    python bench/gpu_check.py OUT_DIR --parts reasoner,end_to_end --profile   # where the time goes (a missed goal)

OUT_DIR receives gpu_check.json (every part: status, seconds, limit, figures, the end of its log),
gpu_check.md (the same as tables, with the project's goals), and one log per part: six files. A part that runs past its
limit is killed with its whole process group and marked "timeout"; the parts after it still run. A part that
would start with less than half its limit left in the budget is not started ("no time"). Exit status 0 when no
part failed or timed out.

It needs requirements-test.txt's packages (dashscope only for its Qwen vocabulary file, never imported); a part
whose interpreter lacks one fails at once, naming it. The guider step needs a ComfyUI checkout (COMFYUI_DIR) whose
python (COMFYUI_PYTHON) imports ComfyUI; without COMFYUI_DIR it is skipped, with a note.

| part        | what                                                                            | limit (GPU) |
|-------------|---------------------------------------------------------------------------------|-------------|
| cuda_tests  | tests/test_reasoning_cuda.py (CUDA-graph decoding: tokens, capture, memory)      | 75 s        |
| reasoner    | bench/reasoner.py: Qwen2.5-VL-3B size, random weights, bf16, 256 tokens           | 150 s       |
| end_to_end  | bench/end_to_end.py: 1024x1024, 50 DDPM steps, a 250-token chain                  | 195 s       |
| guider_step | bench/guider_step.py: one GoT Guider step vs core CFGGuider at 1024x1024 (ComfyUI) | 60 s        |
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
BUDGET_S = 480  # 8 minutes of wall time on an H100/H200-class GPU: the sum of the parts' limits
TINY_LIMIT_S = 300  # per part in the CPU rehearsal (a loaded 2-core CI machine)
LOG_TAIL_LINES = 25
# What the parts run in this interpreter import (the guider step runs in COMFYUI_PYTHON, which ComfyUI checks)
NEEDED = ("torch", "transformers", "diffusers", "peft", "safetensors", "PIL", "numpy", "pytest", "dashscope")


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    limit_s: int  # on the GPU
    # (tiny, the part's folder, profile) -> the command, or a string saying why the part is skipped
    command: Callable[[bool, Path, bool], list[str] | str]
    # (the part's folder, return code) -> (status, figures) once the process has ended
    read: Callable[[Path, int], tuple[str, dict]]


def pytest_command(tiny: bool, folder: Path, profile: bool) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reasoning_cuda.py",
            f"--junitxml={folder / 'cuda_tests.xml'}"]


def read_junit(folder: Path, returncode: int) -> tuple[str, dict]:
    path = folder / "cuda_tests.xml"
    if not path.is_file():
        return "failed", {"note": "pytest wrote no report"}
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    figures = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               "failed_tests": failed}
    if returncode != 0 or failed:
        return "failed", figures
    if counts["tests"] == counts["skipped"]:
        return "skipped", {**figures, "note": "every test skipped itself (no CUDA GPU)"}
    return "passed", figures


PROFILED = {"reasoner.py", "end_to_end.py"}  # the benches that take --profile


def bench_command(script: str, gpu_args: list[str], tiny_args: list[str],
                  python: Callable[[], str] = lambda: sys.executable) -> Callable[[bool, Path, bool], list[str]]:
    def command(tiny: bool, folder: Path, profile: bool) -> list[str]:
        extra = ["--profile"] if profile and script in PROFILED else []
        return [python(), str(BENCH / script), *(tiny_args if tiny else gpu_args), *extra,
                "--json", str(folder / script.replace(".py", ".json"))]
    return command


def read_json(name: str) -> Callable[[Path, int], tuple[str, dict]]:
    def read(folder: Path, returncode: int) -> tuple[str, dict]:
        path = folder / name
        if returncode != 0 or not path.is_file():
            return "failed", {}
        return "passed", json.loads(path.read_text())
    return read


def guider_command(tiny: bool, folder: Path, profile: bool) -> list[str] | str:
    if not os.environ.get("COMFYUI_DIR"):
        return "COMFYUI_DIR is not set (name a ComfyUI checkout, and COMFYUI_PYTHON its venv's python)"
    command = bench_command("guider_step.py", [], ["--tiny", "--repeats", "1"],
                            python=lambda: os.environ.get("COMFYUI_PYTHON") or sys.executable)
    return command(tiny, folder, profile)


PARTS = (
    Part("cuda_tests", "CUDA tests (tests/test_reasoning_cuda.py)", 75, pytest_command, read_junit),
    Part("reasoner", "reasoner bench (Qwen2.5-VL-3B size, bf16)", 150,
         bench_command("reasoner.py", ["--tokens", "256"], ["--tiny", "--tokens", "8", "--repeats", "1"]),
         read_json("reasoner.json")),
    Part("end_to_end", "end-to-end bench (1024x1024, 50 steps, 250 tokens)", 195,
         bench_command("end_to_end.py", ["--size", "1024", "--steps", "50", "--tokens", "250"],
                       ["--tiny", "--size", "64", "--steps", "1", "--tokens", "40", "--objects", "1"]),
         read_json("end_to_end.json")),
    Part("guider_step", "ComfyUI: one GoT Guider step vs CFGGuider (1024x1024)", 60, guider_command,
         read_json("guider_step.json")),
)
assert sum(part.limit_s for part in PARTS) <= BUDGET_S


def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def run_part(part: Part, tiny: bool, profile: bool, out: Path, scratch: Path, limit: float,
             missing: list[str]) -> dict:
    """Run one part in its own process group, its log in `out` and its own files in `scratch`; kill the whole
    group at `limit` seconds."""
    command = part.command(tiny, scratch, profile)
    entry = {"name": part.name, "title": part.title, "limit_s": round(limit, 1)}
    if isinstance(command, str):
        return {**entry, "status": "skipped", "seconds": 0.0, "note": command, "figures": {}}
    if missing and command[0] == sys.executable:
        return {**entry, "status": "failed", "seconds": 0.0, "figures": {},
                "note": f"{sys.executable} lacks {', '.join(missing)}: pip install -r requirements-test.txt"}
    log_path = out / f"{part.name}.log"
    started, cpu_before = time.monotonic(), child_cpu_seconds()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        try:
            returncode = process.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            stop_group(process)
            returncode, timed_out = process.returncode, True
    seconds = time.monotonic() - started
    tail = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    entry.update(seconds=round(seconds, 2), cpu_s=round(child_cpu_seconds() - cpu_before, 2), returncode=returncode,
                 command=" ".join(command), log=log_path.name, log_tail=tail)
    if timed_out:
        return {**entry, "status": "timeout", "figures": {}, "note": f"stopped after {limit:.0f} s"}
    status, figures = part.read(scratch, returncode)
    note = {"note": figures.pop("note")} if "note" in figures else {}
    return {**entry, "status": status, "figures": figures, **note}


def child_cpu_seconds() -> float:
    """User + system CPU time of the ended child processes so far (the parts' cost apart from machine load)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the part's process group, SIGKILL after 5 seconds."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def machine(tiny: bool) -> dict:
    try:
        import torch
    except ImportError:
        torch = None
    gpu = torch.cuda.get_device_name() if torch is not None and torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": getattr(torch, "__version__", None), "cuda": torch and torch.version.cuda,
            "python": sys.version.split()[0],
            "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "tiny": tiny}


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --- the report ------------------------------------------------------------------------------------------------

def number(value, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def summary(part: dict) -> str:
    """The part's headline figures, in one table cell."""
    f, name = part["figures"], part["name"]
    if part["status"] == "failed" and not f and not part.get("log_tail"):
        return part.get("note", "")
    if part["status"] == "failed" and not f:
        last = next((line for line in reversed(part.get("log_tail", [])) if line.strip()), "")
        return f"see {part.get('log', 'its log')}: {last.strip()[:200]}".replace("|", "\\|")
    if part["status"] in ("skipped", "timeout", "no time", "not selected") or not f:
        return part.get("note", "")
    if name == "cuda_tests":
        return f"{f['passed']} passed, {f['failures'] + f['errors']} failed, {f['skipped']} skipped" + (
            f" ({', '.join(f['failed_tests'])})" if f["failed_tests"] else "")
    if name == "reasoner":
        return (f"{f['decoder']}: {f['ours_tok_s']:.1f} tok/s vs HF generate {f['hf_generate_tok_s']:.1f} tok/s "
                f"({f['speedup']:.2f}x); TTFT {f['ttft_t2i_s']:.3f} s (edit {f['ttft_edit_s']:.3f} s); capture "
                f"{f['capture_s']:.3f} s; tokens agree {f['tokens_agree_hf']}/{f['tokens_compared']} with HF, "
                f"{f['tokens_agree_plain']}/{f['tokens_compared']} with the plain decoder")
    if name == "end_to_end":
        total, peak = f["end_to_end_s"], f["peak_vram_gb"]
        return (f"released {total['released loop']:.2f} s, ours {total['ours']:.2f} s ({f['speedup']:.2f}x), "
                f"offload {total['ours, offload']:.2f} s ({f['speedup_offload']:.2f}x); peak VRAM "
                f"{number(peak['ours'], unit=' GB')}, with offload {number(peak['ours, offload'], unit=' GB')}")
    if name == "guider_step":
        return (f"GoT Guider {f['got_guider_s']:.3f} s ({'+'.join(f['got_branches'])}) vs CFGGuider "
                f"{f['cfg_guider_s']:.3f} s: {f['ratio']:.2f}x")
    return ""


def goals(parts: dict[str, dict], tiny: bool) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, met) for the project's performance goals."""
    reasoner, e2e = parts["reasoner"]["figures"], parts["end_to_end"]["figures"]

    def met(ok: bool | None) -> str:
        return "n/a (CPU rehearsal)" if tiny else "not measured" if ok is None else "yes" if ok else "NO"

    rate = reasoner.get("ours_tok_s")
    speedup = e2e.get("speedup")
    peak = (e2e.get("peak_vram_gb") or {}).get("ours, offload")
    return [
        ("decode rate (bf16, batch 1)", f">= {reasoner.get('goal_tok_s', 250)} tok/s", number(rate, 1, " tok/s"),
         met(None if rate is None else rate >= reasoner["goal_tok_s"])),
        ("end to end vs released loop", f">= {e2e.get('goal_speedup', 2.4)}x", number(speedup, 2, "x"),
         met(None if speedup is None else speedup >= e2e["goal_speedup"])),
        ("peak VRAM with offload", f"<= {e2e.get('goal_offload_peak_gb', 10.0):g} GB", number(peak, 2, " GB"),
         met(None if peak is None else peak <= e2e["goal_offload_peak_gb"])),
    ]


def markdown(report: dict) -> str:
    meta, parts = report["machine"], {part["name"]: part for part in report["parts"]}
    lines = [f"# GPU check: {meta['gpu'] or 'no GPU (CPU)'}{' (--tiny rehearsal)' if meta['tiny'] else ''}", "",
             f"{meta['date']}, commit {meta['commit'] or 'unknown'}{' (uncommitted changes)' if meta['dirty'] else ''}"
             f", torch {meta['torch']} (CUDA {meta['cuda']}); budget {report['budget_s']} s, wall "
             f"{report['wall_s']:.1f} s.", "",
             "| # | part | status | seconds | limit | figures |", "|---|---|---|---|---|---|"]
    for index, part in enumerate(report["parts"], 1):
        lines.append(f"| {index} | {part['title']} | {part['status']} | {part['seconds']:.1f} | "
                     f"{part['limit_s']:.0f} | {summary(part)} |")
    lines += ["", "| goal | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {goal} | {target} | {measured} | {ok} |" for goal, target, measured, ok in goals(parts, meta["tiny"])]
    stages = parts["end_to_end"]["figures"].get("stages_s")
    if stages:
        columns = list(stages)
        names = list(dict.fromkeys(name for column in stages.values() for name in column))
        lines += ["", "End-to-end stages (seconds):", "", "| stage | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(number(stages[c].get(name), 3) for c in columns) + " |" for name in names]
        lines.append("| end to end | " + " | ".join(number(parts["end_to_end"]["figures"]["end_to_end_s"][c], 3)
                                                   for c in columns) + " |")
    for part in report["parts"]:
        if part["figures"].get("profile"):
            lines += ["", f"Profile, {part['title']} (one run of ours, by self time):", "", "```",
                      part["figures"]["profile"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created): gpu_check.json, gpu_check.md, logs")
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal with the tiny models")
    parser.add_argument("--parts", default=",".join(part.name for part in PARTS),
                        help="comma-separated parts to run (default all): " + ", ".join(p.name for p in PARTS))
    parser.add_argument("--profile", action="store_true",
                        help="the reasoner and end-to-end benches also profile one more run of ours after "
                             "their measurements (top ops and kernels); the parts take longer")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"total seconds (default {BUDGET_S} on the GPU; {len(PARTS)} x {TINY_LIMIT_S} with "
                             "--tiny)")
    args = parser.parse_args(argv)
    selected = args.parts.split(",")
    unknown = sorted(set(selected) - {part.name for part in PARTS})
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(p.name for p in PARTS)}")
    budget = args.budget or (len(PARTS) * TINY_LIMIT_S if args.tiny else BUDGET_S)
    args.out.mkdir(parents=True, exist_ok=True)

    # The parts' own files (their JSON, pytest's report) go to a scratch folder: their figures are copied into
    # gpu_check.json, so OUT holds 2 files + 1 log per part (a device run returns at most 8 files).
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started, missing = time.monotonic(), missing_packages()
    report = {"machine": machine(args.tiny), "budget_s": budget, "parts": [], "missing_packages": missing}
    for part in PARTS:
        limit = TINY_LIMIT_S if args.tiny else part.limit_s
        left = budget - (time.monotonic() - started)
        if part.name not in selected:
            entry = {"status": "not selected", "seconds": 0.0, "figures": {}, "note": "not in --parts"}
        elif left < limit / 2:
            entry = {"status": "no time", "seconds": 0.0, "figures": {}, "note": f"{left:.0f} s of the budget left"}
        else:
            print(f"[gpu_check] {part.name}: {part.title} (limit {min(limit, left):.0f} s)", flush=True)
            entry = run_part(part, args.tiny, args.profile, args.out, scratch, min(limit, left), missing)
            print(f"[gpu_check] {part.name}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        report["parts"].append({"name": part.name, "title": part.title, "limit_s": min(limit, max(left, 0)), **entry})
    report["wall_s"] = time.monotonic() - started
    shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(part["status"] not in ("failed", "timeout") for part in report["parts"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
