"""Finding GoT's files in a ComfyUI-style models folder and loading the UNet and VAE from them.

Two layouts are accepted, converted (`python -m got_backend.convert`) or as released; `layout_help` says
which files go where (README, "Model files"), `mllm_layout` tells the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .diffusers_configs import GOT_IN_CHANNELS, ConfigInferenceError, infer_unet_config, infer_vae_config
from .shapes import meta_model, state_mismatch, state_shapes
from .state_dicts import RECONVERT, CheckpointError, load_tensor_file, parse_json_object
from ..errors import GoTError

DEFAULT_NAME = "GoT-6B"
QWEN_BASE_NAME = "Qwen2.5-VL-3B-Instruct"
RELEASE_INDEX = "pytorch_model.bin.index.json"
PROJECTORS_FILE = "got_projectors.safetensors"  # written by the converter: it marks a converted folder
RELEASE_URL = "https://huggingface.co/LucasFang/GoT-6B"
QWEN_URL = f"https://huggingface.co/Qwen/{QWEN_BASE_NAME}"
RELEASE_FILES = f"{RELEASE_INDEX} + pytorch_model-0000N-of-00005.bin"
SDXL_VAE_NAMES = ("sdxl_vae.safetensors", "sdxl-vae-fp16-fix.safetensors")
LDM_VAE_MARKER = "encoder.down.0.block.0.conv1.weight"

DiffusersModel = TypeVar("DiffusersModel", UNet2DConditionModel, AutoencoderKL)


class ModelFilesError(GoTError):
    """GoT's files are missing from the models folder, or are not what their names say."""


@dataclass(frozen=True)
class GoTFiles:
    """Where GoT's parts are. A release has its UNet and VAE inside `mllm` (the checkpoint folder)."""

    mllm: Path  # converted LLM folder, or the released GoT-6B folder
    qwen_base: Path | None  # the Qwen2.5-VL-3B-Instruct folder (release only)
    unet: Path | None  # None: inside the release
    vae: Path | None  # None: inside the release

    @property
    def released(self) -> bool:
        return self.qwen_base is not None


