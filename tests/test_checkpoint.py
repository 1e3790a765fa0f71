"""Reading the released GoT checkpoint: merge, renaming, streaming, and refusing bad files loudly."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version
from safetensors.torch import save_file

from got_backend.weights.checkpoint import CheckpointError, UnsafeCheckpointError, read_got_checkpoint
from got_backend.weights.mllm_files import read_release
from got_backend.testing.fixtures import LORA_ALPHA, LORA_RANK, to_transformers_449_name
from got_backend.weights.qwen_names import load_qwen_config
from got_backend.weights.state_dicts import iter_shards, load_tensor_file
from tests.got_release_reference import (MLLM_PEFT, expected_mllm, expected_part, raw_state, release_variant,
                                         shard_holding)

PROJECTORS = ("output_projector", "output_projector_add")


@pytest.fixture(scope="module")
def raw(tiny_release):
    return raw_state(tiny_release.got_release)


@pytest.fixture(scope="module")
def weights(tiny_release):
    return read_got_checkpoint(tiny_release.got_release, tiny_release.qwen_base)


def assert_same_weights(actual, expected) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def as_449(mllm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {to_transformers_449_name(k): v for k, v in mllm.items()}


def test_release_parts_match_the_reference_reading(weights, raw):
    assert_same_weights(as_449(weights.mllm), expected_mllm(raw))
    for part in PROJECTORS:
        assert_same_weights(getattr(weights, part), expected_part(raw, f"{part}.projector."))
    assert_same_weights(weights.unet, expected_part(raw, "unet."))
    assert_same_weights(weights.vae, expected_part(raw, "vae."))
    assert weights.unet_config["in_channels"] == 12 and weights.vae_config["latent_channels"] == 4


def test_lora_is_merged_with_alpha_over_rank(weights, raw):
    key = "model.layers.1.mlp.down_proj.weight"
    base = raw[f"{MLLM_PEFT}model.layers.1.mlp.down_proj.base_layer.weight"]
    a = raw[f"{MLLM_PEFT}model.layers.1.mlp.down_proj.lora_A.default.weight"]
    b = raw[f"{MLLM_PEFT}model.layers.1.mlp.down_proj.lora_B.default.weight"]
    merged = as_449(weights.mllm)[key]
    assert a.shape[0] == LORA_RANK
    assert torch.allclose(merged - base, (LORA_ALPHA / LORA_RANK) * (b @ a), atol=1e-6)
    assert not torch.allclose(merged - base, b @ a, atol=1e-3)  # the scale (4 in the tiny) is applied


def test_lora_alpha_can_be_overridden(tiny_release, raw):
    weights = read_got_checkpoint(tiny_release.got_release, lora_alpha=8.0)
    assert weights.report.lora_alpha == 8.0
    assert_same_weights(as_449(weights.mllm), expected_mllm(raw, lora_alpha=8.0))


def test_modules_to_save_copies_win_and_untie_lm_head(weights, raw):
    mllm = as_449(weights.mllm)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.input_layernorm.weight"):
        module, param = name.rsplit(".", 1)
        assert torch.equal(mllm[name], raw[f"{MLLM_PEFT}{module}.modules_to_save.default.{param}"])
        assert not torch.equal(mllm[name], raw[f"{MLLM_PEFT}{module}.original_module.{param}"])
    assert weights.tie_word_embeddings is False


def test_report_accounts_for_every_tensor(weights, raw):
    report = weights.report
    layers, linear_targets, saved_per_layer = 2, 7, 2
    vision_blocks, vision_mlp_targets = 2, 3  # gate/up/down_proj of each vision block match the target names too
    assert report.tensors_read == len(raw)
    assert report.peft_wrapped
    assert report.lora_pairs_merged == layers * linear_targets + vision_blocks * vision_mlp_targets
    assert report.lora_ranks == (LORA_RANK,)
    assert report.modules_to_save_taken == report.originals_dropped == 2 + layers * saved_per_layer
    assert report.tensors == {"mllm": len(weights.mllm), "output_projector": 2, "output_projector_add": 2,
                              "unet": len(weights.unet), "vae": len(weights.vae)}
    consumed = 2 * report.lora_pairs_merged + report.originals_dropped  # A and B fold into W; originals go
    assert sum(report.tensors.values()) == len(raw) - consumed
    assert report.renamed_keys == sum(k != to_transformers_449_name(k) for k in weights.mllm)
    assert (report.renamed_keys > 0) == (Version(transformers.__version__) >= Version("4.52"))  # 4.49: none
    assert report.dtypes["vae"] == {"float16": len(weights.vae)}


def test_mllm_names_are_the_installed_transformers_names(weights, tiny_release):
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(load_qwen_config(tiny_release.qwen_base))
    assert weights.mllm.keys() == model.state_dict().keys()


def test_loading_the_release_mllm_is_strict_and_names_what_is_wrong(weights, tiny_release):
    def load(mllm=weights.mllm, tie=weights.tie_word_embeddings):
        return read_release(tiny_release.got_release, tiny_release.qwen_base, torch.float32,
                            replace(weights, mllm=mllm, tie_word_embeddings=tie)).model

    assert_same_weights(load().state_dict(), weights.mllm)

    lacking = dict(weights.mllm)
    missing_key = next(k for k in lacking if k.endswith("layers.1.post_attention_layernorm.weight"))
    del lacking[missing_key]
    with pytest.raises(CheckpointError, match=missing_key.replace(".", r"\.")):
        load(lacking)
    with pytest.raises(CheckpointError, match="foo.bar"):
        load({**weights.mllm, "foo.bar": torch.zeros(1)})

    with pytest.raises(CheckpointError, match="tie_word_embeddings=False"):
        load(tie=True)


def test_tied_model_accepts_a_checkpoint_without_lm_head(weights, tiny_release):
    without_head = {k: v for k, v in weights.mllm.items() if not k.endswith("lm_head.weight")}
    model = read_release(tiny_release.got_release, tiny_release.qwen_base, torch.float32,
                         replace(weights, mllm=without_head, tie_word_embeddings=True)).model
    assert torch.equal(model.get_output_embeddings().weight, without_head[next(
        k for k in without_head if k.endswith("embed_tokens.weight"))])


# -- streaming -------------------------------------------------------------------------------------------------

@pytest.fixture
def own_release(tmp_path, tiny_release) -> Path:
    """The release under paths no other test maps (hard links, so no copying)."""
    return Path(shutil.copytree(tiny_release.got_release, tmp_path / "GoT-6B", copy_function=os.link))


def mapped_shards(release: Path) -> list[str]:
    """The release's shard files currently memory-mapped into this process."""
    maps = Path("/proc/self/maps").read_text()
    return sorted(p.name for p in release.glob("pytorch_model-*.bin") if str(p) in maps)


