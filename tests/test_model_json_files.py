"""Issue 19.4: every JSON file of a model folder goes through the one reader (weights.state_dicts.read_json_object),
for every loader that reads one: the VLM folder (GoT VLM Loader), the converted GoT MLLM and the release's
Qwen2.5-VL-3B-Instruct folder (GoT MLLM Loader), and the converter. A damaged file is a GoTError that names it,
says where it stops parsing and how to fix it, before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from got_backend.chat import ChatModel
from got_backend.convert import ConversionError, convert_release
from got_backend.errors import GoTError
from got_backend.reasoning.mllm import GoTMLLM
from got_backend.testing.fixtures import TinyRelease
from tests.test_mllm_loading import linked_copy

FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         "preprocessor_config.json")
DAMAGE = {"truncated": ('{"model_type": "qwen2_5_vl", ', "is not valid JSON (line 1, column 30"),
          "a list": ("[1, 2, 3]", "holds a JSON list, not the object"),
          "binary": ("\udcff\x00garbage", None)}
FIXES = {"vlm": "Download the folder's files again", "converted": "python -m got_backend.convert",
         "release": "Download the Qwen2.5-VL-3B-Instruct folder's files again",
         "converter": "Download the Qwen2.5-VL-3B-Instruct folder's files again"}


def load(reader: str, folder: Path, release: TinyRelease, models: Path) -> None:
    if reader == "vlm":
        ChatModel.from_folder(folder, "fp32")
    elif reader == "converted":
        GoTMLLM.from_converted(folder, "fp32")
    elif reader == "release":
        GoTMLLM.from_release(release.got_release, folder, "fp32")
    else:
        convert_release(release.got_release, folder, models)


def folder_of(reader: str, tiny_vlm_folder: Path, tiny_mllm_folder: Path, release: TinyRelease) -> Path:
    return {"vlm": tiny_vlm_folder, "converted": tiny_mllm_folder}.get(reader, release.qwen_base)


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("reader", FIXES)
def test_a_damaged_json_file_is_named_with_the_fix(reader: str, name: str, damage: str, tiny_vlm_folder: Path,
                                                   tiny_mllm_folder: Path, tiny_release: TinyRelease,
                                                   tmp_path: Path) -> None:
    text, what = DAMAGE[damage]
    source = folder_of(reader, tiny_vlm_folder, tiny_mllm_folder, tiny_release)
    folder = linked_copy(source, tmp_path / source.name, {name: None})
    (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    (tmp_path / "models").mkdir()
    with pytest.raises(GoTError) as caught:
        load(reader, folder, tiny_release, tmp_path / "models")
    message = str(caught.value)
    assert str(folder / name) in message and FIXES[reader] in message, message
    assert (what or "cannot read") in message and (what is not None or "as UTF-8 text" in message), message
    if reader == "converter":
        assert isinstance(caught.value, ConversionError) and not any((tmp_path / "models").iterdir())


def test_a_tokenizer_json_of_the_wrong_structure_names_the_folder(tiny_vlm_folder: Path, tmp_path: Path) -> None:
    folder = linked_copy(tiny_vlm_folder, tmp_path / "vlm", {"tokenizer.json": json.dumps({"model": {"type": 7}})})
    with pytest.raises(GoTError, match=r"the tokenizer or image processor files in .*vlm .*cannot be loaded: .*"
                                       r"Download the folder's files again"):
        ChatModel.from_folder(folder, "fp32")


@pytest.mark.parametrize("setting, value, what", [("repetition_penalty", "strong", "not a positive number"),
                                                  ("repetition_penalty", 0, "not a positive number"),
                                                  ("eos_token_id", "<|im_end|>", "not a token id")])
def test_generation_config_values_are_checked(setting: str, value: object, what: str, tiny_vlm_folder: Path,
                                              tmp_path: Path) -> None:
    config = {**json.loads((tiny_vlm_folder / "generation_config.json").read_text()), setting: value}
    folder = linked_copy(tiny_vlm_folder, tmp_path / "vlm", {"generation_config.json": json.dumps(config)})
    with pytest.raises(GoTError, match=f"generation_config.json: {setting} is .*{what}"):
        ChatModel.from_folder(folder, "fp32")
