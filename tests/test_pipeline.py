"""The reference pipeline on the tiny GoT (CPU, fp32): the DDPM loop against a transcription of the released
loop, branch skipping, determinism, edits, multi-turn, interactive chains, and the models folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors.torch import load_file, save_file

import got_backend.weights.checkpoint
import got_backend.weights.mllm_files
from got_backend.weights.checkpoint import read_got_checkpoint
from got_backend.ssgm.branches import Conditioning
from got_backend.ssgm.denoise import DenoiseError, ddpm_timesteps, denoise, sdxl_ddpm_scheduler
from got_backend.ssgm.sizes import SizeError
from got_backend.ssgm.guidance import EDIT_SCALES, T2I_SCALES, GuidanceScales, needed_branches
from got_backend.ssgm.sizes import source_aspect_size
from got_backend.ssgm.layout import layout_preview
from got_backend.weights.models_dir import GoTFiles, ModelFilesError, load_vae, locate
from got_backend.pipeline import (GoTPipeline, PipelineError, Progress, ReasoningSettings, RenderSettings,
                                  split_chain_turns)
from got_backend.reasoning.prompts import condition_image
from tests.steering import steer

REF, REF_END, BOX, BOX_END = "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"
CHAIN = (f"A {REF}red apple{REF_END}{BOX}(100,120),(500,600){BOX_END} (red) on a "
         f"{REF}plate{REF_END}{BOX}(50,500),(950,990){BOX_END} (blue).<|im_gen_start|>")
MOVED = (f"A {REF}red apple{REF_END}{BOX}(520,80),(940,470){BOX_END} (green) on a "
         f"{REF}plate{REF_END}{BOX}(50,500),(950,990){BOX_END} (blue).<|im_gen_start|>")
TURN_2 = f"<|vision_end|> Step 2: make the {REF}apple{REF_END}{BOX}(600,100),(900,400){BOX_END} (yellow).<|im_gen_start|>"
MULTI_TURN = CHAIN + "<|im_gen_end|> Let me look at it.<|vision_start|>" + TURN_2 + "<|im_gen_end|><|endoftext|>"
PROMPT = "a red apple on a blue plate"
SMALL = RenderSettings(width=64, height=64, steps=3)


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path) -> GoTPipeline:
    return GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    """A 96x64 (wider than tall) source image."""
    pixels = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def condition(pipeline: GoTPipeline, chain: str = CHAIN, reference: Image.Image | None = None,
              size: int = 64) -> Conditioning:
    reasoning = pipeline.mllm.user_chain(PROMPT, chain)
    return pipeline.conditioning(reasoning, reference, size, size)[0]


def released_loop(unet, cond: Conditioning, scales: GuidanceScales, size: int, steps: int, seed: int) -> torch.Tensor:
    """The released GoT loop transcribed from docs/ALGORITHM.md §9: SDXL's DDPM config, one generator for the start noise
    and every step, the four branches C, T, I, U in one batch-4 UNet call, the guidance formula term by term."""
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, prediction_type="epsilon", timestep_spacing="leading",
                              steps_offset=1, clip_sample=False)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    latents = randn_tensor((1, 4, size // 8, size // 8), generator=generator, dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma
    zeros = torch.zeros_like(cond.reference)
    reference = torch.cat([cond.reference, cond.reference, cond.reference, zeros])
    spatial = torch.cat([cond.spatial, zeros, zeros, zeros])
    context = torch.cat([cond.context, cond.context, cond.null_context, cond.null_context])
    added = {"text_embeds": cond.pooled, "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)}
    a_t, a_s, a_r = scales
    with torch.no_grad():
        for t in scheduler.timesteps:
            noisy = scheduler.scale_model_input(torch.cat([latents] * 4), t)
            eps = unet(torch.cat([noisy, reference, spatial], dim=1), t, encoder_hidden_states=context,
                       added_cond_kwargs=added, return_dict=False)[0]
            eps_c, eps_t, eps_i, eps_u = eps.chunk(4)
            eps = eps_u + a_t * (eps_t - eps_i) + a_s * (eps_c - eps_t) + a_r * (eps_i - eps_u)
            latents = scheduler.step(eps, t, latents, generator=generator, return_dict=False)[0]
    return latents


def run_denoise(pipeline: GoTPipeline, cond: Conditioning, scales: GuidanceScales, steps: int, seed: int = 42,
                skip: bool = True) -> torch.Tensor:
    return denoise(pipeline.unet, cond, scales, width=64, height=64, steps=steps,
                   generator=torch.Generator().manual_seed(seed), latent_dtype=torch.float32, skip_zero_weight=skip)


def test_scheduler_is_sdxl_ddpm_with_leading_spacing() -> None:
    assert ddpm_timesteps(50) == list(range(981, 0, -20))
    assert ddpm_timesteps(4) == [751, 501, 251, 1]
    scheduler = sdxl_ddpm_scheduler()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    assert torch.allclose(scheduler.betas, betas) and scheduler.init_noise_sigma == 1.0
    assert scheduler.config.prediction_type == "epsilon" and not scheduler.config.clip_sample
    assert max(ddpm_timesteps(999)) == 999  # the most steps that stay inside the 1000-entry schedule
    for bad in (0, 1000, 2.5):
        with pytest.raises(DenoiseError, match="from 1 to 999"):
            ddpm_timesteps(bad)


def test_four_branch_loop_is_the_released_loop(pipeline: GoTPipeline, source: Image.Image) -> None:
    cond = condition(pipeline, reference=source)
    ours = run_denoise(pipeline, cond, EDIT_SCALES, steps=4, seed=7, skip=False)
    assert torch.equal(ours, released_loop(pipeline.unet, cond, EDIT_SCALES, 64, steps=4, seed=7))


def test_skipping_the_zero_weight_branch_keeps_the_latents_at_50_steps(pipeline: GoTPipeline) -> None:
    """Text-to-image defaults give U the weight 1 - a_r = 0: three UNet branches instead of four, 50 DDPM
    steps (the spec's default) and the same latents up to float rounding."""
    assert needed_branches(*T2I_SCALES) == ("C", "T", "I")
    cond = condition(pipeline)
    skipped = run_denoise(pipeline, cond, T2I_SCALES, steps=50)
    reference = released_loop(pipeline.unet, cond, T2I_SCALES, 64, steps=50, seed=42)
    assert skipped.abs().max() > 0.1
    assert torch.allclose(skipped, reference, atol=1e-4, rtol=1e-4), (skipped - reference).abs().max()


def test_conditioning_shapes_are_checked(pipeline: GoTPipeline) -> None:
    cond = condition(pipeline)
    with pytest.raises(SizeError, match="needs"):
        denoise(pipeline.unet, cond, T2I_SCALES, width=128, height=64, steps=2,
                generator=torch.Generator(), latent_dtype=torch.float32)


def test_same_seed_same_image_other_seed_other_image(pipeline: GoTPipeline) -> None:
    first = pipeline.render_chain(PROMPT, CHAIN, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1))
    again = pipeline.render_chain(PROMPT, CHAIN, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1))
    other = pipeline.render_chain(PROMPT, CHAIN, render=RenderSettings(64, 64, 3, seed=7),
                                  reasoning=ReasoningSettings(max_new_tokens=1))
    assert torch.equal(first.renders[0].latents, again.renders[0].latents)
    assert first.image.tobytes() == again.image.tobytes()
    assert not torch.allclose(first.renders[0].latents, other.renders[0].latents)
    assert first.image.size == (64, 64) and first.turns[0].stop == "boi" and len(first.renders) == 1


