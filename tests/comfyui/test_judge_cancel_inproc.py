"""Cancel during the GoT Judge inside ComfyUI (in-process, CPU, tiny models): it stops at the next batch of
questions and keeps nothing of the batch alive (the images as the judge sees them, their pixel tensors), the
judge stays under ComfyUI's model management (unload frees it), and the next judging works. The latency through
a real server is measured in test_judge_server.py."""

from __future__ import annotations

import gc

import pytest
import torch

from got_backend.chat.model import FIRST_TOKEN_BATCH

PROMPT = "a red apple and a green pear"


def alive_views(inproc) -> int:
    """The images as a judge sees them (the pack's own VisionInput: ComfyUI loads it as `comfyui_got`) alive."""
    view = inproc.pack_module("got_backend.reasoning.conversation").VisionInput
    gc.collect()
    return sum(type(thing) is view for thing in gc.get_objects())


def test_cancel_stops_the_judge_between_batches_and_frees_what_it_held(inproc, monkeypatch):
    import comfy.model_management as mm

    vlm = inproc.pack_module("nodes.mllm_loader").GoTVLMLoader.execute("GoT-6B", "auto")[0]
    node = inproc.pack_module("nodes.judge").GoTJudgeNode.PREPARE_CLASS_CLONE({})
    images = torch.rand(4 * FIRST_TOKEN_BATCH, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    batches = []
    vlm.loaded()
    before = alive_views(inproc)

    def cancel_before_the_third_batch() -> bool:  # like the Cancel button, seen by the judge between batches
        batches.append(1)
        return len(batches) > 2

    monkeypatch.setattr(mm, "processing_interrupted", cancel_before_the_third_batch)
    with pytest.raises(mm.InterruptProcessingException) as raised:
        node.execute(vlm, images, PROMPT, 0.5)
    assert len(batches) == 3  # two batches answered, the third never started
    assert raised.value.__context__ is None and raised.value.__cause__ is None  # no traceback keeps frames alive
    assert alive_views(inproc) == before, "the cancelled batch's images (and their pixel tensors) are still referenced"
    assert vlm.chat.cached_tokens == 0 and vlm.patcher in mm.loaded_models()
    mm.unload_all_models()  # the judge is still ComfyUI's to evict
    assert vlm.patcher not in mm.loaded_models()
    monkeypatch.undo()
    index = node.execute(vlm, images[:2], PROMPT, 0.5)[1]
    assert index in (0, 1) and vlm.patcher in mm.loaded_models()
