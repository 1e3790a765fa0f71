"""Shared fixtures: the tiny GoT release (built once per test session, in the released file layout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from got_backend.testing.fixtures import TinyRelease, make_tiny_release


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> TinyRelease:
    """`Qwen2.5-VL-3B-Instruct/` and `GoT-6B/` (index json + 5 pickle shards), tiny and random."""
    return make_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_release: TinyRelease, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI-style `models/` folder holding the converted tiny GoT (LLM/, diffusion_models/, vae/)."""
    from got_backend.convert import convert_release

    models = tmp_path_factory.mktemp("models")
    convert_release(tiny_release.got_release, tiny_release.qwen_base, models)
    return models


@pytest.fixture(scope="session")
def tiny_mllm_folder(tiny_models_dir: Path) -> Path:
    """The converted tiny GoT MLLM's folder (`LLM/GoT-6B/` of `tiny_models_dir`)."""
    return tiny_models_dir / "LLM" / "GoT-6B"


@pytest.fixture(scope="session")
def tiny_vlm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL-3B-Instruct-like folder with safetensors weights (a chat model, not GoT)."""
    from got_backend.testing.fixtures import make_tiny_vlm

    return make_tiny_vlm(tmp_path_factory.mktemp("vlm") / "Qwen2.5-VL-3B-Instruct")


def comfyui_dir() -> Path | None:
    """The ComfyUI checkout integration tests run against (COMFYUI_DIR), or None."""
    value = os.environ.get("COMFYUI_DIR")
    return Path(value) if value else None