def test_generate_reasons_renders_at_im_gen_start_and_goes_on(pipeline: GoTPipeline) -> None:
    tokens = pipeline.mllm.tokens
    boi_at_6 = ReasoningSettings(max_new_tokens=12, logits_processor=tuple(steer(6, tokens.boi)))
    result = pipeline.generate(PROMPT, render=SMALL, reasoning=boi_at_6)
    first, after = result.turns[0], result.turns[1]
    assert first.stop == "boi" and first.new_tokens == 6 and len(result.renders) == 1
    # After the image the 64 query tokens follow and reasoning goes on (here up to the token limit).
    assert after.sequence.ids[after.turn_start - 64:after.turn_start] == tokens.image_queries
    assert after.stop == "max_tokens" and len(result.turns) == 2
    # The image is the one the chain text renders to: the interactive path on the same text agrees.
    # (The same tokens, run in one full forward instead of through the KV cache: equal up to float rounding.)
    replay = pipeline.render_chain(PROMPT, first.text, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1))
    assert replay.turns[0].token_ids == first.token_ids and replay.turns[0].edited
    assert torch.allclose(replay.renders[0].latents, result.renders[0].latents, atol=1e-4, rtol=1e-4)


def test_unfinished_reasoning_renders_nothing_and_says_so(pipeline: GoTPipeline) -> None:
    result = pipeline.generate(PROMPT, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=3))
    assert [turn.stop for turn in result.turns] == ["max_tokens"] and result.renders == []
    with pytest.raises(PipelineError, match="rendered no image"):
        result.image


