"""The pack's one reader of model files: checkpoint files one shard at a time (pickle `.bin`, weights only, or
safetensors, single or indexed) and the JSON files (configs, tokenizer, processor) that travel with them."""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from ..errors import GoTError

INDEX_NAMES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
SINGLE_NAMES = ("pytorch_model.bin", "model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ZIP_MAGIC = b"PK\x03\x04"


# How to fix a damaged file, by where it came from.
REDOWNLOAD = ("If it is part of GoT-6B, delete it and download it again (compare its size with the one the download "
              "page lists).")
RECONVERT = ("If it is a file the converter wrote, convert the GoT-6B release again "
             "(python -m got_backend.convert); otherwise download it again.")


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
    fix = "Re-download it with the shards it belongs to."
    weight_map = read_json_object(index_path, fix).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} is not a checkpoint index: it has no \"weight_map\" of tensor names "
                              f"to shard files. {fix}")
    keys_per_file: dict[Path, set[str]] = {}
    for key, name in weight_map.items():
        keys_per_file.setdefault(_shard_in_folder(index_path, name), set()).add(key)
    files = sorted(keys_per_file)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{index_path.name} in {index_path.parent} names shard(s) that are not there: {', '.join(missing)}. "
            "Download the missing file(s) into the same folder (all shards of the release are needed).")
    return files, {f: frozenset(keys) for f, keys in keys_per_file.items()}


def _shard_in_folder(index_path: Path, name: object) -> Path:
    """The shard file an index entry names, which must be a plain file name inside the index's own folder:
    an absolute path, `..` or a sub-folder is refused, so a shared index cannot make the loader open other files.
    (A symlinked shard, as in Hugging Face's cache, is fine: the folder's owner placed it.)"""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(
            f"{index_path} names the shard {name!r}, which is not a file name in {index_path.parent} (an absolute "
            "path, `..` or a sub-folder): shards must lie next to their index. Re-download the index with its "
            "shards.")
    return index_path.parent / name


def read_json_object(file: Path, fix: str = REDOWNLOAD) -> dict:
    """The JSON object in `file` (every config, tokenizer and processor file of a model folder holds one); a
    CheckpointError names the file, where it stops parsing, and how to `fix` it."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {file} as UTF-8 text ({err}). {fix}") from None
    return parse_json_object(text, str(file), fix)


def parse_json_object(text: str, where: str, fix: str) -> dict:
    """`text` (the content of `where`) as a JSON object, or a CheckpointError saying what is wrong there."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{where} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}). "
                              f"{fix}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} holds a JSON {type(value).__name__}, not the object (a {{...}} of settings) "
                              f"a model file holds. {fix}")
    return value


def check_json_files(folder: Path, fix: str) -> None:
    """Every `.json` file of a model folder must hold a JSON object: transformers would fail on a damaged one
    with a bare JSONDecodeError, AttributeError or OSError that names no file."""
    for file in sorted(folder.glob("*.json")):
        read_json_object(file, fix)


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


def load_tensor_file(file: Path, fix: str = REDOWNLOAD) -> dict[str, torch.Tensor]:
    """All tensors of one `.safetensors` or pickle file, refusing pickles that carry anything but tensors (the
    pack's one reader of weight files: a CheckpointError names the file, says what is wrong and how to `fix` it,
    and never passes on torch's advice to turn weights_only off)."""
    if file.suffix == ".safetensors":
        tensors = _load_safetensors(file, fix)
    else:
        tensors = _load_pickle(file, fix)
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{file} does not hold a flat state dict (name -> tensor) but a "
                              f"{type(tensors).__name__}; give the GoT-6B release files as downloaded.")
    return tensors


def _load_pickle(file: Path, fix: str) -> object:
    try:
        with open(file, "rb") as handle:
            is_zip = handle.read(4) == ZIP_MAGIC
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err}") from err
    try:
        # Only the zip format (torch >= 1.6) can be memory-mapped; older pickles load the plain way.
        return torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        refused = _callables_in_pickle(file, is_zip) or _refused_code(err)
        if refused is not None:
            raise UnsafeCheckpointError(
                f"{file} is not a plain weights file: it holds code the loader refused to run ({refused}), so it "
                "was refused for safety (loading it would execute whatever it carries). Do not use this file: "
                "use the original GoT-6B shards from LucasFang/GoT-6B, or a .safetensors file.") from None
        raise _corrupt(file, err, fix) from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError) as err:
        raise _corrupt(file, err, fix) from err


