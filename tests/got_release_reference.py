"""The tiny release read the plain way, straight from docs/ALGORITHM.md §2, as the reference the loader is checked against.

Deliberately independent of got_backend's reader: all shards loaded at once, LoRA merged with the formula
written out here, names compared in transformers-4.49 spelling (`to_transformers_449_name` of an installed name).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from got_backend.testing.fixtures import LORA_ALPHA

MLLM_PEFT = "mllm.base_model.model."


def raw_state(release: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(release.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, map_location="cpu", weights_only=True))
    return state


def expected_mllm(raw: dict[str, torch.Tensor], lora_alpha: float = LORA_ALPHA) -> dict[str, torch.Tensor]:
    """Merged MLLM weights keyed by transformers-4.49 names: W + (alpha/r) B @ A (fp32, cast back);
    modules_to_save copies instead of the originals."""
    merged = {}
    for key, value in raw.items():
        if not key.startswith(MLLM_PEFT) or ".lora_" in key or ".original_module." in key:
            continue
        name = key[len(MLLM_PEFT):]
        if name.endswith(".base_layer.weight"):
            module = key[: -len(".base_layer.weight")]
            a = raw[f"{module}.lora_A.default.weight"]
            b = raw[f"{module}.lora_B.default.weight"]
            value = (value.float() + (lora_alpha / a.shape[0]) * (b.float() @ a.float())).to(value.dtype)
        merged[name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = value
    return merged


def expected_part(raw: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}


def shard_holding(release: Path, key: str) -> str:
    return json.loads((release / "pytorch_model.bin.index.json").read_text())["weight_map"][key]


def release_variant(release: Path, folder: Path, shard: str,
                    edit: Callable[[dict[str, torch.Tensor]], object]) -> Path:
    """A copy of `release` (other shards linked) whose `shard` was loaded, edited in place and saved again,
    with an index that lists what the files now hold."""
    folder.mkdir(parents=True)
    weight_map = json.loads((release / "pytorch_model.bin.index.json").read_text())["weight_map"]
    weight_map = {k: f for k, f in weight_map.items() if f != shard}
    state = torch.load(release / shard, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, folder / shard)
    weight_map.update(dict.fromkeys(state, shard))
    for file in release.glob("pytorch_model-*.bin"):
        if file.name != shard:
            (folder / file.name).symlink_to(file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
