"""The pack's out-of-memory error inside a real ComfyUI (in-process): ManagedMLLM/ManagedVLM.loaded raise
ModelMemoryError when ComfyUI cannot fit a model (nodes/model_management.load_fully); it is one of the pack's
GoTErrors, a MemoryError, and the exception ComfyUI's executor treats as out of memory (its OOM_EXCEPTION, on
which it adds its tip and unloads all models). The raise itself needs a GPU that runs out of memory."""

from __future__ import annotations


def test_the_out_of_memory_error_is_a_got_error_a_memory_error_and_comfyuis_oom(inproc):
    import comfy.model_management

    errors = inproc.pack_module("got_backend.errors")
    error = inproc.pack_module("nodes.model_management").ModelMemoryError("the GoT MLLM does not fit on cuda:0")
    assert isinstance(error, errors.GoTError) and isinstance(error, MemoryError)
    assert comfy.model_management.OOM_EXCEPTION is not Exception  # this torch has CUDA's OutOfMemoryError
    assert isinstance(error, comfy.model_management.OOM_EXCEPTION)
    assert str(error) == "the GoT MLLM does not fit on cuda:0"
