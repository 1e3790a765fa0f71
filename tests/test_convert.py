"""Converting the release into a ComfyUI models folder: every part loads with its library and equals the reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from got_backend.convert import ConversionError, convert_release, main
from got_backend.weights.diffusers_configs import infer_unet_config, unet_shapes
from got_backend.weights.mllm_files import dtype_argument
from got_backend.testing.fixtures import POOLED_DIM, to_transformers_449_name, unet_config, vae_config
from got_backend.weights.safetensors_writer import write_safetensors, write_sharded_safetensors
from got_backend.reasoning.tokens import EXPECTED_IDS, GoTTokenizerError, resolve_got_tokens
from tests.got_release_reference import MLLM_PEFT, expected_mllm, expected_part, raw_state, release_variant

SDXL_UNET = dict(sample_size=128, in_channels=12, out_channels=4,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 block_out_channels=[320, 640, 1280], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
                 attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)  # SDXL-base's UNet with GoT's 12 input channels


@pytest.fixture(scope="module")
def raw(tiny_release):
    return raw_state(tiny_release.got_release)


def mllm_folder(models: Path) -> Path:
    return models / "LLM" / "GoT-6B"


def assert_model_equals_merge(model: torch.nn.Module, expected: dict[str, torch.Tensor], tied: bool) -> None:
    state = model.state_dict()
    assert {to_transformers_449_name(k) for k in state} == expected.keys()
    for key, value in state.items():
        name = to_transformers_449_name(key)
        source = expected["model.embed_tokens.weight"] if tied and name == "lm_head.weight" else expected[name]
        assert value.dtype == source.dtype and torch.equal(value, source), key


def test_converted_mllm_loads_with_from_pretrained_and_equals_the_merge(tiny_models_dir, raw):
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = mllm_folder(tiny_models_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, **dtype_argument(torch.float32))
    assert model.config.tie_word_embeddings is False  # GoT's modules_to_save copies untie lm_head
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert_model_equals_merge(model, expected_mllm(raw), tied=False)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False


def test_projectors_are_stored_under_their_linear_names(tiny_models_dir, raw):
    stored = load_file(mllm_folder(tiny_models_dir) / "got_projectors.safetensors")
    expected = {f"{part}.{k}": v for part in ("output_projector", "output_projector_add")
                for k, v in expected_part(raw, f"{part}.projector.").items()}
    assert stored.keys() == expected.keys() == {"output_projector.weight", "output_projector.bias",
                                                "output_projector_add.weight", "output_projector_add.bias"}
    for key, value in expected.items():
        assert torch.equal(stored[key], value), key


def stored_config(path: Path) -> dict:
    with safe_open(path, framework="pt") as handle:
        return json.loads(handle.metadata()["config"])


def test_unet_is_fp16_with_a_config_that_rebuilds_it(tiny_models_dir, raw):
    from diffusers import UNet2DConditionModel

    path = tiny_models_dir / "diffusion_models" / "GoT-6B-unet.safetensors"
    config = stored_config(path)
    unet = UNet2DConditionModel.from_config(config)
    assert {k: unet.config[k] for k in unet_config()} == unet_config()  # the config the tiny UNet was built from
    stored = load_file(path)
    unet.load_state_dict(stored, strict=True)
    expected = expected_part(raw, "unet.")
    assert stored.keys() == expected.keys()
    for key, value in expected.items():
        assert stored[key].dtype == torch.float16 and torch.equal(stored[key], value.half()), key


def test_vae_keeps_its_dtype_and_rebuilds(tiny_models_dir, raw):
    from diffusers import AutoencoderKL

    path = tiny_models_dir / "vae" / "GoT-6B-vae.safetensors"
    config = stored_config(path)
    assert {k: config[k] for k in vae_config()} == vae_config()
    vae = AutoencoderKL.from_config(config)
    stored = load_file(path)
    vae.load_state_dict(stored, strict=True)
    expected = expected_part(raw, "vae.")
    assert stored.keys() == expected.keys()
    for key, value in expected.items():
        assert stored[key].dtype == value.dtype == torch.float16 and torch.equal(stored[key], value), key


def test_unet_config_of_the_real_sdxl_size_is_inferred_from_shapes():
    inferred = infer_unet_config(unet_shapes(SDXL_UNET), pooled_dim=1280)
    assert {k: inferred[k] for k in SDXL_UNET} == SDXL_UNET
    assert unet_shapes(inferred) == unet_shapes(SDXL_UNET)
    tiny = infer_unet_config(unet_shapes(unet_config()), pooled_dim=POOLED_DIM)
    assert {k: tiny[k] for k in unet_config()} == unet_config()


def test_tokenizer_resolves_got_tokens_at_the_released_ids(tiny_models_dir, tiny_release):
    from transformers import AutoProcessor

    folder = mllm_folder(tiny_models_dir)
    processor = AutoProcessor.from_pretrained(folder)
    ids = resolve_got_tokens(processor.tokenizer)
    assert (ids.boi, ids.eoi, ids.image_queries[0], ids.image_queries[-1]) == (151665, 151666, 151667, 151730)
    assert {name: processor.tokenizer.convert_tokens_to_ids(name) for name in EXPECTED_IDS} == EXPECTED_IDS
    base = AutoProcessor.from_pretrained(tiny_release.qwen_base)
    with pytest.raises(GoTTokenizerError):  # the base tokenizer lacks them: the conversion added them
        resolve_got_tokens(base.tokenizer)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == \
        base.apply_chat_template(messages, add_generation_prompt=True)
    for name in ("preprocessor_config.json", "chat_template.json", "generation_config.json"):
        assert (folder / name).read_bytes() == (tiny_release.qwen_base / name).read_bytes()


def test_converting_again_refuses_to_overwrite(tiny_models_dir, tiny_release):
    with pytest.raises(ConversionError, match="already there.*--overwrite"):
        convert_release(tiny_release.got_release, tiny_release.qwen_base, tiny_models_dir)


def test_cli_converts_a_release_in_place_and_prints_the_report(tmp_path, tiny_release, raw, capsys):
    """A release whose lm_head copy equals embed_tokens' (tied), lying where ComfyUI users keep it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    models = tmp_path / "models"
    release = models / "LLM" / "GoT-6B"
    embed = raw[f"{MLLM_PEFT}model.embed_tokens.modules_to_save.default.weight"]
    lm_head = f"{MLLM_PEFT}lm_head.modules_to_save.default.weight"
    shard = json.loads((tiny_release.got_release / "pytorch_model.bin.index.json").read_text())["weight_map"][lm_head]
    release_variant(tiny_release.got_release, release, shard, lambda state: state.__setitem__(lm_head, embed.clone()))

    assert main(["--release", str(release), "--qwen", str(tiny_release.qwen_base), "--models", str(models)]) == 0
    out = capsys.readouterr().out
    # 2 decoder layers x 7 targets + 2 vision blocks x 3 MLP targets (the release wraps the vision tower too)
    assert "LoRA pairs merged=20 (alpha=32; r=8 -> alpha/r=4)" in out
    assert "modules_to_save copies taken=6" in out and "tie_word_embeddings=True" in out
    for path in [*release.glob("model*.safetensors"), release / "got_projectors.safetensors",
                 models / "diffusion_models" / "GoT-6B-unet.safetensors", models / "vae" / "GoT-6B-vae.safetensors"]:
        assert str(path) in out
    assert "total " in out

    with safe_open(release / "model.safetensors", framework="pt") as handle:
        assert "lm_head.weight" not in handle.keys()  # tied: stored once, as embed_tokens
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(release, **dtype_argument(torch.float32))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    expected = expected_mllm(raw_state(release))
    assert_model_equals_merge(model, expected, tied=True)
    assert (release / "pytorch_model.bin.index.json").exists()  # the release itself is left as it was


