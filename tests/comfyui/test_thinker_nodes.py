"""The GoT VLM Loader and the GoT Prompt Thinker inside a real ComfyUI (in-process, CPU, tiny models): one load
when the VLM is the GoT MLLM's folder, ComfyUI's model management (unload frees the chat caches), the thinker's
outputs, progress and Cancel. The template through the server is in test_workflows.py."""

from __future__ import annotations

import time

import pytest

from got_backend.reasoning.tokens import IM_END
from got_backend.thinking import MARKER
from tests.comfyui.test_mllm_nodes import progress_updates  # noqa: F401 (a fixture)
from tests.steering import ForceToken

PROMPT = "the tower Gustave Eiffel built, at night"


@pytest.fixture(scope="module")
def mm(inproc):
    import comfy.model_management

    return comfy.model_management


@pytest.fixture(scope="module")
def loader(inproc, tiny_vlm_folder, tmp_path_factory):
    """The loader module, with one more LLM folder holding a plain Qwen2.5-VL as `Qwen2.5-VL-3B-Instruct`."""
    import folder_paths

    root = tmp_path_factory.mktemp("vlm_llm")
    (root / "Qwen2.5-VL-3B-Instruct").symlink_to(tiny_vlm_folder, target_is_directory=True)
    folder_paths.add_model_folder_path("LLM", str(root))
    yield inproc.pack_module("nodes.mllm_loader")
    folder_paths.folder_names_and_paths["LLM"][0].remove(str(root))


@pytest.fixture(scope="module")
def thinker(inproc):
    return inproc.pack_module("nodes.thinker").GoTPromptThinker.PREPARE_CLASS_CLONE({}).execute


def run_thinker(thinker, vlm, prompt=PROMPT, max_new_tokens=6, image=None):
    return thinker(vlm, prompt, max_new_tokens, False, 0, 1.0, 1.0, 2000, image=image)


def test_the_got_mllm_folder_is_loaded_once_for_both_loaders(loader, mm):
    mllm = loader.GoTMLLMLoader.execute("GoT-6B", loader.NO_QWEN, "auto")[0]
    vlm = loader.GoTVLMLoader.execute("GoT-6B", "auto")[0]
    assert vlm.patcher is mllm.patcher and vlm.chat.model is mllm.got.model  # one set of weights
    assert loader.GoTVLMLoader.execute("GoT-6B", "auto")[0] is vlm
    assert loader.GoTMLLMLoader.execute("GoT-6B", loader.NO_QWEN, "auto")[0] is mllm
    vlm.loaded().generate("Is it red?", max_new_tokens=2)
    mllm.loaded().reason("a red ball", max_new_tokens=2)
    assert vlm.chat.cached_tokens > 0 and mllm.got.cached_tokens > 0
    mm.unload_all_models()  # "Unload models": both caches on the shared weights are freed
    assert vlm.patcher not in mm.loaded_models()
    assert vlm.chat.cached_tokens == 0 and mllm.got.cached_tokens == 0


def test_a_plain_qwen_folder_is_its_own_managed_model(loader, mm, thinker, progress_updates):
    import comfy.model_patcher

    assert "Qwen2.5-VL-3B-Instruct" in loader.model_folder_names()
    vlm = loader.GoTVLMLoader.execute("Qwen2.5-VL-3B-Instruct", "auto")[0]
    assert isinstance(vlm.patcher, comfy.model_patcher.ModelPatcher) and vlm.patcher.model_size() > 0
    assert {id(p) for p in vlm.chat.model.parameters()} <= {id(p) for p in vlm.patcher.model.parameters()}
    prompt, thinking = run_thinker(thinker, vlm, max_new_tokens=5).args
    assert prompt == PROMPT  # the tiny model writes no marker (only newlines): the original prompt goes on
    assert progress_updates == [(i, 5) for i in range(1, 6)] + [(5, 5)]
    assert vlm.patcher in mm.loaded_models() and vlm.chat.cached_tokens > 0
    vlm.patcher.partially_unload(vlm.patcher.offload_device, 1)  # making room for another model
    assert vlm.chat.cached_tokens == 0


def test_the_thinker_passes_the_revision_on_and_shows_it(loader, thinker, monkeypatch):
    vlm = loader.GoTVLMLoader.execute("Qwen2.5-VL-3B-Instruct", "auto")[0]
    tokenizer = vlm.chat.tokenizer
    answer = "Eiffel built it in Paris.\nRevised Prompt: \"The Eiffel Tower lit up at night, seen from the Seine\""
    forced = ForceToken(1, tokenizer(answer, add_special_tokens=False)["input_ids"]
                        + [tokenizer.convert_tokens_to_ids(IM_END)])
    generate = vlm.chat.generate
    monkeypatch.setattr(vlm.chat, "generate", lambda *a, **k: generate(*a, **k, logits_processor=[forced]))
    output = run_thinker(thinker, vlm, max_new_tokens=200)
    assert output.args == ("The Eiffel Tower lit up at night, seen from the Seine", "Eiffel built it in Paris.")
    assert output.ui.as_dict() == {"text": (f"Eiffel built it in Paris.\n\n{MARKER} The Eiffel Tower lit up at "
                                            "night, seen from the Seine",)}


def test_the_thinker_says_when_the_original_prompt_goes_on(loader, thinker):
    vlm = loader.GoTVLMLoader.execute("Qwen2.5-VL-3B-Instruct", "auto")[0]
    shown = run_thinker(thinker, vlm, max_new_tokens=3).ui.as_dict()["text"][0]
    assert f'no "{MARKER}" in the answer: the original prompt is passed on' in shown
    assert "stopped at max_new_tokens (3)" in shown


def test_the_thinker_takes_an_image_for_an_edit(loader, thinker):
    import torch

    vlm = loader.GoTVLMLoader.execute("Qwen2.5-VL-3B-Instruct", "auto")[0]
    output = run_thinker(thinker, vlm, "add a red hat", max_new_tokens=2, image=torch.rand(1, 40, 60, 3))
    assert output.args[0] == "add a red hat"
    with pytest.raises(Exception, match="batch of 2 images"):
        run_thinker(thinker, vlm, "add a red hat", max_new_tokens=2, image=torch.rand(2, 40, 60, 3))


def test_cancel_interrupts_the_thinker_and_frees_its_cache(loader, thinker, mm, monkeypatch):
    vlm = loader.GoTVLMLoader.execute("Qwen2.5-VL-3B-Instruct", "auto")[0]
    calls = []

    def cancel_after_a_few_tokens():  # like the Cancel button, seen by the thinker's check between tokens
        calls.append(1)
        return len(calls) > 5

    monkeypatch.setattr(mm, "processing_interrupted", cancel_after_a_few_tokens)
    started = time.monotonic()
    with pytest.raises(mm.InterruptProcessingException) as raised:
        run_thinker(thinker, vlm, max_new_tokens=4000)
    assert time.monotonic() - started < 60 and len(calls) == 6
    assert raised.value.__context__ is None and vlm.chat.cached_tokens == 0


def test_an_empty_prompt_and_an_unlisted_folder_are_refused(loader, inproc):
    thinker_node = inproc.pack_module("nodes.thinker").GoTPromptThinker
    assert "empty" in thinker_node.validate_inputs(prompt="  ")
    assert thinker_node.validate_inputs(prompt="a cat") is True
    assert "not one of the choices" in loader.GoTVLMLoader.validate_inputs("../etc")
