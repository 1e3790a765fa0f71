"""Tiny random-weight models of GoT's real architectures, written in the layout of the released files.

Tests, `python -m got_backend generate --smoke` and the benchmarks build on these so that every load goes
through the code a user's real files go through:

- `make_qwen_base(dir)`: a Qwen2.5-VL-3B-Instruct-like folder (flat transformers-4.49 config.json, the real
  Qwen2.5 BPE tokenizer rebuilt from dashscope's `qwen.tiktoken`, processor config, chat template).
- `make_tiny_vlm(dir)`: the same folder with random weights in model.safetensors (a plain Qwen2.5-VL chat model).
- `make_got_release(dir, base)`: a GoT-6B-like folder: `pytorch_model.bin.index.json` plus five pickle
  shards holding one state dict with PEFT-wrapped MLLM keys in transformers-4.49 names, the two projectors,
  a 12-channel SDXL-structured UNet (diffusers names) and the SDXL VAE (diffusers names, fp16).
"""

from __future__ import annotations

import base64
import re
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..reasoning.tokens import EMBEDDING_ROWS

# Sizes of the tiny stand-ins; the real ones are in docs/ALGORITHM.md §1.
TEXT_HIDDEN = 64
POOLED_DIM = 32
LORA_RANK = 8
LORA_ALPHA = 32  # GoT's alpha; with the tiny rank the merge scale is 4, so a missing scale shows
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULES_TO_SAVE = ("embed_tokens", "lm_head", "input_layernorm", "post_attention_layernorm")
SHARDS = 5

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # ids 151643 ... 151664, in this order
QWEN_NON_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}
QWEN2_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tiktoken_path() -> Path:
    """The real Qwen BPE ranks, shipped inside the `dashscope` package (found, not imported: that file is all the
    fixtures need, and importing dashscope pulls in its many dependencies, e.g. on a bare GPU machine)."""
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tiny fixtures rebuild the real Qwen tokenizer from the `dashscope` package's "
                           "qwen.tiktoken: pip install dashscope")
    path = Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise RuntimeError(f"dashscope is installed but has no {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks: dict[bytes, int] = {}
    for line in qwen_tiktoken_path().read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    table = _bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    # A BPE merge (left, right) exists for every token that two smaller tokens concatenate to; the merge's
    # priority is the rank of the result, ties broken by the ranks of the parts (as tiktoken's converter does).
    merges = []
    for token, rank in ranks.items():
        parts = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                 for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges.extend((rank, a, b, left, right) for a, b, left, right in parts)
    merges.sort(key=lambda m: (m[0], m[1], m[2]))
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    return vocab, [(as_text(m[3]), as_text(m[4])) for m in merges]


def write_qwen_tokenizer(folder: Path) -> None:
    """Qwen2.5's tokenizer files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab, merges = _qwen_vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=t not in QWEN_NON_SPECIAL, normalized=False)
                    for t in QWEN_SPECIAL_TOKENS])
    assert tok.token_to_id("<|endoftext|>") == 151643 and tok.token_to_id("<|file_sep|>") == 151664
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    added = {str(151643 + i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                               "single_word": False, "special": t not in QWEN_NON_SPECIAL}
             for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072, "errors": "replace",
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None,
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS[1:14]],
        "chat_template": QWEN25_VL_CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def qwen_config() -> dict:
    """Qwen2.5-VL-3B-Instruct's config.json (transformers 4.49, flat), shrunk: 2 decoder and 2 vision layers."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
        "hidden_size": TEXT_HIDDEN, "initializer_range": 0.02, "intermediate_size": 128,
        "max_position_embeddings": 128000, "max_window_layers": 70, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": EMBEDDING_ROWS,  # the real embedding: GoT's token ids must fit
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {
            "depth": 2, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "in_chans": 3, "out_hidden_size": TEXT_HIDDEN, "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1],
            "tokens_per_second": 2, "temporal_patch_size": 2,
        },
    }


PREPROCESSOR_CONFIG = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}


def make_qwen_base(folder: str | Path) -> Path:
    """A Qwen2.5-VL-3B-Instruct-like folder: what a GoT user has besides GoT-6B (tokenizer, processor, config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(qwen_config(), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN25_VL_CHAT_TEMPLATE}, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": False}))
    write_qwen_tokenizer(folder)
    return folder


def make_tiny_vlm(folder: str | Path, seed: int = 1) -> Path:
    """The base Qwen2.5-VL-3B-Instruct folder with (tiny, random) weights, as Hugging Face saves it
    (model.safetensors): what a chat model or judge loads when it is not GoT's MLLM."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    folder = make_qwen_base(folder)
    torch.manual_seed(seed)
    from ..weights.mllm_files import dtype_argument  # `dtype` from transformers 4.56, `torch_dtype` before

    model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(folder, local_files_only=True),
                                                            **dtype_argument(torch.float32))
    model.save_pretrained(folder, safe_serialization=True)
    return make_qwen_base(folder)  # the released config and generation config again, over the ones just saved