def test_edit_uses_the_source_and_returns_its_aspect(pipeline: GoTPipeline, source: Image.Image) -> None:
    result = pipeline.render_chain("put the apple on the plate", CHAIN, source, render=SMALL,
                                   reasoning=ReasoningSettings(max_new_tokens=1))
    assert result.turns[0].task == "edit" and len(result.turns[0].sequence.images) == 1
    assert result.image.size == (96, 64) and result.renders[0].image.size == (64, 64)
    # The edit defaults need all four branches; with them the result is the released loop's.
    cond = pipeline.conditioning(result.turns[0], source, 64, 64)[0]
    assert needed_branches(*EDIT_SCALES) == ("C", "T", "I", "U")
    expected = released_loop(pipeline.unet, cond, EDIT_SCALES, 64, steps=3, seed=42)
    assert torch.allclose(result.renders[0].latents, expected, atol=1e-5)
    # The source matters: another source gives another reference latent and another image.
    flipped = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert not torch.allclose(cond.reference, pipeline.conditioning(result.turns[0], flipped, 64, 64)[0].reference)


def test_multi_turn_shows_the_last_image_and_renders_each_turns_boxes(pipeline: GoTPipeline) -> None:
    result = pipeline.render_chain(PROMPT, MULTI_TURN, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1))
    assert [turn.stop for turn in result.turns] == ["boi", "vision_start", "boi", "endoftext"]
    assert result.text == MULTI_TURN and len(result.renders) == 2 and len(result.images) == 2
    first, second = result.renders
    # §10: the second image's boxes come from its own turn only.
    assert [(o.phrase, o.box, o.color) for o in second.chain.objects] == [("apple", (600, 100, 900, 400), "yellow")]
    # The MLLM was shown the first image (448x448, 256 pads) before writing the second turn.
    seen = second.reasoning.sequence.images
    assert len(seen) == 1 and seen[0].image.tobytes() == condition_image(first.image).tobytes()
    assert second.reasoning.sequence.ids.count(pipeline.mllm.tokens.image_pad) == 256
    # The first image is the second one's reference: rendering that turn from it gives the same latents,
    # from a black reference other latents.
    again = pipeline.render_turn(second.reasoning, first.image, SMALL)
    black = pipeline.render_turn(second.reasoning, None, SMALL)
    assert torch.allclose(again.latents, second.latents, atol=1e-6)
    assert not torch.allclose(black.latents, second.latents, atol=1e-3)


def test_edited_chain_changes_layout_semantics_and_image(pipeline: GoTPipeline) -> None:
    settings = ReasoningSettings(max_new_tokens=1)
    original = pipeline.render_chain(PROMPT, CHAIN, render=SMALL, reasoning=settings)
    edited = pipeline.render_chain(PROMPT, MOVED, render=SMALL, reasoning=settings)
    assert not torch.equal(layout_preview(original.renders[0].chain, 64, 64),
                           layout_preview(edited.renders[0].chain, 64, 64))
    before, after = condition(pipeline, CHAIN), condition(pipeline, MOVED)
    assert not torch.allclose(before.spatial, after.spatial)  # the boxes
    assert not torch.allclose(before.context, after.context)  # the semantic tokens, recomputed from the text
    assert torch.equal(before.reference, after.reference)
    assert not torch.allclose(original.renders[0].latents, edited.renders[0].latents, atol=1e-3)
    assert original.image.tobytes() != edited.image.tobytes()


