"""Reading GoT's MLLM from disk: a converted folder, or the release plus the Qwen2.5-VL-3B-Instruct folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from safetensors.torch import load_file
from torch import nn
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from .checkpoint import GoTWeights, check_mllm_state, read_got_checkpoint
from .qwen_names import load_qwen_config
from .shapes import meta_model
from ..reasoning.semantic import projectors_from_state
from ..reasoning.tokens import add_got_tokens, resolve_got_tokens
from ..errors import GoTError

PROJECTORS_FILE = "got_projectors.safetensors"
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


class MLLMLoadError(GoTError):
    """The MLLM folder is missing files or does not fit GoT."""


@dataclass
class MLLMParts:
    model: nn.Module  # Qwen2_5_VLForConditionalGeneration
    processor: object  # its Qwen2_5_VLProcessor, GoT's tokens in the tokenizer
    output_projector: nn.Linear
    output_projector_add: nn.Linear
    repetition_penalty: float  # from generation_config.json, which `generate` would apply


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.bfloat16/float16/float32 or one of their names ("bf16", "fp16", "fp32", ...)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise MLLMLoadError(f"unsupported MLLM dtype {dtype!r}: use bf16, fp16 or fp32")


def read_converted(folder: str | Path, dtype: torch.dtype | str) -> MLLMParts:
    """A converted `models/LLM/GoT-6B/` folder: a transformers Qwen2.5-VL folder with GoT's tokens in its
    tokenizer, plus `got_projectors.safetensors`."""
    folder = Path(folder)
    _require_files(folder, ("config.json", PROJECTORS_FILE, "preprocessor_config.json"), "converted GoT MLLM")
    dtype = resolve_dtype(dtype)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    resolve_got_tokens(processor.tokenizer)  # refuse a wrong tokenizer before loading gigabytes
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa",
                                                               local_files_only=True, use_safetensors=True,
                                                               **_dtype_argument(dtype))
    projectors = projectors_from_state(load_file(folder / PROJECTORS_FILE))
    return MLLMParts(model, processor, *projectors, _repetition_penalty(folder))


def read_release(got_dir: str | Path, qwen_dir: str | Path, dtype: torch.dtype | str,
                 weights: GoTWeights | None = None) -> MLLMParts:
    """The released GoT-6B folder (pickle shards, read with weights_only) and the user's Qwen2.5-VL-3B-Instruct
    folder (config, tokenizer, processor); GoT's tokens are added to the tokenizer. Pass `weights` when the
    checkpoint was already read (for the UNet and VAE too), so 28 GB are not read twice."""
    qwen_dir = Path(qwen_dir)
    _require_files(qwen_dir, ("config.json", "preprocessor_config.json", "tokenizer_config.json"),
                   "Qwen2.5-VL-3B-Instruct")
    dtype = resolve_dtype(dtype)
    processor = AutoProcessor.from_pretrained(qwen_dir, local_files_only=True)
    add_got_tokens(processor.tokenizer)
    resolve_got_tokens(processor.tokenizer)
    if weights is None:
        weights = read_got_checkpoint(got_dir, qwen_dir)
    config = load_qwen_config(qwen_dir, tie_word_embeddings=weights.tie_word_embeddings)
    check_mllm_state(weights.mllm, meta_model(Qwen2_5_VLForConditionalGeneration._from_config, config), got_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=weights.mllm, attn_implementation="sdpa", **_dtype_argument(dtype))
    state = {f"{part}.{key}": value for part in ("output_projector", "output_projector_add")
             for key, value in getattr(weights, part).items()}
    return MLLMParts(model, processor, *projectors_from_state(state), _repetition_penalty(qwen_dir))


def _dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype keyword: `dtype` from transformers 4.56, `torch_dtype` before."""
    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def _repetition_penalty(folder: Path) -> float:
    path = folder / "generation_config.json"
    if not path.is_file():
        return 1.0
    return float(json.loads(path.read_text()).get("repetition_penalty", 1.0))


def _require_files(folder: Path, names: Sequence[str], what: str) -> None:
    if not folder.is_dir():
        raise MLLMLoadError(f"{what} folder {folder} does not exist")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise MLLMLoadError(f"{what} folder {folder} lacks {', '.join(missing)}")
