"""Reading GoT's MLLM from disk: a converted folder, or the release plus the Qwen2.5-VL-3B-Instruct folder."""

from __future__ import annotations

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
from .models_dir import PROJECTORS_FILE
from .qwen_names import load_qwen_config
from .shapes import meta_model
from .state_dicts import CheckpointError, check_json_files, check_safetensors_file, read_json_object, shard_files
from ..reasoning.tokens import add_got_tokens, resolve_got_tokens
from ..errors import GoTError

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


CONVERT_COMMAND = ("python -m got_backend.convert --release <GoT-6B folder> --qwen <Qwen2.5-VL-3B-Instruct folder> "
                   "--models <ComfyUI/models> --overwrite")
REBUILD_CONVERTED = f"Rebuild the converted folder from the GoT-6B release with `{CONVERT_COMMAND}`."
REBUILD_ANY = (f"Download the folder's files again, or, for a converted GoT MLLM, rebuild it with "
               f"`{CONVERT_COMMAND}`.")
REDOWNLOAD_QWEN = ("Download the Qwen2.5-VL-3B-Instruct folder's files again (its config, tokenizer and processor "
                   "files; the converter needs them as released).")
LISTED_KEYS = 8


class MLLMLoadError(GoTError):
    """The MLLM folder is missing files or does not fit GoT."""


@dataclass
class MLLMParts:
    model: nn.Module  # Qwen2_5_VLForConditionalGeneration
    processor: object  # its Qwen2_5_VLProcessor, GoT's tokens in the tokenizer
    output_projector: nn.Linear
    output_projector_add: nn.Linear
    repetition_penalty: float  # from generation_config.json, which `generate` would apply
    eos_token_ids: tuple[int, ...] = ()  # generation_config.json's eos list: where `generate` stops (docs/ALGORITHM.md §7)


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
    _check_json(folder, REBUILD_CONVERTED)
    projectors = projectors_from_state(_projector_state(folder / PROJECTORS_FILE))
    processor = _processor(folder, REBUILD_CONVERTED)
    resolve_got_tokens(processor.tokenizer)  # refuse a wrong tokenizer before loading gigabytes
    model = _from_folder(folder, dtype, REBUILD_CONVERTED)
    return MLLMParts(model, processor, *projectors, _repetition_penalty(folder, REBUILD_CONVERTED),
                     _eos_token_ids(folder, REBUILD_CONVERTED))


def read_release(got_dir: str | Path, qwen_dir: str | Path, dtype: torch.dtype | str,
                 weights: GoTWeights | None = None) -> MLLMParts:
    """The released GoT-6B folder (pickle shards, read with weights_only) and the user's Qwen2.5-VL-3B-Instruct
    folder (config, tokenizer, processor); GoT's tokens are added to the tokenizer. Pass `weights` when the
    checkpoint was already read (for the UNet and VAE too), so 28 GB are not read twice."""
    qwen_dir = Path(qwen_dir)
    _require_files(qwen_dir, ("config.json", "preprocessor_config.json", "tokenizer_config.json"),
                   "Qwen2.5-VL-3B-Instruct")
    dtype = resolve_dtype(dtype)
    _check_json(qwen_dir, REDOWNLOAD_QWEN)
    processor = _processor(qwen_dir, REDOWNLOAD_QWEN)
    add_got_tokens(processor.tokenizer)
    resolve_got_tokens(processor.tokenizer)
    if weights is None:
        weights = read_got_checkpoint(got_dir, qwen_dir)
    config = load_qwen_config(qwen_dir, tie_word_embeddings=weights.tie_word_embeddings)
    check_mllm_state(weights.mllm, meta_model(Qwen2_5_VLForConditionalGeneration._from_config, config), got_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=weights.mllm, attn_implementation="sdpa", **dtype_argument(dtype))
    state = {f"{part}.{key}": value for part in ("output_projector", "output_projector_add")
             for key, value in getattr(weights, part).items()}
    return MLLMParts(model, processor, *projectors_from_state(state), _repetition_penalty(qwen_dir, REDOWNLOAD_QWEN),
                     _eos_token_ids(qwen_dir, REDOWNLOAD_QWEN))