needs_proc_maps = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")


@needs_proc_maps
def test_shards_are_loaded_one_at_a_time_in_index_order(own_release):
    release = own_release
    order = []
    for shard in iter_shards(release):
        # Only the shard in hand is loaded (mapped); the previous one is gone, the next not yet read.
        assert mapped_shards(release) == [shard.file.name]
        assert shard.tensors.keys() == shard.expected_keys
        assert all(shard_holding(release, k) == shard.file.name for k in shard.tensors)
        order.append(shard.file.name)
        del shard
    assert order == [f"pytorch_model-0000{i}-of-00005.bin" for i in range(1, 6)]
    assert mapped_shards(release) == []


@needs_proc_maps
def test_reading_the_release_never_loads_a_shard_before_its_turn(own_release):
    release = own_release
    seen: list[tuple[str, list[str]]] = []
    weights = read_got_checkpoint(release, on_shard=lambda file: seen.append((file.name, mapped_shards(release))))
    names = [name for name, _ in seen]
    assert names == sorted(names) and len(names) == 5
    for i, (name, mapped) in enumerate(seen):
        assert name in mapped
        assert set(mapped) <= set(names[: i + 1])  # later shards untouched
    del weights


# -- other input formats -----------------------------------------------------------------------------------------

def test_single_bin_file_reads_the_same(tmp_path, tiny_release, raw, weights):
    torch.save(raw, tmp_path / "got.bin")
    assert_same_weights(read_got_checkpoint(tmp_path / "got.bin").mllm, weights.mllm)


def test_indexed_safetensors_read_the_same(tmp_path, raw, weights):
    import json

    keys = sorted(raw)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: raw[k].clone() for k in part}, tmp_path / name)  # clone: tied originals share storage
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    read = read_got_checkpoint(tmp_path)
    assert read.report.files == list(halves)
    assert_same_weights(read.mllm, weights.mllm)
    assert_same_weights(read.unet, weights.unet)
    assert_same_weights(read.vae, weights.vae)


@pytest.mark.parametrize("names", ["transformers-4.49", "installed"])
def test_unwrapped_mllm_is_accepted(tmp_path, raw, weights, names):
    mllm = expected_mllm(raw) if names == "transformers-4.49" else weights.mllm
    state = {f"mllm.{k}": v.clone() for k, v in mllm.items()}
    state.update({k: v for k, v in raw.items() if not k.startswith("mllm.")})
    save_file(state, tmp_path / "got.safetensors")
    read = read_got_checkpoint(tmp_path / "got.safetensors")
    assert not read.report.peft_wrapped and read.report.lora_pairs_merged == 0
    assert_same_weights(read.mllm, weights.mllm)


# -- bad checkpoints ---------------------------------------------------------------------------------------------

def rename(old: str, new: str):
    def edit(state):
        state[new] = state.pop(old)
    return edit