def test_stage_offload_renders_the_same_image(pipeline: GoTPipeline) -> None:
    """With offload the MLLM and the UNet/VAE take turns on the device (here the CPU: the code path, not
    the memory saving, which bench/end_to_end.py measures on a GPU)."""
    plain = pipeline.render_chain(PROMPT, CHAIN, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1))
    offloading = GoTPipeline(pipeline.mllm, pipeline.unet, pipeline.vae, device="cpu", offload=True)
    stages: list[str] = []
    result = offloading.render_chain(PROMPT, CHAIN, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1),
                                     progress=Progress(on_stage=stages.append))
    assert stages == ["switch", "reasoning", "semantic", "switch", "latents", "switch", "denoise", "switch", "decode",
                      "switch", "reasoning"]  # the MLLM goes on writing after the image
    assert torch.equal(result.renders[0].latents, plain.renders[0].latents)
    with pytest.raises(PipelineError, match="needs the device"):
        GoTPipeline(pipeline.mllm, pipeline.unet, pipeline.vae, offload=True)


def test_chain_errors_are_clear(pipeline: GoTPipeline) -> None:
    with pytest.raises(PipelineError, match="before any image was rendered"):
        pipeline.render_chain(PROMPT, "Let me look.<|vision_start|>", render=SMALL)
    with pytest.raises(PipelineError, match="empty"):
        pipeline.render_chain(PROMPT, "", render=SMALL)
    with pytest.raises(ValueError, match="multiple of 8"):
        RenderSettings(width=60, height=64, steps=2)
    with pytest.raises(DenoiseError, match="from 1 to 999"):
        RenderSettings(steps=0)


def test_max_images_bounds_a_run(tiny_models_dir: Path, pipeline: GoTPipeline) -> None:
    bounded = GoTPipeline(pipeline.mllm, pipeline.unet, pipeline.vae, max_images=1)
    result = bounded.render_chain(PROMPT, CHAIN + "<|im_gen_end|> again: " + CHAIN, render=SMALL)
    assert len(result.renders) == 1 and [t.stop for t in result.turns] == ["boi", "boi"]


@pytest.mark.parametrize("text", ["", "no stop", CHAIN, MULTI_TURN, "<|vision_start|><|vision_start|>x",
                                  "a<|im_gen_start|>"])
def test_split_chain_turns_joins_back(text: str) -> None:
    pieces = split_chain_turns(text)
    assert "".join(pieces) == text and all(pieces)
    assert all(p.endswith(("<|im_gen_start|>", "<|vision_start|>")) for p in pieces[:-1])


def test_output_keeps_the_source_aspect_with_the_render_size_as_short_side() -> None:
    assert source_aspect_size((1024, 1024), 1024) == (1024, 1024)
    assert source_aspect_size((600, 800), 1024) == (1024, 1365)
    assert source_aspect_size((800, 600), 1024) == (1365, 1024)
    assert source_aspect_size((96, 64), 64) == (96, 64)
    # the reference truncates: 1024 * 1000 / 600 = 1706.67 gives 1706, not round()'s 1707
    assert source_aspect_size((600, 1000), 1024) == (1024, 1706)
    assert source_aspect_size((1000, 600), 1024) == (1706, 1024)


def test_an_edit_at_a_non_square_render_size_keeps_the_source_aspect(pipeline: GoTPipeline,
                                                                   source: Image.Image) -> None:
    """The render size's short side is the output's short side (the reference renders square)."""
    edit = pipeline.render_chain("put the apple on the plate", CHAIN, source, render=RenderSettings(64, 96, 1),
                                 reasoning=ReasoningSettings(max_new_tokens=1))
    assert edit.renders[0].image.size == (64, 96) and edit.image.size == (96, 64)  # the 96x64 source's aspect


def test_models_folder_errors_say_which_files_go_where(tmp_path: Path, tiny_models_dir: Path) -> None:
    with pytest.raises(ModelFilesError, match="does not exist"):
        locate(tmp_path / "nope")
    with pytest.raises(ModelFilesError, match=r"(?s)LLM/GoT-6B/.*diffusion_models/GoT-6B-unet\.safetensors"):
        locate(tmp_path)
    partial = tmp_path / "partial"
    (partial / "LLM").mkdir(parents=True)
    (partial / "LLM" / "GoT-6B").symlink_to(tiny_models_dir / "LLM" / "GoT-6B")
    with pytest.raises(ModelFilesError, match="not its UNet"):
        locate(partial)
    (partial / "diffusion_models").mkdir()
    (partial / "diffusion_models" / "GoT-6B-unet.safetensors").symlink_to(
        tiny_models_dir / "diffusion_models" / "GoT-6B-unet.safetensors")
    with pytest.raises(ModelFilesError, match="sdxl_vae.safetensors"):
        locate(partial)
    files = locate(tiny_models_dir)
    assert not files.released and files.vae.name == "GoT-6B-vae.safetensors"


