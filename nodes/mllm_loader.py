"""GoT MLLM Loader (the reasoning MLLM) and GoT VLM Loader (any Qwen2.5-VL as a chat model) from ComfyUI's
`models/LLM` folder, under ComfyUI's model management. The two loaders on the same folder and dtype give the same
weights, loaded once (`model_management.shared_model`).

Model folders are chosen from lists, never typed: a shared workflow can only name a folder directly inside one
of ComfyUI's LLM model folders (models/LLM, or what extra_model_paths.yaml adds under `LLM`).
"""

from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io

import folder_paths

from ..got_backend.chat import ChatModel
from ..got_backend.reasoning.mllm import GoTMLLM
from ..got_backend.weights.models_dir import PROJECTORS_FILE, QWEN_BASE_NAME, RELEASE_INDEX, mllm_layout
from .comfy_bridge import check_widget_choice, choice_error
from .model_management import DTYPE_CHOICES, ManagedMLLM, ManagedVLM, mllm_devices, mllm_dtype, shared_model
from .types import MLLMSocket, VLMSocket
from ..got_backend.errors import GoTError

LLM_FOLDER = "LLM"
MODEL_MARKERS = ("config.json", RELEASE_INDEX)
NO_QWEN = "(converted: not needed)"


class ModelFolderError(GoTError):
    """A model folder name that is not a model folder inside ComfyUI's LLM folders."""


def register_llm_folder() -> None:
    """Make ComfyUI's models/LLM a model folder (kept if extra_model_paths.yaml already added LLM paths)."""
    folder_paths.add_model_folder_path(LLM_FOLDER, os.path.join(folder_paths.models_dir, LLM_FOLDER))


def _model_folders() -> dict[str, Path]:
    """Folders directly inside the LLM folders that hold a model (config.json or a release index), by name;
    the first LLM folder wins a name found twice. Hidden folders (the converter's staging folder) are not listed."""
    register_llm_folder()
    found: dict[str, Path] = {}
    for root in map(Path, folder_paths.get_folder_paths(LLM_FOLDER)):
        entries = sorted(root.iterdir()) if root.is_dir() else []
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir() and any((entry / marker).is_file() for marker in MODEL_MARKERS):
                found.setdefault(entry.name, entry)
    return found


def model_folder_names() -> list[str]:
    return sorted(_model_folders())


def resolve_model_folder(name: str) -> Path:
    """The folder a listed name stands for; anything else (a path, `..`, a name not listed) is refused."""
    folders = _model_folders()
    if name not in folders:
        raise ModelFolderError(f"{name!r} is not a model folder in ComfyUI's LLM folders "
                               f"({', '.join(folder_paths.get_folder_paths(LLM_FOLDER))}); pick one from the list")
    return folders[name]


def load_got_mllm(name: str, qwen_name: str, dtype_choice: str) -> ManagedMLLM:
    """A converted GoT folder, or the released GoT-6B folder read with the Qwen2.5-VL-3B-Instruct folder."""
    folder = resolve_model_folder(name)
    load_device, offload_device = mllm_devices()
    dtype = mllm_dtype(dtype_choice, load_device)
    layout = mllm_layout(folder)
    if layout == "converted":
        return shared_model((folder,), dtype, lambda: ManagedMLLM(
            GoTMLLM.from_converted(folder, dtype=dtype, device=offload_device), name, load_device, offload_device))
    if layout == "release":
        if qwen_name == NO_QWEN:
            raise ModelFolderError(
                f"{name} is the GoT-6B release (pickle shards), which needs the {QWEN_BASE_NAME} folder for its "
                f"tokenizer and config: choose it in qwen_folder, or convert once with `python -m got_backend.convert`"
                " and pick the converted folder")
        qwen = resolve_model_folder(qwen_name)
        return shared_model((folder, qwen), dtype, lambda: ManagedMLLM(
            GoTMLLM.from_release(folder, qwen, dtype=dtype, device=offload_device), name, load_device,
            offload_device))
    raise ModelFolderError(
        f"{name} holds a model but not GoT's: it has no {PROJECTORS_FILE} (a converted GoT) and no "
        f"{RELEASE_INDEX} (the GoT-6B release). Pick the GoT folder; {QWEN_BASE_NAME} goes in qwen_folder")