@pytest.mark.parametrize("old, new, missing", [
    (f"{MLLM_PEFT}model.norm.weight", f"{MLLM_PEFT}model.final_norm.weight",
     r"MLLM: model\.(language_model\.)?norm\.weight"),
    (f"{MLLM_PEFT}model.layers.0.mlp.up_proj.lora_B.default.weight",
     f"{MLLM_PEFT}model.layers.0.mlp.up_proj.lora_B.adapter2.weight",
     r"LoRA layer model\.layers\.0\.mlp\.up_proj is incomplete: .* but no lora_B"),
    ("unet.mid_block.resnets.1.conv2.weight", "unet.mid_block.resnets.1.conv_2.weight",
     r"UNET: mid_block\.resnets\.1\.conv2\.weight"),
    ("vae.decoder.conv_out.bias", "vae.decoder.conv_outt.bias", r"VAE: decoder\.conv_out\.bias"),
    ("output_projector.projector.bias", "output_projector.projector.b", r"output_projector: bias"),
])
def test_a_renamed_tensor_is_reported_by_name(tmp_path, tiny_release, old, new, missing):
    release = tiny_release.got_release
    shard = shard_holding(release, old)
    variant = release_variant(release, tmp_path / "GoT-6B", shard, rename(old, new))
    with pytest.raises(CheckpointError) as caught:
        read_got_checkpoint(variant, tiny_release.qwen_base)
    message = str(caught.value)
    assert f"{new} ({shard})" in message.split("left unplaced")[1]
    assert re.search(missing, message)


def test_an_extra_tensor_is_reported_by_name(tmp_path, tiny_release):
    release = tiny_release.got_release
    shard = "pytorch_model-00002-of-00005.bin"
    extra = f"{MLLM_PEFT}model.layers.0.mlp.extra_proj.weight"
    variant = release_variant(release, tmp_path / "GoT-6B", shard,
                              lambda state: state.__setitem__(extra, torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"1 left unplaced.*\n.*extra_proj.weight.*" + shard):
        read_got_checkpoint(variant, tiny_release.qwen_base)


def test_unknown_prefix_is_reported_even_without_the_qwen_config(tmp_path, tiny_release):
    release = tiny_release.got_release
    shard = "pytorch_model-00005-of-00005.bin"
    variant = release_variant(release, tmp_path / "GoT-6B", shard,
                              lambda state: state.__setitem__("text_encoder.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"text_encoder\.weight \(pytorch_model-00005"):
        read_got_checkpoint(variant)


def test_missing_shard_is_named(tmp_path, tiny_release):
    folder = tmp_path / "GoT-6B"
    shutil.copytree(tiny_release.got_release, folder, ignore=shutil.ignore_patterns("*00004-of-00005.bin"))
    with pytest.raises(CheckpointError, match=r"not there: pytorch_model-00004-of-00005\.bin"):
        read_got_checkpoint(folder)


def test_truncated_shard_is_named(tmp_path, tiny_release):
    folder = tmp_path / "GoT-6B"
    shutil.copytree(tiny_release.got_release, folder)
    shard = folder / "pytorch_model-00003-of-00005.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"pytorch_model-00003-of-00005\.bin .*corrupt or truncated"):
        read_got_checkpoint(folder)


class CodePayload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path, tiny_release):
    proof = tmp_path / "payload-works"
    pickle.loads(pickle.dumps(CodePayload(proof))).close()
    assert proof.exists()  # the payload is live: an unsafe loader would run it

    marker = tmp_path / "pwned"
    shard = "pytorch_model-00005-of-00005.bin"
    variant = release_variant(tiny_release.got_release, tmp_path / "GoT-6B", shard,
                              lambda state: state.__setitem__("vae.payload", CodePayload(marker)))
    with pytest.raises(UnsafeCheckpointError, match=shard + r" is not a plain weights file.*refused for safety"):
        read_got_checkpoint(variant)
    assert not marker.exists()


def test_files_that_are_not_checkpoints_get_clear_errors(tmp_path):
    (tmp_path / "noise.bin").write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(CheckpointError, match=r"noise\.bin .*corrupt or truncated"):
        read_got_checkpoint(tmp_path / "noise.bin")
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="does not hold a flat state dict"):
        read_got_checkpoint(tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_got_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="pytorch_model.bin.index.json"):
        read_got_checkpoint(empty)


def test_an_sdxl_checkpoint_is_recognised_as_not_got(tmp_path):
    sdxl = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
            "first_stage_model.decoder.conv_in.weight": torch.zeros(512, 4, 3, 3)}
    save_file(sdxl, tmp_path / "sd_xl_base_1.0.safetensors")
    with pytest.raises(CheckpointError, match=r"sd_xl_base_1\.0\.safetensors holds no GoT tensors.*SDXL"):
        read_got_checkpoint(tmp_path / "sd_xl_base_1.0.safetensors")


def test_legacy_pickle_format_still_loads(tmp_path):
    state = {"unet.conv_in.weight": torch.randn(4, 12, 3, 3)}
    torch.save(state, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(load_tensor_file(tmp_path / "old.bin")["unet.conv_in.weight"], state["unet.conv_in.weight"])
