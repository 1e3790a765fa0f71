"""Writing safetensors files tensor by tensor, so that a model is never held twice while it is saved.

`safetensors.torch.save_file` needs every tensor (already in its final dtype) at once; here the header is
built from shapes alone, then each tensor is cast, written and dropped from the caller's dict in turn.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import torch

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
DEFAULT_SHARD_BYTES = 5 * 1024**3


def write_safetensors(path: str | Path, tensors: MutableMapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None, float_dtype: torch.dtype | None = None) -> int:
    """Write `tensors` (in sorted key order) to `path`, removing each from the mapping once written.

    `float_dtype`, if given, is the stored dtype of every floating-point tensor. Returns the bytes written.
    """

    def stored(tensor: torch.Tensor) -> torch.dtype:
        return float_dtype if float_dtype is not None and tensor.is_floating_point() else tensor.dtype

    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; writing them on this machine is not supported")
    names = sorted(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name in names:
        dtype = stored(tensors[name])
        size = tensors[name].numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for name in names:
            tensor = tensors.pop(name)
            data = tensor.detach().to("cpu", stored(tensor)).contiguous().reshape(-1).view(torch.uint8)
            out.write(memoryview(data.numpy()))
    return 8 + len(encoded) + offset


def plan_shards(sizes: Mapping[str, int], max_bytes: int = DEFAULT_SHARD_BYTES) -> list[list[str]]:
    """Split names (sorted) into consecutive groups of at most `max_bytes` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    filled = 0
    for name in sorted(sizes):
        if shards[-1] and filled + sizes[name] > max_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += sizes[name]
    return shards


def write_sharded_safetensors(folder: Path, tensors: MutableMapping[str, torch.Tensor], *,
                              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Hugging Face layout: `model.safetensors`, or `model-0000N-of-0000M.safetensors` plus
    `model.safetensors.index.json` when the tensors exceed `max_shard_bytes`."""
    sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    groups = plan_shards(sizes, max_shard_bytes)
    if len(groups) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    written = []
    for name, group in zip(names, groups):
        part = {key: tensors.pop(key) for key in group}
        write_safetensors(folder / name, part)
        written.append(folder / name)
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": {key: name for name, group in zip(names, groups) for key in group}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        written.append(folder / "model.safetensors.index.json")
    return written
