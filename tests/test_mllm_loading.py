"""Loading the reasoner from the converted folder and straight from the release; tokenizer checks, dtypes,
devices and the generation-config default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from got_backend.testing.fixtures import TinyRelease
from got_backend.reasoning.mllm import GoTMLLM, MLLMLoadError, resolve_dtype
from got_backend.reasoning.tokens import GoTTokenizerError

PROMPT = "two cats on a sofa"


@pytest.fixture(scope="module")
def converted(tiny_mllm_folder: Path) -> GoTMLLM:
    return GoTMLLM.from_converted(tiny_mllm_folder, "fp32")


def linked_copy(folder: Path, target: Path, replace: dict[str, str | None]) -> Path:
    """`folder` with its files linked into `target`, some replaced by new text (or removed with None)."""
    target.mkdir()
    for file in folder.iterdir():
        if file.name not in replace:
            (target / file.name).symlink_to(file)
    for name, text in replace.items():
        if text is not None:
            (target / name).write_text(text)
    return target


def test_converted_folder_loads_with_gots_tokens_and_projectors(converted: GoTMLLM) -> None:
    tokens = converted.tokens
    assert (tokens.boi, tokens.eoi) == (151665, 151666)
    assert tokens.image_queries == tuple(range(151667, 151731))
    assert tokens.stop_ids == (151665, 151652, 151643)
    assert (converted.hidden_size, converted.context_size, converted.pooled_size) == (64, 64, 32)
    assert converted.dtype == torch.float32 and converted.device.type == "cpu"
    assert isinstance(converted.model, nn.Module) and converted.repetition_penalty == 1.0


def test_release_and_converted_folder_give_the_same_reasoner(converted: GoTMLLM, tiny_release: TinyRelease) -> None:
    released = GoTMLLM.from_release(tiny_release.got_release, tiny_release.qwen_base, "fp32")
    theirs = released.model.state_dict()
    assert converted.model.state_dict().keys() == theirs.keys()
    for name, value in converted.model.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert converted.model.lm_head.weight is not converted.model.get_input_embeddings().weight  # GoT unties them
    ga = converted.semantic_guidance(converted.reason(PROMPT, assistant_prefix="A cat<|im_gen_start|>"))
    gb = released.semantic_guidance(released.reason(PROMPT, assistant_prefix="A cat<|im_gen_start|>"))
    assert torch.equal(ga.context, gb.context) and torch.equal(ga.pooled, gb.pooled)
    assert converted.reason(PROMPT, max_new_tokens=8).token_ids == released.reason(PROMPT, max_new_tokens=8).token_ids


@pytest.mark.parametrize("dtype", ["bf16", torch.float16])
def test_dtype_choice(tiny_mllm_folder: Path, dtype) -> None:
    mllm = GoTMLLM.from_converted(tiny_mllm_folder, dtype)
    assert mllm.dtype == resolve_dtype(dtype) and mllm.model.lm_head.weight.dtype == resolve_dtype(dtype)
    chain = mllm.reason(PROMPT, assistant_prefix="A cat<|im_gen_start|>")
    guidance = mllm.semantic_guidance(chain)
    assert guidance.context.dtype == torch.float32 and torch.isfinite(guidance.context).all()
    assert mllm.reason(PROMPT, max_new_tokens=4).new_tokens == 4


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(MLLMLoadError, match="use bf16, fp16 or fp32"):
        resolve_dtype("int8")


def test_repetition_penalty_default_comes_from_the_generation_config(tiny_mllm_folder: Path, converted: GoTMLLM,
                                                                     tmp_path: Path) -> None:
    config = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "repetition_penalty": 1.5}
    folder = linked_copy(tiny_mllm_folder, tmp_path / "GoT-6B", {"generation_config.json": json.dumps(config)})
    mllm = GoTMLLM.from_converted(folder, "fp32")
    assert mllm.repetition_penalty == 1.5
    default = mllm.reason(PROMPT, max_new_tokens=10)
    assert default.token_ids == converted.reason(PROMPT, max_new_tokens=10, repetition_penalty=1.5).token_ids
    assert default.token_ids != converted.reason(PROMPT, max_new_tokens=10).token_ids


def test_tokenizer_without_gots_tokens_is_refused(tiny_mllm_folder: Path, tiny_release: TinyRelease,
                                                  tmp_path: Path) -> None:
    base = tiny_release.qwen_base
    names = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
             "special_tokens_map.json"]
    folder = linked_copy(tiny_mllm_folder, tmp_path / "GoT-6B", {name: None for name in names})
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (folder / name).symlink_to(base / name)
    with pytest.raises(GoTTokenizerError, match="<\\|im_gen_start\\|>: expected id 151665"):
        GoTMLLM.from_converted(folder, "fp32")


def test_tokenizer_with_gots_tokens_in_the_wrong_order_is_refused(converted: GoTMLLM,
                                                                  tiny_release: TinyRelease) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_release.qwen_base)
    processor.tokenizer.add_tokens(["<|im_gen_end|>", "<|im_gen_start|>"], special_tokens=True)
    with pytest.raises(GoTTokenizerError, match="expected id 151665, tokenizer has 151666"):
        GoTMLLM(converted.model, processor, converted.output_projector, converted.output_projector_add)


def test_missing_files_are_named(tiny_mllm_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(MLLMLoadError, match="does not exist"):
        GoTMLLM.from_converted(tmp_path / "nowhere")
    folder = linked_copy(tiny_mllm_folder, tmp_path / "GoT-6B", {"got_projectors.safetensors": None})
    with pytest.raises(MLLMLoadError, match="lacks got_projectors.safetensors"):
        GoTMLLM.from_converted(folder)
    with pytest.raises(MLLMLoadError, match="lacks config.json"):
        GoTMLLM.from_release(tmp_path / "GoT-6B", folder.parent)


def test_projectors_must_fit_the_mllm(converted: GoTMLLM) -> None:
    with pytest.raises(MLLMLoadError, match="takes 128 features but the MLLM's hidden size is 64"):
        GoTMLLM(converted.model, converted.processor, nn.Linear(128, 64), converted.output_projector_add)


def test_moving_drops_the_cache_and_moved_weights_rebuild_it(tiny_mllm_folder: Path) -> None:
    mllm = GoTMLLM.from_converted(tiny_mllm_folder, "fp32")
    first = mllm.reason(PROMPT, max_new_tokens=5)
    again = mllm.reason(PROMPT, max_new_tokens=5)
    assert again.stats.reused_tokens == first.prompt_length - 1 and again.token_ids == first.token_ids
    assert mllm.to("cpu").cached_tokens == 0
    mllm.reason(PROMPT, max_new_tokens=5)
    mllm.model.double().float()  # new storage for every weight, as a model manager's offload and reload gives
    moved = mllm.reason(PROMPT, max_new_tokens=5)
    assert moved.stats.reused_tokens == 0 and moved.token_ids == first.token_ids
