"""`python -m got_backend generate --candidates N --judge FOLDER --parm CHECKS --reflect K` on the tiny GoT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from got_backend.__main__ import main
from tests.test_cli import CHAIN

SMALL = ["--width", "64", "--height", "64", "--steps", "2", "--max-new-tokens", "1", "--device", "cpu"]


def generate(*args: str | Path) -> int:
    return main(["generate", *map(str, args)])


def test_best_of_n_with_parm_writes_every_candidate_and_the_scores(tmp_path: Path, tiny_models_dir: Path) -> None:
    (tmp_path / "chain.txt").write_text(CHAIN)
    out = tmp_path / "best.png"
    assert generate("--prompt", "an apple on a plate", "--chain-file", tmp_path / "chain.txt", "--models",
                    tiny_models_dir, "--out", out, "--candidates", "3", "--parm", "0.5",
                    "--judge", tiny_models_dir / "LLM" / "GoT-6B", *SMALL) == 0
    scores = (tmp_path / "best.scores.txt").read_text().splitlines()
    assert scores[0].startswith("candidates (") and len(scores) == 4
    assert sum(line.startswith("*") for line in scores) == 1
    chosen = int(next(line for line in scores if line.startswith("*")).split(":")[0][1:])
    assert Image.open(out).tobytes() == Image.open(tmp_path / f"best.candidate-{chosen}.png").tobytes()
    assert (tmp_path / "best.chain.txt").read_text() == CHAIN


@pytest.mark.parametrize(("option", "message"), [
    (["--candidates", "0"], "at least 1, got 0"),
    (["--candidates", "2", "--judge", "x", "--threshold", "1.5"], "--threshold must be a number from 0 to 1"),
    (["--candidates", "2"], "need a judge"),
    (["--candidates", "2", "--judge", "x", "--parm", "0.4,1.4"], "check point"),
])
def test_bad_judging_options_fail_before_loading(tmp_path: Path, option: list[str], message: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert generate("--prompt", "a cat", "--models", tmp_path / "no-models-here", "--out", tmp_path / "x.png",
                    *option) == 2
    assert message in capsys.readouterr().err


def test_a_judge_folder_that_is_not_a_qwen25_vl_is_refused(tmp_path: Path, tiny_models_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "chain.txt").write_text(CHAIN)
    assert generate("--prompt", "a cat", "--chain-file", tmp_path / "chain.txt", "--models", tiny_models_dir,
                    "--out", tmp_path / "x.png", "--candidates", "2", "--judge", folder, *SMALL) == 2
    assert "llama" in capsys.readouterr().err
