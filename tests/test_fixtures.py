"""The tiny release must look like the real one: same files, same key layout, the real Qwen2.5 tokenizer."""

import json

import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from got_backend.testing.fixtures import SHARDS
from got_backend.reasoning.tokens import EXPECTED_IDS


def test_tokenizer_is_the_real_qwen25_bpe(tiny_release):
    tok = AutoTokenizer.from_pretrained(tiny_release.qwen_base)
    # Ids as the released Qwen2.5 tokenizer gives them.
    assert tok("Hello world").input_ids == [9707, 1879]
    assert tok.convert_ids_to_tokens(tok(" 2024").input_ids) == ["Ġ", "2", "0", "2", "4"]  # Qwen2 splits digits
    base_specials = {name: i for name, i in EXPECTED_IDS.items() if i < 151665}
    assert {name: tok.convert_tokens_to_ids(name) for name in base_specials} == base_specials
    text = "<|box_start|>(12,34),(56,78)<|box_end|>"
    assert tok.decode(tok(text).input_ids) == text


def test_chat_template_and_processor_match_qwen25_vl(tiny_release):
    processor = AutoProcessor.from_pretrained(tiny_release.qwen_base)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
                        "<|im_start|>assistant\n")


def test_release_layout_is_sharded_pickles_with_an_index(tiny_release):
    index = json.loads((tiny_release.got_release / "pytorch_model.bin.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"pytorch_model-{i:05d}-of-{SHARDS:05d}.bin" for i in range(1, SHARDS + 1)]
    keys = set()
    for name in files:
        keys |= set(torch.load(tiny_release.got_release / name, weights_only=True, mmap=True))
    assert keys == set(index["weight_map"])
    assert index["weight_map"]["unet.conv_in.weight"]
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"mllm", "output_projector", "output_projector_add", "unet", "vae"}
    assert any(".lora_A.default." in k for k in keys) and any(".modules_to_save.default." in k for k in keys)
    # transformers-4.49 names inside the PEFT wrapper, as GoT was trained
    assert "mllm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert "mllm.base_model.model.visual.patch_embed.proj.weight" in keys


def test_config_is_qwen25_vl(tiny_release):
    config = AutoConfig.from_pretrained(tiny_release.qwen_base)
    assert config.model_type == "qwen2_5_vl"
    assert config.image_token_id == EXPECTED_IDS["<|image_pad|>"]
