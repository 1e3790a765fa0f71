"""The fast decoder: a fixed-shape single-token step over preallocated KV buffers, replayed as a CUDA graph.

Hugging Face's per-token forward spends most of a decode step in Python and kernel launches (batch 1 decoding
of a 3B model is otherwise bound by reading the weights once per token). This step has no data-dependent shapes
or host synchronisation: the token id, the cache slot and the rotary position live in small device tensors, the
new key/value are written into the slot with `index_copy_`, and attention runs over the whole buffer with a
mask of the filled slots. That makes it capturable once as a CUDA graph and replayed per token (with inputs
copied into the static tensors first and the logits cloned out after). On the CPU, or where capture fails, the
same step runs eagerly.

The step calls the model's own modules (norms, projections, MLP, lm_head) and reproduces only the attention
core and the rotary embedding. A text token's three M-RoPE positions are equal, so its rotary angles are the
plain 1D ones at position slot + delta. Prefill, image tokens and multi-token extensions go through Hugging
Face's forward (`Decoder.feed`) with the buffers lent to it as a DynamicCache.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from .conversation import forward_segment, model_device, text_decoder
from .decoding import Decoder, cache_pairs, dynamic_cache
from ..errors import GoTError

log = logging.getLogger(__name__)

MIN_CAPACITY = 256


class UnsupportedModelError(GoTError):
    """The model's structure is not the one the static step reproduces; use the plain decoder."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderStack:
    """The Qwen2.5-VL text decoder's parts the step uses, checked for what the step assumes."""

    def __init__(self, model: torch.nn.Module) -> None:
        try:
            config = model.config.get_text_config()
            decoder = text_decoder(model)
            self.embed, self.layers, self.norm = decoder.embed_tokens, decoder.layers, decoder.norm
            self.rotary, self.lm_head = decoder.rotary_emb, model.lm_head
        except AttributeError as err:
            raise UnsupportedModelError(f"unexpected model structure ({err})") from err
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.groups = self.heads // self.kv_heads
        self.scale = self.head_dim ** -0.5
        if getattr(config, "use_sliding_window", False):
            raise UnsupportedModelError("sliding-window attention is enabled in the model config")
        if getattr(self.rotary, "rope_type", "default") != "default":
            raise UnsupportedModelError(f"rope type {self.rotary.rope_type!r} (the step computes default rope)")
        layer = self.layers[0]
        parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp",
                 "input_layernorm", "post_attention_layernorm")
        missing = [name for name in parts if not _has_submodule(layer, name)]
        if missing:
            raise UnsupportedModelError(f"decoder layers lack {', '.join(missing)}")
        if getattr(layer.self_attn, "head_dim", self.head_dim) != self.head_dim:
            raise UnsupportedModelError("attention head_dim differs from hidden_size / num_attention_heads")


