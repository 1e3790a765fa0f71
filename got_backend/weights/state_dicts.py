"""Reading checkpoint files one shard at a time: pickle `.bin` (weights only) or safetensors, single or indexed."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from ..errors import GoTError

INDEX_NAMES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
SINGLE_NAMES = ("pytorch_model.bin", "model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(GoTError):
    """A checkpoint file or folder cannot be used; the message says which file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle file holds more than plain tensors (code, custom classes) and was refused."""


@dataclass
class Shard:
    """One file's tensors. `expected_keys` are the names the index assigns to this file (None without an index)."""

    file: Path
    tensors: dict[str, torch.Tensor]
    expected_keys: frozenset[str] | None = None


def shard_files(path: str | Path) -> tuple[list[Path], dict[Path, frozenset[str]] | None]:
    """The files a checkpoint consists of, in reading order, and the index's key list per file (if indexed).

    `path` is a folder (with an index json, one `pytorch_model.bin`/`model.safetensors`, or exactly one
    weights file), an index json, or one weights file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist. Give the GoT-6B folder (with pytorch_model.bin.index.json "
                              "and its pytorch_model-0000N-of-00005.bin shards) or a single weights file.")
    if path.is_dir():
        path = _weights_in_folder(path)
    if path.name.endswith(".index.json"):
        return _indexed_files(path)
    return [path], None


def _weights_in_folder(folder: Path) -> Path:
    for name in INDEX_NAMES + SINGLE_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES + (".safetensors",))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "no .bin or .safetensors files"
    raise CheckpointError(
        f"{folder} holds no checkpoint index ({' or '.join(INDEX_NAMES)}) and not exactly one weights file "
        f"(found: {found}). GoT-6B is released as pytorch_model.bin.index.json plus "
        "pytorch_model-00001-of-00005.bin ... pytorch_model-00005-of-00005.bin; "
        "download all six files into this folder.")


def _indexed_files(index_path: Path) -> tuple[list[Path], dict[Path, frozenset[str]]]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError("empty or malformed weight_map")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a readable checkpoint index ({err}); "
                              "re-download it with the shards it belongs to.") from err
    keys_per_file: dict[Path, set[str]] = {}
    for key, name in weight_map.items():
        keys_per_file.setdefault(index_path.parent / name, set()).add(key)
    files = sorted(keys_per_file)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{index_path.name} in {index_path.parent} names shard(s) that are not there: {', '.join(missing)}. "
            "Download the missing file(s) into the same folder (all shards of the release are needed).")
    return files, {f: frozenset(keys) for f, keys in keys_per_file.items()}


def iter_shards(path: str | Path) -> Iterator[Shard]:
    """Yield the checkpoint's files one at a time, each loaded only when reached.

    Pickle shards are memory-mapped where the format allows, so a shard's tensors occupy page cache (not a
    second copy in RAM) and the file is released as soon as the caller drops them.
    """
    files, index = shard_files(path)
    for file in files:
        shard = Shard(file, load_tensor_file(file), index[file] if index is not None else None)
        if shard.expected_keys is not None and not shard.expected_keys <= shard.tensors.keys():
            absent = sorted(shard.expected_keys - shard.tensors.keys())
            raise CheckpointError(
                f"{file} lacks {len(absent)} tensor(s) that the index assigns to it (e.g. {', '.join(absent[:3])}). "
                "The file does not belong to this index or is damaged; re-download it.")
        yield shard
        del shard  # before the next file is loaded, so two shards are never held at once


def load_tensor_file(file: Path) -> dict[str, torch.Tensor]:
    """All tensors of one `.safetensors` or pickle file, refusing pickles that carry anything but tensors."""
    if file.suffix == ".safetensors":
        tensors = _load_safetensors(file)
    else:
        tensors = _load_pickle(file)
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{file} does not hold a flat state dict (name -> tensor) but a "
                              f"{type(tensors).__name__}; give the GoT-6B release files as downloaded.")
    return tensors


def _load_pickle(file: Path) -> object:
    try:
        with open(file, "rb") as handle:
            is_zip = handle.read(4) == ZIP_MAGIC
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err}") from err
    try:
        # Only the zip format (torch >= 1.6) can be memory-mapped; older pickles load the plain way.
        return torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "Unsupported class" in str(err):
            raise UnsafeCheckpointError(
                f"{file} is not a plain weights file: its pickle asks to run code or build objects other than "
                "tensors, so it was refused for safety (loading it would execute whatever it carries). "
                "Use the original GoT-6B shards from LucasFang/GoT-6B, or a .safetensors file.") from err
        raise _corrupt(file, err) from err
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError) as err:
        raise _corrupt(file, err) from err


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise _corrupt(file, err) from err


def _corrupt(file: Path, err: BaseException) -> CheckpointError:
    size = file.stat().st_size if file.exists() else 0
    reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return CheckpointError(f"{file} ({size:,} bytes) is corrupt or truncated, or not a PyTorch weights file, and "
                           f"cannot be read ({reason}). If it is part of GoT-6B, delete it and download it again "
                           "(compare its size with the one the download page lists).")