@dataclass
class VLMParts:
    """Any Qwen2.5-VL folder as a chat model (no GoT projectors, no GoT tokens needed)."""

    model: nn.Module  # Qwen2_5_VLForConditionalGeneration
    processor: object  # its Qwen2_5_VLProcessor
    repetition_penalty: float
    eos_token_ids: tuple[int, ...]


VLM_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def read_vlm(folder: str | Path, dtype: torch.dtype | str) -> VLMParts:
    """A Hugging Face Qwen2.5-VL folder (the base Qwen2.5-VL-3B-Instruct, a converted GoT MLLM, a
    Think-Then-Generate-tuned encoder): safetensors weights only, nothing run from the folder."""
    folder = Path(folder)
    _require_files(folder, ("config.json", "preprocessor_config.json"), "Qwen2.5-VL")
    _check_json(folder, REBUILD_ANY)
    model_type = read_json_object(folder / "config.json", REBUILD_ANY).get("model_type")
    if model_type != "qwen2_5_vl":
        raise MLLMLoadError(f"{folder} holds a {model_type!r} model, not a Qwen2.5-VL one (config.json "
                            "model_type 'qwen2_5_vl'): pick a Qwen2.5-VL folder")
    if not any((folder / name).is_file() for name in VLM_WEIGHTS):
        raise MLLMLoadError(f"{folder} has no safetensors weights ({' or '.join(VLM_WEIGHTS)}); pickle "
                            "checkpoints are not read here. A GoT-6B release: convert it once with `python -m "
                            "got_backend.convert`, or load it with the GoT MLLM Loader")
    dtype = resolve_dtype(dtype)
    processor = _processor(folder, REBUILD_ANY)
    return VLMParts(_from_folder(folder, dtype), processor, _repetition_penalty(folder, REBUILD_ANY),
                    _eos_token_ids(folder, REBUILD_ANY))


def _from_folder(folder: Path, dtype: torch.dtype, fix: str = REBUILD_ANY) -> nn.Module:
    """The Qwen2.5-VL model of a local folder: safetensors, no remote code, SDPA attention. As for the release,
    every tensor must be placed: weight files that are damaged, miss tensors, hold extra ones or tensors of the
    wrong shape are an MLLMLoadError naming the files and keys and saying how to `fix` them (transformers
    would initialise the missing ones randomly and only log it)."""
    files = _checked_weight_files(folder, fix)
    names = ", ".join(f.name for f in files)
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            folder, attn_implementation="sdpa", local_files_only=True, use_safetensors=True,
            output_loading_info=True, **dtype_argument(dtype))
    except RuntimeError as err:  # transformers refuses tensors of the wrong shape (naming them in its log)
        what = ("some tensors have the wrong shape (the server log's load report names them)"
                if "mismatched" in str(err) else str(err).splitlines()[0][:300])
        raise MLLMLoadError(f"the weights in {folder} ({names}) do not fit the model its config.json describes: "
                            f"{what}. {fix}") from None
    problems = [f"{len(info[kind])} {what} ({', '.join(sorted(map(str, info[kind]))[:LISTED_KEYS])})"
                for kind, what in (("missing_keys", "tensors the model needs are missing"),
                                   ("unexpected_keys", "tensors have no place in the model"),
                                   ("mismatched_keys", "tensors have the wrong shape")) if info.get(kind)]
    if problems:
        raise MLLMLoadError(f"the weights in {folder} ({names}) do not fill the model its config.json describes: "
                            + "; ".join(problems) + f". Nothing was initialised at random. {fix}")
    return model


