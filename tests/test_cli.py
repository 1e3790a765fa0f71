"""`python -m got_backend generate` on the tiny GoT: outputs, the edited-chain round trip, edits, errors, --smoke."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from got_backend.__main__ import main
from got_backend.ssgm.chain import parse_chain
from got_backend.ssgm.layout import layout_preview

CHAIN = ("A <|object_ref_start|>red apple<|object_ref_end|><|box_start|>(100,120),(500,600)<|box_end|> (red) on a "
         "<|object_ref_start|>plate<|object_ref_end|><|box_start|>(50,500),(950,990)<|box_end|> (blue).<|im_gen_start|>")
SMALL = ["--width", "64", "--height", "64", "--steps", "3", "--max-new-tokens", "2", "--device", "cpu"]


def generate(*args: str | Path) -> int:
    return main(["generate", *map(str, args)])


def test_chain_file_run_writes_image_chain_and_layout_and_replays(tmp_path: Path, tiny_models_dir: Path) -> None:
    chain_file = tmp_path / "edited.txt"
    chain_file.write_text(CHAIN)
    out = tmp_path / "out" / "apple.png"
    assert generate("--prompt", "an apple", "--chain-file", chain_file, "--models", tiny_models_dir,
                    "--out", out, *SMALL) == 0
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    written = (tmp_path / "out" / "apple.chain.txt").read_text()
    assert written.startswith(CHAIN) and len(written) > len(CHAIN)  # the MLLM went on after the image
    layout = np.asarray(Image.open(tmp_path / "out" / "apple.layout.png"))
    expected = (layout_preview(parse_chain(CHAIN), 64, 64) * 255).round().byte().numpy()
    assert np.array_equal(layout, expected)
    # The written chain, passed back, renders the same image.
    again = tmp_path / "again.png"
    assert generate("--prompt", "an apple", "--chain-file", tmp_path / "out" / "apple.chain.txt",
                    "--models", tiny_models_dir, "--out", again, *SMALL) == 0
    assert Image.open(again).tobytes() == image.tobytes()


def test_edit_from_the_command_line_keeps_the_source_aspect(tmp_path: Path, tiny_models_dir: Path) -> None:
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 112, 3), dtype=np.uint8)).save(source)
    (tmp_path / "chain.txt").write_text(CHAIN)
    out = tmp_path / "edited.png"
    assert generate("--prompt", "make the plate blue", "--image", source, "--chain-file", tmp_path / "chain.txt",
                    "--models", tiny_models_dir, "--out", out, *SMALL) == 0
    assert Image.open(out).size == (112, 64)


def test_unfinished_reasoning_exits_1_and_keeps_the_chain(tmp_path: Path, tiny_models_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "none.png"
    assert generate("--prompt", "a cat", "--models", tiny_models_dir, "--out", out, *SMALL) == 1
    assert not out.exists() and (tmp_path / "none.chain.txt").read_text()
    assert "--chain-file" in capsys.readouterr().err


def test_missing_weights_say_which_files_go_where(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert generate("--prompt", "a cat", "--models", tmp_path, "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "diffusion_models/GoT-6B-unet.safetensors" in err and "LLM/Qwen2.5-VL-3B-Instruct/" in err
    assert generate("--prompt", "a cat", "--out", tmp_path / "x.png") == 2
    assert "--models" in capsys.readouterr().err
    assert generate("--prompt", "a cat", "--release", tmp_path, "--out", tmp_path / "x.png") == 2
    assert "go together" in capsys.readouterr().err


def test_bad_inputs_are_reported_not_raised(tmp_path: Path, tiny_models_dir: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "not-an-image.png").write_text("hello")
    assert generate("--prompt", "x", "--image", tmp_path / "not-an-image.png", "--models", tiny_models_dir,
                    "--out", tmp_path / "o.png", *SMALL) == 2
    assert "cannot read the image" in capsys.readouterr().err
    assert generate("--prompt", "x", "--chain-file", tmp_path / "missing.txt", "--models", tiny_models_dir,
                    "--out", tmp_path / "o.png", *SMALL) == 2
    assert "cannot read the chain file" in capsys.readouterr().err
    assert generate("--prompt", " ", "--models", tiny_models_dir, "--out", tmp_path / "o.png", *SMALL) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert generate("--prompt", "x", "--models", tiny_models_dir, "--out", tmp_path / "o.png", *SMALL,
                    "--steps", "0") == 2
    assert "from 1 to 999" in capsys.readouterr().err
    started = time.monotonic()  # a NaN scale is refused before anything loads, not after the render
    assert generate("--prompt", "x", "--models", tiny_models_dir, "--out", tmp_path / "o.png", *SMALL,
                    "--scales", "7.5", "nan", "1") == 2
    err = capsys.readouterr().err
    assert "a_s is nan" in err and "finite number" in err and "loaded GoT" not in err
    assert time.monotonic() - started < 5 and not (tmp_path / "o.png").exists()


def test_smoke_runs_the_whole_path_on_fresh_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "smoke.png"
    assert generate("--smoke", "--out", out, "--device", "cpu") == 0
    assert Image.open(out).size == (128, 128)
    assert (tmp_path / "smoke.layout.png").is_file() and "<|im_gen_start|>" in (tmp_path / "smoke.chain.txt").read_text()
    printed = capsys.readouterr()
    assert "example chain" in printed.out and "denoising" in printed.err


def test_think_rewrites_first_and_writes_the_thinking(tmp_path: Path, tiny_models_dir: Path, tiny_vlm_folder: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "chain.txt").write_text(CHAIN)
    for name, folder in (("plain", tiny_vlm_folder), ("got", tiny_models_dir / "LLM" / "GoT-6B")):
        out = tmp_path / f"{name}.png"
        assert generate("--prompt", "an apple", "--think", folder, "--chain-file", tmp_path / "chain.txt",
                        "--models", tiny_models_dir, "--out", out, *SMALL) == 0
        assert out.is_file()
        # two tokens cannot hold a revision: the original prompt goes on, and both outputs say so
        assert (tmp_path / f"{name}.thinking.txt").read_text().endswith("Revised Prompt: an apple\n")
        captured = capsys.readouterr()
        assert "revised prompt: an apple" in captured.out and 'no "Revised Prompt:"' in captured.err
    assert generate("--prompt", "an apple", "--think", tmp_path, "--chain-file", tmp_path / "chain.txt",
                    "--models", tiny_models_dir, "--out", tmp_path / "bad.png", *SMALL) == 2
    assert "lacks config.json" in capsys.readouterr().err