def test_released_files_load_and_match_the_converted_mllm(tmp_path: Path, tiny_release, pipeline: GoTPipeline,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []

    def counted_read(*args, **kwargs):  # the real reader, counted: the release is ~28 GB, read it once
        reads.append(args[0])
        return read_got_checkpoint(*args, **kwargs)

    monkeypatch.setattr(got_backend.weights.checkpoint, "read_got_checkpoint", counted_read)
    monkeypatch.setattr(got_backend.weights.mllm_files, "read_got_checkpoint", counted_read)
    models = tmp_path / "models"
    (models / "LLM").mkdir(parents=True)
    (models / "LLM" / "GoT-6B").symlink_to(tiny_release.got_release)
    (models / "LLM" / "Qwen2.5-VL-3B-Instruct").symlink_to(tiny_release.qwen_base)
    files = locate(models)
    assert files == GoTFiles(models / "LLM" / "GoT-6B", models / "LLM" / "Qwen2.5-VL-3B-Instruct", None, None)
    released = GoTPipeline.from_files(files, device="cpu")
    assert reads == [files.mllm]
    ours = released.conditioning(released.mllm.user_chain(PROMPT, CHAIN), None, 64, 64)[0]
    converted = condition(pipeline)
    assert torch.allclose(ours.context, converted.context, atol=1e-5)
    assert torch.allclose(ours.spatial, converted.spatial, atol=1e-5)
    for name, value in released.unet.state_dict().items():  # the converter stores the UNet in fp16
        assert torch.equal(value.half().float(), pipeline.unet.state_dict()[name]), name


def original_sdxl_vae_name(name: str) -> str:
    """A diffusers AutoencoderKL key in the original (ldm) naming SDXL's sdxl_vae.safetensors uses."""
    for pattern, replacement in [
        (r"^(encoder|decoder)\.conv_norm_out", r"\1.norm_out"),
        (r"^encoder\.down_blocks\.(\d)\.resnets\.(\d)", r"encoder.down.\1.block.\2"),
        (r"^encoder\.down_blocks\.(\d)\.downsamplers\.0", r"encoder.down.\1.downsample"),
        (r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)", lambda m: f"decoder.up.{3 - int(m[1])}.block.{m[2]}"),
        (r"^decoder\.up_blocks\.(\d)\.upsamplers\.0", lambda m: f"decoder.up.{3 - int(m[1])}.upsample"),
        (r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}"),
        (r"mid_block\.attentions\.0\.group_norm", "mid.attn_1.norm"),
        (r"mid_block\.attentions\.0\.to_(q|k|v)", r"mid.attn_1.\1"),
        (r"mid_block\.attentions\.0\.to_out\.0", "mid.attn_1.proj_out"),
        (r"conv_shortcut", "nin_shortcut"),
    ]:
        name = re.sub(pattern, replacement, name)
    return name


def test_sdxl_vae_in_its_original_names_loads_as_the_converted_one(tmp_path: Path, tiny_models_dir: Path) -> None:
    """models/vae/sdxl_vae.safetensors as Stability ships it (ldm names, 1x1-conv attention weights)."""
    converted = tiny_models_dir / "vae" / "GoT-6B-vae.safetensors"
    original = {}
    for name, value in load_file(str(converted)).items():
        renamed = original_sdxl_vae_name(name)
        original[renamed] = value[..., None, None] if ".attn_1." in renamed and value.dim() == 2 else value
    assert "encoder.down.0.block.0.conv1.weight" in original and "decoder.up.3.block.0.conv1.weight" in original
    save_file(original, str(tmp_path / "sdxl_vae.safetensors"))
    ours = load_vae(tmp_path / "sdxl_vae.safetensors", torch.float32, "cpu")
    reference = load_vae(converted, torch.float32, "cpu")
    expected = reference.state_dict()
    assert ours.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[name]) for name, value in ours.state_dict().items())
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "sdxl_vae.safetensors").symlink_to(tmp_path / "sdxl_vae.safetensors")
    for folder in ("LLM", "diffusion_models"):
        (models / folder).symlink_to(tiny_models_dir / folder)
    assert locate(models).vae.name == "sdxl_vae.safetensors"