def _has_submodule(module: torch.nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


class StaticDecoder(Decoder):
    """KV cache in preallocated buffers; single-token steps run as a captured CUDA graph when possible."""

    def __init__(self, model: torch.nn.Module, capacity: int = MIN_CAPACITY, use_cuda_graph: bool = True) -> None:
        super().__init__(model)
        self.stack = DecoderStack(model)
        device = model_device(model)
        self.use_cuda_graph = use_cuda_graph and device.type == "cuda" and torch.cuda.is_available()
        self.kind = "cuda_graph" if self.use_cuda_graph else "static"
        self.capture_seconds = 0.0  # spent capturing since the last `take_capture_seconds`
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = torch.empty(0, dtype=torch.long, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        self.reserve(capacity)

    @property
    def capacity(self) -> int:
        return self.slots.numel()

    def reserve(self, tokens: int) -> None:
        if tokens > self.capacity:
            self._allocate(max(MIN_CAPACITY, 1 << (tokens - 1).bit_length()), keep=len(self.ids))

    def release(self) -> None:
        super().release()
        self._graph = self._graph_logits = None
        self.keys, self.values = [], []
        self.slots = self.slots[:0]

    def take_capture_seconds(self) -> float:
        seconds, self.capture_seconds = self.capture_seconds, 0.0
        return seconds

    def cache_bytes(self) -> int:
        return sum(t.nbytes for t in (*self.keys, *self.values))

    def _allocate(self, capacity: int, keep: int) -> None:
        stack, device = self.stack, self.token.device
        dtype = stack.embed.weight.dtype
        shape = (1, stack.kv_heads, capacity, stack.head_dim)
        old = list(zip(self.keys, self.values))
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in stack.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in stack.layers]
        for (k_old, v_old), k_new, v_new in zip(old, self.keys, self.values):
            k_new[:, :, :keep].copy_(k_old[:, :, :keep])
            v_new[:, :, :keep].copy_(v_old[:, :, :keep])
        self.slots = torch.arange(capacity, device=device)
        self._graph = self._graph_logits = None  # the graph read the old buffers

    def _forward(self, keep, ids, positions, images, hidden):
        self.reserve(keep + len(ids))
        lent = dynamic_cache([(k[:, :, :keep], v[:, :, :keep]) for k, v in zip(self.keys, self.values)]) \
            if keep else None
        logits, states, grown = forward_segment(self.model, self.layout, ids, positions, images, lent, hidden)
        end = keep + len(ids)
        for (keys, values), k_buffer, v_buffer in zip(cache_pairs(grown), self.keys, self.values):
            k_buffer[:, :, keep:end].copy_(keys[:, :, keep:end])
            v_buffer[:, :, keep:end].copy_(values[:, :, keep:end])
        return logits, states

    def _step(self, token: int, slot: int, position: int) -> torch.Tensor:
        self.reserve(slot + 1)
        self.token.fill_(token)
        self.slot.fill_(slot)
        self.position.fill_(position)
        if self.use_cuda_graph and self._graph is None:
            self._capture()
        if self._graph is not None:
            self._graph.replay()
            return self._graph_logits.clone()
        return self._decode_step()

    def _capture(self) -> None:
        """Record the step as a CUDA graph; on failure, fall back to running it eagerly."""
        started = time.perf_counter()
        token, slot, position = self.token.clone(), self.slot.clone(), self.position.clone()
        device = self.token.device
        try:
            # Warm-up and capture write a junk key/value into the last slot, which is rewritten before
            # any step can attend to it.
            self.slot.fill_(self.capacity - 1)
            with torch.cuda.device(device):
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._decode_step()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    logits = self._decode_step()
                torch.cuda.synchronize()
            self._graph, self._graph_logits = graph, logits
        except Exception as err:  # capture is an optimisation: any failure keeps the eager step
            self.use_cuda_graph, self.kind = False, "static"
            self.note = f"CUDA graph capture failed ({type(err).__name__}: {err}); decoding eagerly"
            log.warning("GoT reasoner: %s", self.note)
        finally:
            self.token.copy_(token)
            self.slot.copy_(slot)
            self.position.copy_(position)
            self.capture_seconds += time.perf_counter() - started

    def _decode_step(self) -> torch.Tensor:
        """One token through the decoder, reading token/slot/position from the static tensors."""
        stack = self.stack
        x = stack.embed(self.token)
        angles = self.position.to(torch.float32)[:, None] * stack.rotary.inv_freq.to(torch.float32)
        angles = torch.cat((angles, angles), dim=-1)
        cos = (angles.cos() * stack.rotary.attention_scaling).to(x.dtype)
        sin = (angles.sin() * stack.rotary.attention_scaling).to(x.dtype)
        visible = (self.slots <= self.slot).view(1, 1, 1, -1)
        for layer, keys, values in zip(stack.layers, self.keys, self.values):
            attention = layer.self_attn
            h = layer.input_layernorm(x)
            q = attention.q_proj(h).view(1, 1, stack.heads, stack.head_dim).transpose(1, 2)
            k = attention.k_proj(h).view(1, 1, stack.kv_heads, stack.head_dim).transpose(1, 2)
            v = attention.v_proj(h).view(1, 1, stack.kv_heads, stack.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys.index_copy_(2, self.slot, k)
            values.index_copy_(2, self.slot, v)
            # With one query token, the query heads sharing a key/value head are just rows of one query.
            q = q.reshape(1, stack.kv_heads, stack.groups, stack.head_dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=stack.scale)
            x = x + attention.o_proj(out.reshape(1, 1, stack.heads * stack.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return stack.lm_head(stack.norm(x))[0, -1].to(torch.float32)