def converted_paths(models_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """Where the converter writes GoT named `name` and where `locate` finds it: MLLM folder, UNet, VAE."""
    return (models_dir / "LLM" / name, models_dir / "diffusion_models" / f"{name}-unet.safetensors",
            models_dir / "vae" / f"{name}-vae.safetensors")


def mllm_layout(folder: Path) -> Literal["converted", "release"] | None:
    """Which layout an MLLM folder holds: the converter's, the release's, or neither (None)."""
    if (folder / PROJECTORS_FILE).is_file() and (folder / "config.json").is_file():
        return "converted"
    if (folder / RELEASE_INDEX).is_file():
        return "release"
    return None


def layout_help(models_dir: Path, name: str = DEFAULT_NAME) -> str:
    """Which files go where in a models folder, in both layouts (for error messages and --help)."""
    llm, unet, vae = converted_paths(Path(), name)
    return (f"GoT's files go into {models_dir} like this (ComfyUI's models folder):\n"
            f"  either converted (python -m got_backend.convert --release {DEFAULT_NAME} --qwen {QWEN_BASE_NAME} "
            f"--models {models_dir}):\n"
            f"    {str(llm) + '/':42} config.json, model.safetensors, {PROJECTORS_FILE}, tokenizer files\n"
            f"    {unet}\n"
            f"    {vae}  (or SDXL's vae/{SDXL_VAE_NAMES[0]})\n"
            f"  or as released ({RELEASE_URL}, {QWEN_URL}):\n"
            f"    {str(llm) + '/':42} {RELEASE_FILES}\n"
            f"    {'LLM/' + QWEN_BASE_NAME + '/':42} config.json, tokenizer and processor files")


def locate(models_dir: str | Path, name: str = DEFAULT_NAME, vae: str | None = None) -> GoTFiles:
    """GoT's files under `models_dir`; `vae` picks a file in `vae/` by name (default: `{name}-vae`, then
    SDXL's). Raises ModelFilesError saying which files go where when something is missing."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ModelFilesError(f"the models folder {models_dir} does not exist.\n{layout_help(models_dir, name)}")
    llm, unet, _ = converted_paths(models_dir, name)
    layout = mllm_layout(llm)
    if layout == "converted":
        if not unet.is_file():
            raise ModelFilesError(f"found the converted MLLM {llm} but not its UNet {unet}.\n"
                                  + layout_help(models_dir, name))
        return GoTFiles(llm, None, unet, _find_vae(models_dir, name, vae))
    if layout == "release":
        base = models_dir / "LLM" / QWEN_BASE_NAME
        if not (base / "config.json").is_file():
            raise ModelFilesError(f"found the released GoT checkpoint {llm} but not the {QWEN_BASE_NAME} folder "
                                  f"{base} it needs (tokenizer, processor, config).\n" + layout_help(models_dir, name))
        return GoTFiles(llm, base, None, _find_vae(models_dir, name, vae) if vae else None)
    raise ModelFilesError(f"no GoT model named {name!r} in {models_dir}: {llm} holds neither a converted model "
                          f"({PROJECTORS_FILE}) nor the release ({RELEASE_INDEX}).\n" + layout_help(models_dir, name))


def _find_vae(models_dir: Path, name: str, chosen: str | None) -> Path:
    default = converted_paths(models_dir, name)[2]
    folder = default.parent
    candidates = (chosen,) if chosen else (default.name, *SDXL_VAE_NAMES)
    for candidate in candidates:
        path = folder / candidate
        if path.is_file() and path.parent == folder:
            return path
    raise ModelFilesError(f"no VAE in {folder}: looked for {', '.join(candidates)}. GoT uses SDXL's VAE; "
                          f"put {SDXL_VAE_NAMES[0]} (or the converter's {default.name}) there.\n"
                          + layout_help(models_dir, name))


def _tensors_and_config(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        tensors = load_tensor_file(path)
        config = None
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                text = (handle.metadata() or {}).get("config")
            config = parse_json_object(text, f"the config in {path}'s safetensors metadata", RECONVERT) if text else None
    except CheckpointError as err:
        raise ModelFilesError(str(err)) from err
    return tensors, config


def model_from_state(model_class: type[DiffusersModel], state: dict[str, torch.Tensor], config: dict,
                     dtype: torch.dtype, device: torch.device | str, source: str) -> DiffusersModel:
    """A diffusers `model_class` of `config` holding `state` exactly (strict), in `dtype` on `device`, for
    inference; `source` names where the state came from in errors."""
    model = meta_model(model_class, **config)
    _load_strict(model, state, source, dtype)
    return model.to(device).eval().requires_grad_(False)


def unet_from_state(state: dict[str, torch.Tensor], config: dict, dtype: torch.dtype,
                    device: torch.device | str, source: str = "the UNet") -> UNet2DConditionModel:
    return model_from_state(UNet2DConditionModel, state, config, dtype, device, source)


def vae_from_state(state: dict[str, torch.Tensor], config: dict, dtype: torch.dtype,
                   device: torch.device | str, source: str = "the VAE") -> AutoencoderKL:
    return model_from_state(AutoencoderKL, state, config, dtype, device, source)


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> None:
    """Put `state`'s tensors (cast to `dtype`) into a model built on the meta device; all or nothing."""
    mismatch = state_mismatch(state_shapes(model.state_dict()), state)
    if mismatch:
        wrong = [f"{k} {tuple(found)} (needs {tuple(needed)})" for k, found, needed in mismatch.misshaped]
        problems = [f"{len(items)} {what}: {', '.join(items[:6])}" for what, items in
                    (("missing", mismatch.missing), ("unexpected", mismatch.unexpected), ("mis-shaped", wrong))
                    if items]
        raise ModelFilesError(f"{source} does not fit a {type(model).__name__} of its config; "
                              + "; ".join(problems))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


def load_unet(path: str | Path, dtype: torch.dtype, device: torch.device | str) -> UNet2DConditionModel:
    """The converter's UNet file (diffusers names; config in the metadata, else read off the shapes)."""
    path = Path(path)
    state, config = _tensors_and_config(path)
    try:
        config = config or infer_unet_config(state_shapes(state))
    except ConfigInferenceError as err:
        raise ModelFilesError(f"{path} is not a GoT UNet in diffusers names: {err}") from err
    if config.get("in_channels") != GOT_IN_CHANNELS:
        raise ModelFilesError(f"{path} is a UNet with {config.get('in_channels')} input channels; GoT's has "
                              f"{GOT_IN_CHANNELS} (noisy, reference and spatial latents). Use the converter's "
                              f"{converted_paths(Path(), DEFAULT_NAME)[1].name}.")
    return unet_from_state(state, config, dtype, device, str(path))


def load_vae(path: str | Path, dtype: torch.dtype, device: torch.device | str) -> AutoencoderKL:
    """A VAE file in diffusers names (the converter's) or in the original SDXL names (`sdxl_vae.safetensors`)."""
    path = Path(path)
    state, config = _tensors_and_config(path)
    if LDM_VAE_MARKER in state:
        state = _diffusers_vae_state(state)
        config = None
    try:
        config = config or infer_vae_config(state_shapes(state))
    except ConfigInferenceError as err:
        raise ModelFilesError(f"{path} is not an SDXL-structured VAE: {err}") from err
    return vae_from_state(state, config, dtype, device, str(path))


def _diffusers_vae_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL's original VAE names (encoder.down.N.block...) -> diffusers names, with diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    levels = len({k.split(".")[2] for k in state if k.split(".")[:2] == ["encoder", "down"]})
    layout = {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    return convert_ldm_vae_checkpoint(state, layout)
