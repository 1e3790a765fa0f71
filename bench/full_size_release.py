"""A full-size synthetic GoT release, written in the released layout with random weights.

    python bench/full_size_release.py OUT            # fp32 like the release: about 28 GB
    python bench/full_size_release.py OUT --bf16     # half the disk (the fp16 VAE stays fp16)
    python bench/full_size_release.py OUT --tiny     # the same writer at the tiny test models' sizes (CI)

writes `OUT/GoT-6B/` (pytorch_model.bin.index.json and five pickle shards, one state dict keyed as the release
is: the PEFT-wrapped MLLM in transformers-4.49 names with GoT's LoRA r=32 pairs and modules_to_save copies, the two
projectors, the 12-channel SDXL UNet and the fp16 SDXL VAE in diffusers names) and `OUT/Qwen2.5-VL-3B-Instruct/`
(Qwen2.5-VL-3B-Instruct's config, the real Qwen2.5 BPE tokenizer from dashscope, processor and generation
config; with --vlm-weights also random bf16 safetensors weights, for a judge or thinker). The names and shapes
come from the installed transformers, peft and diffusers built on the meta device, so nothing of full size is
held but the shard being written: the peak is one shard (about 5.6 GB in fp32). The free disk is checked first.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from got_backend.testing import fixtures  # noqa: E402
from got_backend.testing.fixtures import LORA_TARGETS, MODULES_TO_SAVE, SHARDS, make_qwen_base  # noqa: E402
from got_backend.weights.mllm_files import dtype_argument  # noqa: E402
from got_backend.weights.safetensors_writer import write_sharded_safetensors  # noqa: E402

GOT_LORA_RANK = 32  # GoT's training config (docs/ALGORITHM.md §1): r=32, alpha=32
GOT_LORA_ALPHA = 32
DISK_MARGIN = 2 * 1024 ** 3

QWEN25_VL_3B_CONFIG = {  # Qwen/Qwen2.5-VL-3B-Instruct config.json (transformers 4.49, flat)
    **fixtures.qwen_config(),
    "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16, "num_hidden_layers": 36,
    "num_key_value_heads": 2, "max_window_layers": 70, "vocab_size": 151936,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
}
GENERATION_CONFIG = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                     "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001,
                     "top_k": 1, "transformers_version": "4.49.0"}
SDXL_UNET_12CH = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, conv_in widened to 12 channels
    "sample_size": 128, "in_channels": 12, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def release_layout(qwen_dir: Path, unet_config: dict, text_hidden: int,
                   pooled: int) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Every tensor of the release (name -> shape, dtype) in the release's order, from the installed libraries
    built on the meta device with the config in `qwen_dir`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(qwen_dir, local_files_only=True)
    with torch.device("meta"):
        mllm = Qwen2_5_VLForConditionalGeneration._from_config(config, **dtype_argument(torch.float32))
        lora = LoraConfig(r=GOT_LORA_RANK if text_hidden > fixtures.TEXT_HIDDEN else fixtures.LORA_RANK,
                          lora_alpha=GOT_LORA_ALPHA, lora_dropout=0.05, target_modules=list(LORA_TARGETS),
                          modules_to_save=list(MODULES_TO_SAVE))
        layout = {f"mllm.{fixtures.to_transformers_449_name(k)}": (v.shape, torch.float32)
                  for k, v in get_peft_model(mllm, lora).state_dict().items()}
        for name, fan_in, fan_out in (("output_projector", text_hidden, text_hidden),
                                      ("output_projector_add", text_hidden, pooled)):
            layout[f"{name}.projector.weight"] = (torch.Size([fan_out, fan_in]), torch.float32)
            layout[f"{name}.projector.bias"] = (torch.Size([fan_out]), torch.float32)
        layout.update({f"unet.{k}": (v.shape, torch.float32)
                       for k, v in UNet2DConditionModel(**unet_config).state_dict().items()})
        layout.update({f"vae.{k}": (v.shape, torch.float16)
                       for k, v in AutoencoderKL(**fixtures.vae_config()).state_dict().items()})
    return layout


def random_tensor(name: str, shape: torch.Size, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Trained-looking random values: weights ~ N(0, 1/fan_in), norms near 1, small biases and LoRA B."""
    if len(shape) == 1 and ("norm" in name or name.endswith(("ln_q.weight", "gamma"))):
        tensor = 1 + 0.02 * torch.randn(shape, generator=generator)
    elif len(shape) == 1:
        tensor = 0.02 * torch.randn(shape, generator=generator)
    else:
        tensor = torch.randn(shape, generator=generator).mul_(
            (0.02 if "lora_B" in name or "embed" in name or "lm_head" in name else 1 / math.sqrt(shape[1:].numel())))
    return tensor.to(dtype)