def load_vlm(name: str, dtype_choice: str) -> ManagedVLM:
    """Any Qwen2.5-VL folder as a chat model; a converted GoT folder is loaded as the GoT MLLM (shared with the
    GoT MLLM Loader) and used as a chat model."""
    folder = resolve_model_folder(name)
    if mllm_layout(folder) == "converted":
        return load_got_mllm(name, NO_QWEN, dtype_choice).as_chat()
    load_device, offload_device = mllm_devices()
    dtype = mllm_dtype(dtype_choice, load_device)
    return shared_model((folder,), dtype, lambda: ManagedVLM.standalone(
        ChatModel.from_folder(folder, dtype=dtype, device=offload_device), name, load_device, offload_device))


class GoTMLLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        folders = model_folder_names()
        return io.Schema(
            node_id="GoTMLLMLoader",
            display_name="GoT MLLM Loader",
            category="GoT/loaders",
            description="Loads GoT's reasoning MLLM (Qwen2.5-VL-3B with GoT's LoRA merged, plus the two projectors "
                        "that turn its hidden states into the UNet's semantic tokens) from models/LLM. ComfyUI "
                        "manages its memory like any model: it is moved to the GPU only while it reasons, and "
                        "'Unload models' frees it.",
            inputs=[
                io.Combo.Input("model_folder", options=folders,
                               tooltip="The GoT MLLM folder in models/LLM: a converted folder (with "
                                       f"{PROJECTORS_FILE}, from `python -m got_backend.convert`) or the raw "
                                       "GoT-6B release (pytorch_model.bin.index.json and 5 .bin shards)."),
                io.Combo.Input("qwen_folder", options=[NO_QWEN, *folders], default=NO_QWEN,
                               tooltip=f"Only for the raw GoT-6B release: the {QWEN_BASE_NAME} folder in models/LLM "
                                       "(tokenizer, processor and config). A converted folder already has them."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs that support it, else fp32. Avoid "
                                       "fp16: Qwen2.5-VL overflows in fp16 and writes garbage chains."),
            ],
            outputs=[MLLMSocket.Output("mllm", display_name="mllm", tooltip="The GoT MLLM, for the GoT Reasoner and the GoT SSGM "
                                                    "Conditioner.")],
        )

    # ComfyUI files validate_inputs' message under each of its arguments, so it takes only the folder (the name
    # a shared workflow most often gets wrong): an unlisted folder is reported once, under model_folder.
    # qwen_folder and dtype (model_management.mllm_dtype) are checked when the node runs, before anything loads
    # (0.8.0 also checks them at queue time).
    @classmethod
    def validate_inputs(cls, model_folder: str) -> bool | str:
        """At queue time: a listed folder (ComfyUI 0.3.64 does not check V3 Combo values)."""
        return choice_error("model_folder", model_folder, model_folder_names()) or True

    @classmethod
    def execute(cls, model_folder: str, qwen_folder: str, dtype: str) -> io.NodeOutput:
        check_widget_choice("GoT MLLM Loader", "qwen_folder", qwen_folder, [NO_QWEN, *model_folder_names()])
        return io.NodeOutput(load_got_mllm(model_folder, qwen_folder, dtype))


class GoTVLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTVLMLoader",
            display_name="GoT VLM Loader",
            category="GoT/loaders",
            description="Loads any Qwen2.5-VL folder from models/LLM as a chat model, for the GoT Prompt Thinker "
                        "(and the judge): the base Qwen2.5-VL-3B-Instruct, a Think-Then-Generate-tuned Hugging Face "
                        "folder, or the converted GoT MLLM. Naming the same folder and dtype as the GoT MLLM Loader "
                        "shares its weights (loaded once). ComfyUI manages its memory like any model.",
            inputs=[
                io.Combo.Input("model_folder", options=model_folder_names(),
                               tooltip="A Qwen2.5-VL folder in models/LLM with safetensors weights (config.json "
                                       "model_type qwen2_5_vl). The raw GoT-6B release (pickle shards) is not "
                                       "read here: convert it once, or use the converted folder."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs that support it, else fp32. Avoid "
                                       "fp16: Qwen2.5-VL overflows in fp16."),
            ],
            outputs=[VLMSocket.Output("vlm", display_name="vlm",
                                   tooltip="The chat model, for the GoT Prompt Thinker.")],
        )

    @classmethod
    def validate_inputs(cls, model_folder: str) -> bool | str:
        """At queue time: a listed folder, as the GoT MLLM Loader checks it."""
        return GoTMLLMLoader.validate_inputs(model_folder)

    @classmethod
    def execute(cls, model_folder: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(load_vlm(model_folder, dtype))


NODES: list[type[io.ComfyNode]] = [GoTMLLMLoader, GoTVLMLoader]