def _checked_weight_files(folder: Path, fix: str) -> list[Path]:
    """The folder's safetensors weight files (one, or an index and its shards, which must lie in the folder),
    each checked to be complete, well-formed safetensors."""
    index = folder / VLM_WEIGHTS[1]
    try:
        files = shard_files(index)[0] if index.is_file() else [folder / VLM_WEIGHTS[0]]
        for file in files:
            if not file.is_file():
                raise MLLMLoadError(f"{folder} lacks its weights file {file.name}. {fix}")
            check_safetensors_file(file, fix)
    except CheckpointError as err:
        raise MLLMLoadError(str(err)) from None
    return files


def _check_json(folder: Path, fix: str) -> None:
    try:
        check_json_files(folder, fix)
    except CheckpointError as err:
        raise MLLMLoadError(str(err)) from None


def _processor(folder: Path, fix: str):
    """The folder's Qwen2.5-VL processor (tokenizer + image processor). Its JSON files have parsed; what the
    tokenizers library or transformers still refuses (a tokenizer.json of the wrong structure, a processor config
    with impossible values) is named with the folder and the fix."""
    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 (tokenizers raises its own Exception types; none is a GoT bug)
        first = (str(err).splitlines() or [type(err).__name__])[0][:300]
        raise MLLMLoadError(f"the tokenizer or image processor files in {folder} (tokenizer.json, "
                            f"tokenizer_config.json, preprocessor_config.json) cannot be loaded: {first}. {fix}") from None


def _projector_state(file: Path) -> dict[str, torch.Tensor]:
    """GoT's two projectors (weight and bias each) from `got_projectors.safetensors`, checked to be complete."""
    try:
        check_safetensors_file(file, REBUILD_CONVERTED)
    except CheckpointError as err:
        raise MLLMLoadError(str(err)) from None
    state = load_file(file)
    expected = {f"{part}.{kind}" for part in ("output_projector", "output_projector_add") for kind in ("weight", "bias")}
    wrong = [f"{name} {tuple(state[name].shape)}" for name in expected & state.keys()
             if state[name].dim() != (2 if name.endswith("weight") else 1)]
    if state.keys() != expected or wrong:
        missing, extra = sorted(expected - state.keys()), sorted(state.keys() - expected)
        raise MLLMLoadError(f"{file} does not hold GoT's two projectors: missing {missing or 'none'}, unexpected "
                            f"{extra[:LISTED_KEYS] or 'none'}, wrong shapes {wrong or 'none'}. {REBUILD_CONVERTED}")
    return state


def projectors_from_state(state: dict[str, torch.Tensor],
                          dtype: torch.dtype = torch.float32) -> tuple[nn.Linear, nn.Linear]:
    """`output_projector` and `output_projector_add` from a state dict with keys
    `output_projector.{weight,bias}` and `output_projector_add.{weight,bias}`."""
    layers = []
    for name in ("output_projector", "output_projector_add"):
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=True, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        layers.append(layer.eval().requires_grad_(False))
    return layers[0], layers[1]


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype keyword: `dtype` from transformers 4.56, `torch_dtype` before."""
    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def _generation_config(folder: Path, fix: str) -> dict:
    path = folder / "generation_config.json"
    return read_json_object(path, fix) if path.is_file() else {}


def _repetition_penalty(folder: Path, fix: str) -> float:
    value = _generation_config(folder, fix).get("repetition_penalty", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MLLMLoadError(f"{folder / 'generation_config.json'}: repetition_penalty is {value!r}, not a positive "
                            f"number (the released value is 1.05). {fix}")
    return float(value)


def _eos_token_ids(folder: Path, fix: str) -> tuple[int, ...]:
    """The eos ids `generate` stops on with this folder's generation config (one id or a list)."""
    eos = _generation_config(folder, fix).get("eos_token_id", ())
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise MLLMLoadError(f"{folder / 'generation_config.json'}: eos_token_id is {eos!r}, not a token id or a "
                            f"list of them (the released one is [151645, 151643]). {fix}")
    return tuple(ids)


def _require_files(folder: Path, names: Sequence[str], what: str) -> None:
    if not folder.is_dir():
        raise MLLMLoadError(f"{what} folder {folder} does not exist")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise MLLMLoadError(f"{what} folder {folder} lacks {', '.join(missing)}")
