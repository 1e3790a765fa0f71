"""The MLLM-side nodes inside a real ComfyUI (in-process, CPU, the tiny converted GoT): the loader and ComfyUI's
model management, the Reasoner (progress, Cancel, bad input), Next Turn and the Chain Parser. The server-level
checks (streaming to the frontend, Cancel over HTTP, the workflow templates) are in test_workflows.py."""

from __future__ import annotations

import threading
import time
import weakref

import pytest
import torch

from got_backend.reasoning.tokens import BOI, ENDOFTEXT, VISION_START

PROMPT = "a red ball left of a blue cube"
CHAIN = ("A <|object_ref_start|>red ball<|object_ref_end|><|box_start|>(100,300),(480,800)<|box_end|> (red) left of a "
         "<|object_ref_start|>blue cube<|object_ref_end|><|box_start|>(520,250),(900,820)<|box_end|> (blue)." + BOI)


@pytest.fixture(scope="module")
def mm(inproc):
    import comfy.model_management

    return comfy.model_management


@pytest.fixture(scope="module")
def loader(inproc):
    return inproc.pack_module("nodes.mllm_loader")


@pytest.fixture(scope="module")
def managed(loader):
    """The tiny converted GoT MLLM through the loader node (ComfyUI's models/LLM lists it as GoT-6B)."""
    return loader.GoTMLLMLoader.execute("GoT-6B", loader.NO_QWEN, "auto")[0]


@pytest.fixture(scope="module")
def nodes(inproc):
    reasoner, chain = inproc.pack_module("nodes.reasoner"), inproc.pack_module("nodes.chain")
    # As the executor runs a node: a class clone holding the hidden inputs (no unique id: no frontend here).
    return {"reason": reasoner.GoTReasoner.PREPARE_CLASS_CLONE({}).execute,
            "next": reasoner.GoTNextTurn.PREPARE_CLASS_CLONE({}).execute,
            "parse": chain.GoTChainParser.PREPARE_CLASS_CLONE({}).execute}


def reason(nodes, managed, prompt=PROMPT, task="text-to-image", max_new_tokens=6, image=None, chain_start=""):
    return nodes["reason"](managed, prompt, task, max_new_tokens, False, 0, 1.0, 1.0, image=image,
                           chain_start=chain_start)


@pytest.fixture
def progress_updates(inproc):
    """Every (value, total, node_id) ComfyUI's progress bar hook receives during a test."""
    import comfy.utils

    calls: list[tuple[int, int]] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    yield calls
    comfy.utils.set_progress_bar_global_hook(previous)


# --- loader -------------------------------------------------------------------------------------------------

def test_loader_puts_the_mllm_under_comfyuis_model_management(inproc, mm, managed):
    import comfy.model_patcher

    patcher = managed.patcher
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    owned = {id(p) for p in patcher.model.parameters()}
    assert {id(p) for p in managed.got.model.parameters()} <= owned
    assert {id(p) for p in managed.got.output_projector.parameters()} <= owned
    assert patcher.model_size() > 0
    got = managed.loaded()
    assert got is managed.got and patcher in mm.loaded_models()
    assert got.dtype == torch.float32  # "auto" on the CPU