def stored_dtype(release_dtype: torch.dtype, override: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor is written in: `override` (--bf16) replaces fp32; the fp16 VAE stays fp16."""
    return override if override is not None and release_dtype == torch.float32 else release_dtype


def stored_sizes(layout: dict[str, tuple[torch.Size, torch.dtype]], dtype: torch.dtype | None) -> dict[str, int]:
    return {k: shape.numel() * stored_dtype(d, dtype).itemsize for k, (shape, d) in layout.items()}


def shard_plan(sizes: dict[str, int]) -> list[list[str]]:
    """The names in order, cut into SHARDS shards of about equal bytes (as the release's `save_pretrained` cut)."""
    total, shards, filled = sum(sizes.values()), [[] for _ in range(SHARDS)], 0
    for key, size in sizes.items():
        shards[min(SHARDS - 1, filled * SHARDS // total)].append(key)
        filled += size
    return shards


def check_disk(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN:
        sys.exit(f"{folder} has {free / 1e9:.1f} GB free; the release needs {needed / 1e9:.1f} GB "
                 f"(+{DISK_MARGIN / 1e9:.0f} GB margin). Free some disk or pass --bf16 (half the size).")


def write_release(out: Path, *, tiny: bool = False, bf16: bool = False, vlm_weights: bool = False,
                  seed: int = 0, say=print) -> dict:
    """Write both folders under `out`; returns what was written (bytes, seconds, parameter counts)."""
    started = time.monotonic()
    qwen = make_qwen_base(out / "Qwen2.5-VL-3B-Instruct")
    if not tiny:
        (qwen / "config.json").write_text(json.dumps(QWEN25_VL_3B_CONFIG, indent=2))
    (qwen / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    config = json.loads((qwen / "config.json").read_text())
    unet_config = fixtures.unet_config() if tiny else SDXL_UNET_12CH
    layout = release_layout(qwen, unet_config, config["hidden_size"],
                            unet_config["projection_class_embeddings_input_dim"] - 6 * 256)
    dtype = torch.bfloat16 if bf16 else None
    sizes = stored_sizes(layout, dtype)
    needed = sum(sizes.values())
    check_disk(out, needed * (1.6 if vlm_weights else 1))
    say(f"writing a {'tiny' if tiny else 'full-size'} GoT-6B release: {len(layout):,} tensors, "
        f"{needed / 1e9:.2f} GB in {SHARDS} shards")
    release = out / "GoT-6B"
    shutil.rmtree(release, ignore_errors=True)
    release.mkdir(parents=True)
    generator, weight_map = torch.Generator().manual_seed(seed), {}
    for index, names in enumerate(shard_plan(sizes)):
        file = release / f"pytorch_model-{index + 1:05d}-of-{SHARDS:05d}.bin"
        shard = {}
        for name in names:
            shape, stored = layout[name]
            shard[name] = random_tensor(name, shape, stored_dtype(stored, dtype), generator)
        torch.save(shard, file)
        weight_map.update(dict.fromkeys(names, file.name))
        say(f"  {file.name}: {len(names):,} tensors, {file.stat().st_size / 1e9:.2f} GB")
        del shard
    index = {"metadata": {"total_size": needed}, "weight_map": weight_map}
    (release / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    if vlm_weights:
        write_vlm_weights(qwen, generator, say)
    counts = {part: sum(shape.numel() for k, (shape, _) in layout.items() if k.startswith(part + "."))
              for part in ("mllm", "output_projector", "output_projector_add", "unet", "vae")}
    return {"release_bytes": sum(f.stat().st_size for f in release.iterdir()), "seconds": time.monotonic() - started,
            "parameters": counts, "largest_shard_bytes": max(f.stat().st_size for f in release.glob("*.bin")),
            "release": str(release), "qwen": str(qwen)}


def write_vlm_weights(qwen: Path, generator: torch.Generator, say) -> None:
    """Random bf16 safetensors weights for the Qwen folder (a judge or thinker), written shard by shard."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(qwen, local_files_only=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen2_5_VLForConditionalGeneration._from_config(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    lazy = LazyTensors(shapes, generator)
    write_sharded_safetensors(qwen, lazy)
    say(f"  {qwen.name}: random bf16 weights, {sum(s.numel() for s in shapes.values()) * 2 / 1e9:.2f} GB")


class LazyTensors(dict):
    """Names -> bf16 random tensors made when the writer asks for them (it drops each once written)."""

    def __init__(self, shapes: dict[str, torch.Size], generator: torch.Generator) -> None:
        super().__init__({name: torch.empty(shape, dtype=torch.bfloat16, device="meta")
                          for name, shape in shapes.items()})
        self.generator = generator

    def pop(self, name, *default):
        meta = super().pop(name, *default)
        if meta is None or not isinstance(meta, torch.Tensor) or meta.device.type != "meta":
            return meta
        return random_tensor(name, meta.shape, torch.bfloat16, self.generator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tiny test models' sizes (a rehearsal)")
    parser.add_argument("--bf16", action="store_true", help="store the fp32 tensors as bf16 (half the disk)")
    parser.add_argument("--vlm-weights", action="store_true", help="also random weights for the Qwen folder")
    args = parser.parse_args(argv)
    written = write_release(args.out, tiny=args.tiny, bf16=args.bf16, vlm_weights=args.vlm_weights)
    print(json.dumps(written, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