def test_cli_says_which_files_go_where(tmp_path, tiny_release, capsys):
    models = tmp_path / "models"
    models.mkdir()
    args = ["--qwen", str(tiny_release.qwen_base), "--models", str(models)]
    assert main(["--release", str(tmp_path / "GoT-6B"), *args]) == 2
    err = capsys.readouterr().err
    assert "GoT-6B does not exist" in err and "pytorch_model.bin.index.json" in err and "--qwen" in err

    partial = tmp_path / "partial"
    shutil.copytree(tiny_release.got_release, partial, ignore=shutil.ignore_patterns("*00002-of-00005.bin"))
    assert main(["--release", str(partial), *args]) == 2
    assert "pytorch_model-00002-of-00005.bin" in capsys.readouterr().err

    qwen = tmp_path / "qwen"
    qwen.mkdir()
    shutil.copy(tiny_release.qwen_base / "config.json", qwen)
    assert main(["--release", str(tiny_release.got_release), "--qwen", str(qwen), "--models", str(models)]) == 2
    err = capsys.readouterr().err
    assert "lacks preprocessor_config.json, tokenizer_config.json, tokenizer.json" in err
    assert main(["--release", str(tiny_release.got_release), "--qwen", str(qwen),
                 "--models", str(tmp_path / "nope")]) == 2
    assert "models folder" in capsys.readouterr().err
    assert not any(models.iterdir())  # nothing half-written


def test_writer_streams_and_round_trips_every_dtype(tmp_path):
    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(7).bfloat16(), "f16": torch.randn(2, 2).half(),
               "i64": torch.arange(6).reshape(2, 3), "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 4), "strided": torch.randn(4, 6)[:, ::2]}
    expected = {k: v.clone() for k, v in tensors.items()}
    to_write = dict(tensors)
    size = write_safetensors(tmp_path / "a.safetensors", to_write, {"note": "x"})
    assert to_write == {}  # each tensor dropped once written
    assert size == (tmp_path / "a.safetensors").stat().st_size
    with safe_open(tmp_path / "a.safetensors", framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "x"}
        for key, value in expected.items():
            assert handle.get_tensor(key).dtype == value.dtype and torch.equal(handle.get_tensor(key), value), key

    halves = {k: v for k, v in expected.items() if v.is_floating_point()}
    write_safetensors(tmp_path / "h.safetensors", dict(halves), float_dtype=torch.float16)
    for key, value in load_file(tmp_path / "h.safetensors").items():
        assert value.dtype == torch.float16 and torch.equal(value, halves[key].half()), key

    many = {f"w{i}": torch.full((256,), float(i)) for i in range(10)}
    folder = tmp_path / "sharded"
    folder.mkdir()
    written = write_sharded_safetensors(folder, dict(many), max_shard_bytes=3000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(written) == 5 + 1 and index["metadata"]["total_size"] == 10 * 1024
    for key, value in many.items():
        assert torch.equal(load_file(folder / index["weight_map"][key])[key], value)