# What torch's weights-only unpickler says when a pickle asks for a callable or class it does not allow, across
# versions: "Unsupported global: GLOBAL os.system", "Trying to load unsupported GLOBAL posix.system whose module
# posix is blocked", "Unsupported class ...". Its other refusals ("Unsupported operand 221": bytes that are no
# pickle it can read) are corrupt files.
_CODE_REFUSAL = re.compile(r"(?i:unsupported\s+(?:global|class)|module\s+\S+\s+is\s+blocked)|\bGLOBAL\s+[\w.]+")
_REFUSED_NAME = re.compile(r"\bGLOBAL\s+([\w.]+)")


def _refused_code(err: pickle.UnpicklingError) -> str | None:
    """What the pickle asked to call (e.g. "it asks for posix.system"), if the unpickler refused code; else None."""
    text = str(err)
    if not _CODE_REFUSAL.search(text):
        return None
    name = _REFUSED_NAME.search(text)
    return f"it asks for {name.group(1)}" if name else "it asks for a callable or class other than tensors"


_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")  # what a state dict pickles


def _callables_in_pickle(file: Path, is_zip: bool) -> str | None:
    """The first callable or class outside torch's tensor machinery that the file's pickle(s) ask for, read
    opcode by opcode without running anything (for pickles the weights-only unpickler cannot even parse, e.g.
    protocol 4 in some torch versions); None if there is none or the bytes are no pickle."""
    try:
        with ExitStack() as stack:
            if is_zip:
                archive = stack.enter_context(zipfile.ZipFile(file))
                stream = stack.enter_context(archive.open(next(n for n in archive.namelist()
                                                               if n.endswith("data.pkl"))))
            else:
                stream = stack.enter_context(open(file, "rb"))
            return _first_callable(stream)
    except Exception:  # noqa: BLE001 - bytes that are no (complete) pickle hold nothing more to report
        return None


def _first_callable(stream: IO[bytes]) -> str | None:
    """The first global a pickle stream names outside _TENSOR_GLOBALS (GLOBAL/INST carry it, STACK_GLOBAL takes
    the two strings pushed before it)."""
    for _ in range(4):  # the legacy format is a few pickles in a row
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = ".".join(strings[-2:])
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if not name.startswith(_TENSOR_GLOBALS):
                return f"it asks for {name}"
    return None


SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def check_safetensors_file(file: Path, fix: str = REDOWNLOAD) -> dict[str, dict]:
    """The tensor entries of a safetensors file's header (name -> dtype, shape, data_offsets), after the checks
    the safetensors library skips or reports without the file's name: the header is a JSON object naming each
    tensor once (duplicate names are refused, the library would silently keep one), and the file holds exactly
    the bytes the header lays out (a truncated file is shorter). A CheckpointError names the file, says what is
    wrong and how to `fix` it."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file} ({size:,} bytes) is not a complete safetensors file: {what}. {fix}")

    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0 or length > SAFETENSORS_MAX_HEADER or 8 + length > size:
            raise bad("it is shorter than the header it starts with (a truncated download or copy), or no "
                      "safetensors file at all")
        raw = handle.read(length)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise bad(f"its header lists the tensor {err.args[0]!r} twice") from None
    except (ValueError, UnicodeDecodeError):
        raise bad("its header is not JSON (random bytes, or a file of another format)") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object of tensors")
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    ends = []
    for name, entry in entries.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise bad(f"the header entry of {name!r} has no valid data_offsets")
        ends.append(offsets[1])
    data = size - 8 - length
    if max(ends, default=0) != data:
        raise bad(f"its header lays out {max(ends, default=0):,} bytes of tensor data but the file holds {data:,} "
                  + ("(it is truncated)" if data < max(ends, default=0) else "(bytes past the last tensor)"))
    return entries


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _load_safetensors(file: Path, fix: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    check_safetensors_file(file, fix)
    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise _corrupt(file, err, fix) from err


def _corrupt(file: Path, err: BaseException, fix: str) -> CheckpointError:
    size = file.stat().st_size if file.exists() else 0
    # Never torch's weights-only text: it suggests loading with weights_only=False, which would run any code.
    lines = [line for line in str(err).splitlines() if line.strip() and "weights_only" not in line]
    reason = lines[0][:200] if lines and not isinstance(err, pickle.UnpicklingError) else type(err).__name__
    return CheckpointError(f"{file} ({size:,} bytes) is corrupt or truncated, or not a PyTorch weights file, and "
                           f"cannot be read ({reason}). {fix}")
