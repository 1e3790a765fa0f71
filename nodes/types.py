"""The pack's own ComfyUI socket types, shared by every node family."""

from comfy_api.latest import io

GotMLLM = io.Custom("GOT_MLLM")
GotChain = io.Custom("GOT_CHAIN")
GotBranches = io.Custom("GOT_BRANCHES")