def unet_config() -> dict:
    """SDXL-base's UNet structure (3 levels, attention at levels 2-3, linear projections, text_time
    added conditioning) with small widths and depths, and GoT's 12 input channels."""
    return {
        "sample_size": 128, "in_channels": 12, "out_channels": 4, "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 128], "layers_per_block": 2, "transformer_layers_per_block": [1, 1, 1],
        "attention_head_dim": [1, 1, 2], "cross_attention_dim": TEXT_HIDDEN, "use_linear_projection": True,
        "norm_num_groups": 32, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": POOLED_DIM + 6 * 256,
    }


def vae_config() -> dict:
    """SDXL's VAE exactly (ComfyUI's VAE loader assumes these widths)."""
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 1024,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
        "act_fn": "silu", "scaling_factor": 0.13025, "force_upcast": True,
    }


def _peft_wrapped_mllm_state(base: Path, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The MLLM as GoT trains it (PEFT LoRA with GoT's target names, full copies of embed/lm_head/norms), with
    trained-looking (nonzero) LoRA B and modules_to_save copies that differ from the originals. PEFT matches the
    target names as module-name suffixes, as GoT's training config gives them, so the vision tower's MLP
    projections (`visual.blocks.N.mlp.{gate,up,down}_proj`) carry LoRA pairs too, beside the decoder's layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers import AutoConfig

    from ..weights.mllm_files import dtype_argument  # `dtype` from transformers 4.56, `torch_dtype` before

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, **dtype_argument(torch.float32))
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.05,
                      target_modules=list(LORA_TARGETS),
                      modules_to_save=list(MODULES_TO_SAVE))
    peft_model = get_peft_model(model, lora)
    state = {}
    for key, value in peft_model.state_dict().items():
        value = value.detach().clone()
        if ".lora_B." in key or ".modules_to_save." in key:
            value += 0.02 * torch.randn(value.shape, generator=generator)
        state[to_transformers_449_name(key)] = value
    return state


def to_transformers_449_name(key: str) -> str:
    """transformers >= 4.52 names (`model.language_model.layers`, `model.visual`) -> 4.49 names, also
    inside a PEFT prefix (`base_model.model.model.language_model.` -> `base_model.model.model.`)."""
    key = key.replace("model.language_model.", "model.", 1)
    return re.sub(r"^((?:base_model\.model\.)?)model\.visual\.", r"\1visual.", key)  # 4.49 names stay


def _linear_state(name: str, fan_in: int, fan_out: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": torch.randn(fan_out, fan_in, generator=generator) / fan_in ** 0.5,
            f"{name}.bias": 0.02 * torch.randn(fan_out, generator=generator)}


def _diffusers_state(model: torch.nn.Module, generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        noise = scale * torch.randn(value.shape, generator=generator)
        state[key] = (value.float() + noise).to(value.dtype).contiguous()
    return state


def got_state_dict(base: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """One state dict of the whole tiny GoT model, keyed as the released GoT-6B checkpoint is."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    generator = torch.Generator().manual_seed(seed)
    state = {f"mllm.{k}": v for k, v in _peft_wrapped_mllm_state(base, generator).items()}
    state.update(_linear_state("output_projector.projector", TEXT_HIDDEN, TEXT_HIDDEN, generator))
    state.update(_linear_state("output_projector_add.projector", TEXT_HIDDEN, POOLED_DIM, generator))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config())
    # Nonzero everywhere (diffusers zero-initialises some output layers), so every weight matters.
    state.update({f"unet.{k}": v for k, v in _diffusers_state(unet, generator, 0.01).items()})
    vae = AutoencoderKL(**vae_config())
    state.update({f"vae.{k}": v.half() for k, v in _diffusers_state(vae, generator, 0.0).items()})
    return state


def save_as_release(state: dict[str, torch.Tensor], folder: str | Path, shards: int = SHARDS) -> Path:
    """Write a state dict as GoT-6B is released: pickle shards plus `pytorch_model.bin.index.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(v.numel() * v.element_size() for v in state.values())
    names = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    parts: list[dict[str, torch.Tensor]] = [{} for _ in names]
    filled = 0
    for key, value in state.items():
        index = min(shards - 1, filled * shards // max(total, 1))
        parts[index][key] = value
        filled += value.numel() * value.element_size()
    weight_map = {}
    for name, part in zip(names, parts):
        torch.save(part, folder / name)
        weight_map.update({key: name for key in part})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return folder


def make_got_release(folder: str | Path, base: str | Path, seed: int = 0) -> Path:
    """A GoT-6B-like folder (index json + 5 pickle shards) for the Qwen base folder `base`."""
    return save_as_release(got_state_dict(Path(base), seed), folder)


@dataclass(frozen=True)
class TinyRelease:
    qwen_base: Path
    got_release: Path


def make_tiny_release(root: str | Path, seed: int = 0) -> TinyRelease:
    """Both folders a GoT user downloads, tiny: `root/Qwen2.5-VL-3B-Instruct` and `root/GoT-6B`."""
    root = Path(root)
    base = make_qwen_base(root / "Qwen2.5-VL-3B-Instruct")
    release = root / "GoT-6B"
    if release.exists():
        shutil.rmtree(release)
    make_got_release(release, base, seed)
    return TinyRelease(base, release)