def test_dtype_choices(inproc):
    management = inproc.pack_module("nodes.model_management")
    cpu = torch.device("cpu")
    assert [management.mllm_dtype(c, cpu) for c in ("auto", "bf16", "fp16", "fp32")] == \
        [torch.float32, torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(ValueError, match="unknown MLLM dtype"):
        management.mllm_dtype("int8", cpu)


def test_auto_dtype_never_picks_fp16(inproc, monkeypatch):
    """Qwen2.5-VL overflows in fp16: on a GPU without bf16 (T4, V100) "auto" must give fp32."""
    import comfy.model_management

    management = inproc.pack_module("nodes.model_management")
    gpu_without_bf16 = {"should_use_bf16": False, "should_use_fp16": True}
    for name, answer in gpu_without_bf16.items():
        monkeypatch.setattr(comfy.model_management, name, lambda *args, answer=answer, **kwargs: answer)
    assert management.mllm_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(comfy.model_management, "should_use_bf16", lambda *args, **kwargs: True)
    assert management.mllm_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_loader_accepts_only_listed_folders(loader):
    assert loader.model_folder_names() == ["GoT-6B"]
    for name in ("../LLM/GoT-6B", "GoT-6B/..", "/etc", "missing"):
        assert "not one of the choices" in loader.GoTMLLMLoader.validate_inputs(name)
        with pytest.raises(loader.ModelFolderError, match="pick one from the list"):
            loader.resolve_model_folder(name)
    assert loader.GoTMLLMLoader.validate_inputs("GoT-6B") is True
    with pytest.raises(loader.GoTError, match="qwen_folder '../x' is not one of the choices"):  # before loading
        loader.GoTMLLMLoader.execute("GoT-6B", "../x", "auto")
    with pytest.raises(loader.GoTError, match="unknown MLLM dtype 'fp4'"):
        loader.GoTMLLMLoader.execute("GoT-6B", loader.NO_QWEN, "fp4")


@pytest.fixture
def release_llm_folder(inproc, tiny_release, tmp_path):
    """One more LLM model folder holding the raw release (as `GoT-6B-release`) and its Qwen folder."""
    import folder_paths

    root = tmp_path / "LLM"
    root.mkdir()
    (root / "GoT-6B-release").symlink_to(tiny_release.got_release, target_is_directory=True)
    (root / "Qwen2.5-VL-3B-Instruct").symlink_to(tiny_release.qwen_base, target_is_directory=True)
    folder_paths.add_model_folder_path("LLM", str(root))
    yield root
    folder_paths.folder_names_and_paths["LLM"][0].remove(str(root))


def test_loader_reads_the_release_with_its_qwen_folder(loader, nodes, managed, release_llm_folder):
    assert {"GoT-6B-release", "Qwen2.5-VL-3B-Instruct"} <= set(loader.model_folder_names())
    with pytest.raises(loader.ModelFolderError, match="needs the Qwen2.5-VL-3B-Instruct folder"):
        loader.load_got_mllm("GoT-6B-release", loader.NO_QWEN, "auto")
    with pytest.raises(loader.ModelFolderError, match="holds a model but not GoT's"):
        loader.load_got_mllm("Qwen2.5-VL-3B-Instruct", loader.NO_QWEN, "auto")
    released = loader.load_got_mllm("GoT-6B-release", "Qwen2.5-VL-3B-Instruct", "fp32")
    # the same model as the converted folder: the same greedy chain
    assert reason(nodes, released)[1] == reason(nodes, managed)[1]


# --- reasoner -----------------------------------------------------------------------------------------------

def test_reasoner_reports_progress_per_token_and_returns_the_chain(inproc, nodes, managed, progress_updates):
    output = reason(nodes, managed, max_new_tokens=9)
    chain, text = output.args
    assert chain.reasoning.new_tokens == 9 and chain.reasoning.stop == "max_tokens"
    assert text == chain.text == chain.reasoning.text
    assert output.ui.as_dict() == {"text": (text,)}
    assert progress_updates == [(i, 9) for i in range(1, 10)] + [(9, 9)]


def test_chain_start_is_continued_or_used_as_is(nodes, managed):
    finished = reason(nodes, managed, chain_start=CHAIN).args[0]
    assert finished.text == CHAIN and finished.reasoning.new_tokens == 0 and finished.reasoning.ready_for_image
    assert [(o.phrase, o.box, o.color) for o in finished.objects] == [
        ("red ball", (100, 300, 480, 800), "red"), ("blue cube", (520, 250, 900, 820), "blue")]
    start = CHAIN[:CHAIN.index(" left of")]
    continued = reason(nodes, managed, chain_start=start, max_new_tokens=4).args[0]
    assert continued.text.startswith(start) and continued.reasoning.new_tokens == 4


@pytest.fixture(params=["reasoner's check", "server's progress hook"])
def cancel_path(request, inproc, mm):
    """Where Cancel is noticed: the reasoner's own check between tokens, or (in a running server) ComfyUI's
    progress-bar hook, which raises InterruptProcessingException from inside the per-token callback."""
    import comfy.utils

    previous = comfy.utils.PROGRESS_BAR_HOOK
    if request.param == "server's progress hook":
        comfy.utils.set_progress_bar_global_hook(
            lambda value, total, preview, node_id=None: mm.throw_exception_if_processing_interrupted())
    yield request.param
    comfy.utils.set_progress_bar_global_hook(previous)


def test_cancel_interrupts_and_frees_the_kv_cache(mm, nodes, managed, cancel_path):
    decoders = []

    def cancel_once_reasoning():  # like the Cancel button: sets ComfyUI's interrupt flag mid-generation
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not decoders and managed.got._decoder is not None:
                decoders.append(weakref.ref(managed.got._decoder))
            decoder = decoders[0]() if decoders else None
            if decoders and (decoder is None or len(decoder.ids) > 60):  # 20+ tokens after the prompt
                break
            time.sleep(0.005)
        mm.interrupt_current_processing(True)

    managed.got.release_caches()  # so that the decoder the watcher sees is this reasoning's

    watcher = threading.Thread(target=cancel_once_reasoning, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        with pytest.raises(mm.InterruptProcessingException) as raised:
            reason(nodes, managed, max_new_tokens=8000)
    finally:
        mm.interrupt_current_processing(False)
        watcher.join(60)
    assert time.monotonic() - started < 60  # stopped within a few tokens, not after 8000
    assert raised.value.__context__ is None and raised.value.__cause__ is None  # no traceback keeps frames alive
    assert managed.got.cached_tokens == 0
    assert decoders[0]() is None, "the KV cache (its decoder) is still referenced after the cancel"
    assert reason(nodes, managed, max_new_tokens=3).args[0].reasoning.new_tokens == 3  # and the next run works


def test_unloading_frees_the_model_and_its_cache(mm, nodes, managed):
    reason(nodes, managed, max_new_tokens=3)
    assert managed.got.cached_tokens > 0 and managed.patcher in mm.loaded_models()
    mm.unload_all_models()  # what "Unload models" (POST /free) does
    assert managed.patcher not in mm.loaded_models()
    assert managed.got.cached_tokens == 0 and managed.got._decoder is None
    assert reason(nodes, managed, max_new_tokens=3).args[0].reasoning.new_tokens == 3  # loaded again on use
    assert managed.patcher in mm.loaded_models()


def test_making_room_for_another_model_frees_the_cache(mm, nodes, managed):
    reason(nodes, managed, max_new_tokens=3)
    assert managed.got.cached_tokens > 0
    managed.patcher.partially_unload(managed.patcher.offload_device, 1)  # what free_memory() does when it can
    assert managed.got._decoder is None
    assert reason(nodes, managed, max_new_tokens=3).args[0].reasoning.new_tokens == 3  # fully loaded again
    assert not managed.patcher.model.model_lowvram


def test_a_garbage_collected_patcher_leaves_the_cache_alone(inproc, nodes, managed):
    reason(nodes, managed, max_new_tokens=3)
    clone = managed.patcher.clone()  # ComfyUI clones patchers; a clone's __del__ detaches with unpatch_all=False
    del clone
    assert managed.got.cached_tokens > 0


def comfy_image(height: int, width: int, channels: int = 3, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(batch, height, width, channels)


@pytest.mark.parametrize("case, kwargs, error", [
    ("empty prompt", dict(prompt=" \n"), "prompt is empty"),
    ("edit without an image", dict(task="edit"), "needs the image"),
    ("image for text-to-image", dict(image=comfy_image(32, 32)), "task is text-to-image"),
    ("batched image", dict(task="edit", image=comfy_image(32, 32, batch=2)), "batch of 2 images"),
    ("RGBA image", dict(task="edit", image=comfy_image(32, 32, channels=4)), "RGBA image"),
    ("grey image", dict(task="edit", image=comfy_image(32, 32, channels=1)), "grayscale image"),
])
def test_reasoner_bad_input_is_a_clear_error(nodes, managed, case, kwargs, error):
    with pytest.raises(ValueError, match=error):
        reason(nodes, managed, **kwargs)


def test_reasoner_edits_an_image(nodes, managed):
    chain = reason(nodes, managed, task="edit", image=comfy_image(40, 56), chain_start=CHAIN).args[0]
    reasoning = chain.reasoning
    assert reasoning.task == "edit" and len(reasoning.sequence.images) == 1
    assert reasoning.sequence.images[0].image.size == (448, 448)


# --- semantic guidance through the GOT_MLLM -----------------------------------------------------------------

def test_semantic_guidance_of_a_chain_and_of_its_edit(inproc, nodes, managed):
    chain = reason(nodes, managed, chain_start=CHAIN).args[0]
    got = managed.loaded()
    unedited = managed.semantic_guidance(chain)
    torch.testing.assert_close(unedited.context, got.semantic_guidance(chain.reasoning).context)
    edited_text = CHAIN.replace("(blue)", "(gold)")
    edited = nodes["parse"](edited_text, chain).args[0]
    assert edited.reasoning is chain.reasoning and edited.text == edited_text
    guidance = managed.semantic_guidance(edited)
    assert guidance.reused_tokens == 0  # an edited chain is read again in full
    torch.testing.assert_close(guidance.context, got.semantic_guidance(chain.reasoning, edited_text).context)
    assert not torch.allclose(guidance.context, unedited.context)
    typed = nodes["parse"](edited_text, None).args[0]
    types = inproc.pack_module("nodes.types")
    with pytest.raises(types.ChainWithoutReasoningError, match="connect the Reasoner's chain"):
        managed.semantic_guidance(typed)


# --- chain parser -------------------------------------------------------------------------------------------

def test_chain_parser_passes_the_connected_chain_on_unless_edited(nodes, managed):
    chain = reason(nodes, managed, chain_start=CHAIN).args[0]
    for text in ("", "  \n", CHAIN + "\n"):
        assert nodes["parse"](text, chain).args[0] is chain
    output = nodes["parse"](CHAIN.replace("(480,800)", "(480,700)"), chain)
    edited, boxes, text = output.args
    assert edited.objects[0].box == (100, 300, 480, 700) and edited.reasoning is chain.reasoning
    assert boxes.splitlines() == ['1. "red ball" (100,300)-(480,700) red', '2. "blue cube" (520,250)-(900,820) blue']
    assert output.ui.as_dict() == {"text": (boxes,)} and text == edited.text


def test_chain_parser_errors_say_where(inproc, nodes):
    chain_errors = inproc.pack_module("got_backend.ssgm.chain").ChainError
    with pytest.raises(chain_errors, match="there is no chain"):
        nodes["parse"]("", None)
    broken = "A <|object_ref_start|>ball<|object_ref_end|><|box_start|>(10,x),(20,30)<|box_end|> (red)"
    with pytest.raises(chain_errors, match="at character 44") as raised:
        nodes["parse"](broken, None)
    assert raised.value.position == broken.index("<|box_start|>")
    with pytest.raises(chain_errors, match="'blurple', which is not a colour name") as raised:
        nodes["parse"](CHAIN.replace("(blue)", "(blurple)"), None)
    assert raised.value.position == CHAIN.index("<|object_ref_start|>blue cube")


def test_chain_parser_lists_uncoloured_boxes_and_fixes(nodes):
    text = "A <|box_start|>(500,600),(100,200)<|box_end|> and <|object_ref_start|>sky<|object_ref_end|>" \
           "<|box_start|>(0,0),(1000,250)<|box_end|> (lightblue)" + BOI
    boxes = nodes["parse"](text, None).args[1].splitlines()
    assert boxes == ["1. (no phrase) (100,200)-(500,600) (no colour: not drawn)  [corners_reordered, no_color]",
                     '2. "sky" (0,0)-(1000,250) lightblue']


# --- next turn (multi-turn editing) -------------------------------------------------------------------------

def test_next_turn_continues_after_the_rendered_image(nodes, managed):
    first = reason(nodes, managed, task="edit", image=comfy_image(32, 32), chain_start=CHAIN).args[0]
    rendered = comfy_image(64, 48)
    # stopped on <|im_gen_start|>: the conversation continues after the 64 image queries
    second = nodes["next"](managed, first, rendered, 5, False, 0, 1.0, 1.0).args[0]
    queries = managed.got.tokens.image_queries
    before = first.reasoning.sequence.ids + queries
    assert second.reasoning.sequence.ids[:len(before)] == before
    # stopped on <|vision_start|>: the rendered image is shown to the model, and the turn goes on after it
    asking = reason(nodes, managed, task="edit", image=comfy_image(32, 32), chain_start="Step 1." + VISION_START)
    third = nodes["next"](managed, asking.args[0], rendered, 4, False, 0, 1.0, 1.0).args[0]
    assert len(third.reasoning.sequence.images) == 2 and third.reasoning.new_tokens == 4


def test_next_turn_after_the_end_says_the_conversation_is_over(nodes, managed):
    ended = reason(nodes, managed, chain_start="Done." + ENDOFTEXT).args[0]
    with pytest.raises(ValueError, match="nothing to continue"):
        nodes["next"](managed, ended, comfy_image(32, 32), 4, False, 0, 1.0, 1.0)
