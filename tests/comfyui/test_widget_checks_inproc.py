"""Issue 13's widget ranges on the GoT Plan Editor and the GoT Prompt Thinker, inside a real ComfyUI (in-process,
CPU, the tiny converted GoT): a size or number from a link (which ComfyUI does not check) outside its widget's
range is a GoTError naming the node and the input, raised before any model is loaded."""

from __future__ import annotations

import math

import pytest

CHAIN = ("A <|object_ref_start|>red apple<|object_ref_end|><|box_start|>(100,300),(480,800)<|box_end|> (red)."
         "<|im_gen_start|>")


@pytest.fixture(scope="module")
def got_error(inproc) -> type[Exception]:
    return inproc.pack_module("got_backend.errors").GoTError  # the pack's own, as ComfyUI loaded it


def test_the_plan_editor_checks_its_canvas_size(inproc, got_error):
    editor = inproc.pack_module("nodes.plan_editor").GoTPlanEditor.PREPARE_CLASS_CLONE({})
    chain = inproc.pack_module("nodes.types").typed_chain(CHAIN, None)
    for width, height, phrase in [(100_000, 64, "width 100000 is above GoT's limit of 8192"),
                                  (96, 8, "height 8 is below the widget's minimum of 64"),
                                  (8192, 8192, "above GoT's limit of 16,777,216")]:
        with pytest.raises(got_error, match=f"^GoT Plan Editor: .*{phrase}"):
            editor.execute(chain, "", "", width, height)
    message = editor.execute(chain, "", "", 96, 64).ui["got_plan"][0]
    assert (message["width"], message["height"], message["plan"]) == (96, 64, CHAIN)


def test_the_thinker_checks_its_numbers_before_loading_the_model(inproc, got_error):
    import comfy.model_management as mm

    loader = inproc.pack_module("nodes.mllm_loader")
    thinker = inproc.pack_module("nodes.thinker").GoTPromptThinker.PREPARE_CLASS_CLONE({})
    vlm = loader.GoTVLMLoader.execute("GoT-6B", "auto")[0]
    mm.unload_all_models()
    good = dict(max_new_tokens=4, sampling=False, seed=0, temperature=1.0, top_p=1.0, max_revision_chars=2000)
    for name, value in [("max_revision_chars", 5), ("max_revision_chars", 10**9), ("temperature", math.nan),
                        ("max_new_tokens", 100_000), ("top_p", 1.5)]:
        with pytest.raises(got_error, match=f"^GoT Prompt Thinker: {name} is .*the widget's range"):
            thinker.execute(vlm, "a red ball", **{**good, name: value})
        assert vlm.patcher not in mm.loaded_models()  # refused before the model was loaded
    prompt, thinking = thinker.execute(vlm, "a red ball", **good).args
    assert prompt == "a red ball" and vlm.patcher in mm.loaded_models()
