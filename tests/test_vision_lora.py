"""The vision tower's LoRA pairs: GoT's LoRA target names (q/k/v/o/gate/up/down_proj) also match the vision
tower's MLP projections, so the release carries LoRA pairs at `visual.blocks.N.mlp.{gate,up,down}_proj` as well.
Conversion and direct loading merge them, and an edit's image depends on them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from got_backend.pipeline import GoTPipeline, ReasoningSettings, RenderSettings
from got_backend.reasoning.mllm import GoTMLLM
from got_backend.testing.fixtures import LORA_ALPHA, LORA_RANK, save_as_release, to_transformers_449_name
from got_backend.weights.checkpoint import read_got_checkpoint
from tests.got_release_reference import MLLM_PEFT, raw_state

VISION_LORA = re.compile(r"visual\.blocks\.(\d+)\.mlp\.(gate|up|down)_proj\.lora_B\.default\.weight$")
CHAIN = ("Step 1: the <|object_ref_start|>square<|object_ref_end|><|box_start|>(100,100),(600,700)<|box_end|> "
         "(red) turns blue.<|im_gen_start|>")


@pytest.fixture(scope="module")
def raw(tiny_release) -> dict[str, torch.Tensor]:
    return raw_state(tiny_release.got_release)


def vision_lora_modules(raw: dict[str, torch.Tensor]) -> list[str]:
    """The modules (4.49 names, PEFT prefix dropped) that carry a vision-tower LoRA pair in the release."""
    return sorted(key[len(MLLM_PEFT):-len(".lora_B.default.weight")] for key in raw
                  if key.startswith(MLLM_PEFT) and VISION_LORA.search(key))


def merged(raw: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    base = raw[f"{MLLM_PEFT}{module}.base_layer.weight"]
    a, b = raw[f"{MLLM_PEFT}{module}.lora_A.default.weight"], raw[f"{MLLM_PEFT}{module}.lora_B.default.weight"]
    return base + (LORA_ALPHA / LORA_RANK) * (b @ a)


def test_the_release_wraps_the_vision_mlp_as_peft_does(raw) -> None:
    modules = vision_lora_modules(raw)
    assert modules == sorted(f"visual.blocks.{n}.mlp.{p}_proj" for n in range(2) for p in ("gate", "up", "down"))
    assert all(raw[f"{MLLM_PEFT}{m}.lora_B.default.weight"].abs().max() > 0 for m in modules)  # trained-looking
    # the vision attention (qkv, proj) and the merger are not LoRA targets
    assert not [k for k in raw if "visual." in k and ".lora_" in k and ".mlp." not in k]


def test_conversion_and_direct_loading_merge_the_vision_lora(raw, tiny_release, tiny_mllm_folder: Path) -> None:
    direct = {to_transformers_449_name(k): v for k, v in read_got_checkpoint(tiny_release.got_release).mllm.items()}
    converted = {}
    for file in sorted(tiny_mllm_folder.glob("model*.safetensors")):
        converted.update({to_transformers_449_name(k): v for k, v in load_file(file).items()})
    for module in vision_lora_modules(raw):
        expected = merged(raw, module)
        assert not torch.allclose(expected, raw[f"{MLLM_PEFT}{module}.base_layer.weight"], atol=1e-3)
        torch.testing.assert_close(direct[f"{module}.weight"], expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(converted[f"{module}.weight"], expected, rtol=1e-6, atol=1e-6)


def without_vision_lora(raw: dict[str, torch.Tensor], folder: Path) -> Path:
    """The release written again with its vision-tower LoRA B matrices zero (as if a loader dropped the pairs)."""
    keys = {f"{MLLM_PEFT}{m}.lora_B.default.weight" for m in vision_lora_modules(raw)}
    return save_as_release({k: torch.zeros_like(v) if k in keys else v for k, v in raw.items()}, folder)


def test_an_edit_changes_when_the_vision_lora_is_dropped(raw, tiny_release, tiny_models_dir: Path,
                                                         tmp_path: Path) -> None:
    full_pipeline = GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")
    dropped = GoTMLLM.from_release(without_vision_lora(raw, tmp_path / "GoT-6B"),
                                   tiny_release.qwen_base, "fp32")
    dropped_pipeline = GoTPipeline(dropped, full_pipeline.unet, full_pipeline.vae, device="cpu")
    source = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    render = RenderSettings(width=64, height=64, steps=2)

    def run(pipeline: GoTPipeline) -> tuple[torch.Tensor, np.ndarray]:
        result = pipeline.render_chain("make the square blue", CHAIN, source, render=render,
                                       reasoning=ReasoningSettings(max_new_tokens=1))
        context = pipeline.conditioning(result.turns[0], source, 64, 64)[0].context
        return context, np.asarray(result.renders[0].image, dtype=np.float32)

    context, image = run(full_pipeline)
    assert np.array_equal(image, run(full_pipeline)[1])  # deterministic: any difference below is the LoRA's
    dropped_context, dropped_image = run(dropped_pipeline)
    semantic = ((context - dropped_context).norm() / context.norm()).item()
    pixels = np.abs(image - dropped_image)
    print(f"without the vision LoRA: semantic context {semantic:.1%} apart; image: mean |diff| {pixels.mean():.2f}, "
          f"max {pixels.max():.0f} of 255, {(pixels > 0).mean():.0%} of the values changed")
    assert semantic > 1e-3 and (pixels > 0).mean() > 0.01  # measured: 0.3% and 5% (the tiny models)
