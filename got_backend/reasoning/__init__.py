"""Reasoning (docs/ALGORITHM.md §3–§6, §10): the MLLM writes the chain and yields the semantic tokens.

Data flows one way: tokens and prompts make the token sequence, a decoder (plain or static/CUDA-graph) runs a
turn over it, the MLLM wraps both, and semantic guidance projects the hidden states at the 64 image queries.
"""
