"""One-time conversion of the released GoT-6B (pickle shards) into safetensors in a ComfyUI models folder.

    python -m got_backend.convert --release GoT-6B --qwen Qwen2.5-VL-3B-Instruct --models ComfyUI/models

writes
    models/LLM/GoT-6B/                              merged MLLM as a transformers folder (+ GoT tokens, processor
                                                    files) and got_projectors.safetensors
    models/diffusion_models/GoT-6B-unet.safetensors fp16 UNet (diffusers names, config in the metadata)
    models/vae/GoT-6B-vae.safetensors               the VAE (diffusers names, config in the metadata)

Memory: the checkpoint is read shard by shard (memory-mapped) into its parts, which are disjoint, so the
model is held once; each output file is then written tensor by tensor, every tensor dropped once written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .weights.checkpoint import GOT_LORA_ALPHA, CheckpointError, CheckpointReport, GoTWeights, read_got_checkpoint
from .weights.qwen_names import load_qwen_config, qwen_names
from .weights.safetensors_writer import write_safetensors, write_sharded_safetensors
from .weights.models_dir import (DEFAULT_NAME, PROJECTORS_FILE, QWEN_BASE_NAME, QWEN_URL, RELEASE_FILES, RELEASE_URL,
                                 converted_paths)
from .weights.mllm_files import REDOWNLOAD_QWEN
from .weights.state_dicts import check_json_files, read_json_object, shard_files
from .reasoning.tokens import add_got_tokens, resolve_got_tokens
from .errors import GoTError

QWEN_REQUIRED = ("config.json", "preprocessor_config.json", "tokenizer_config.json")
QWEN_COPIED = ("preprocessor_config.json", "chat_template.json", "chat_template.jinja", "generation_config.json")
UNET_DTYPE = torch.float16

LAYOUT_HELP = (
    "Where the files go:\n"
    f"  --release  {DEFAULT_NAME}/ from {RELEASE_URL}:\n"
    f"             {RELEASE_FILES}\n"
    f"  --qwen     {QWEN_BASE_NAME}/ from {QWEN_URL}:\n"
    f"             {', '.join(QWEN_REQUIRED + QWEN_COPIED[1:])},\n"
    "             tokenizer.json, vocab.json, merges.txt (its *.safetensors are not needed)\n"
    "  --models   your ComfyUI/models folder; receives {}/, {} and\n"
    "             {}".format(*converted_paths(Path(), "<name>")))


class ConversionError(GoTError):
    """The conversion cannot start or finish: missing folders/files, or outputs that already exist."""


@dataclass
class ConversionReport:
    checkpoint: CheckpointReport
    written: dict[Path, int] = field(default_factory=dict)  # file -> bytes
    tie_word_embeddings: bool = True
    seconds: float = 0.0

    @property
    def bytes_written(self) -> int:
        return sum(self.written.values())

    def format(self) -> str:
        lines = ["GoT conversion report", *(f"  {line}" for line in self.checkpoint.lines()),
                 f"  stored: MLLM and projectors in their checkpoint dtypes, UNet as {str(UNET_DTYPE)[6:]}, "
                 f"VAE as is; config.json tie_word_embeddings={self.tie_word_embeddings}",
                 "  wrote:"]
        lines += [f"    {path} ({_size(size)})" for path, size in self.written.items()]
        lines.append(f"  total {_size(self.bytes_written)} in {self.seconds:.1f} s")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class OutputPaths:
    mllm_dir: Path
    unet: Path
    vae: Path

    @classmethod
    def under(cls, models_dir: Path, name: str) -> OutputPaths:
        return cls(*converted_paths(models_dir, name))

    def existing(self) -> list[Path]:
        mllm_files = [self.mllm_dir / n for n in ("config.json", "model.safetensors", "model.safetensors.index.json",
                                                 PROJECTORS_FILE)]
        return [p for p in (*mllm_files, self.unet, self.vae) if p.exists()]


def convert_release(release_dir: str | Path, qwen_base_dir: str | Path, models_dir: str | Path, *,
                    name: str = DEFAULT_NAME, lora_alpha: float = GOT_LORA_ALPHA, overwrite: bool = False,
                    log: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert the GoT release into `models_dir` (see the module docstring); returns what was done.

    The MLLM folder is written into a staging folder first and moved into place when complete, so an
    interrupted conversion never leaves a folder that looks finished.
    """
    started = time.monotonic()
    say = log or (lambda message: None)
    release_dir, qwen_base_dir, models_dir = Path(release_dir), Path(qwen_base_dir), Path(models_dir)
    out = OutputPaths.under(models_dir, name)
    _check_inputs(release_dir, qwen_base_dir, models_dir, out, overwrite)

    staging = models_dir / "LLM" / f".{name}.converting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        # Tokenizer first: a wrong one fails before gigabytes are read, and its memory is gone before they are.
        say("adding GoT's tokens to the Qwen2.5-VL tokenizer")
        _write_tokenizer_and_processor(qwen_base_dir, staging)
        say(f"reading {release_dir} shard by shard")
        weights = read_got_checkpoint(release_dir, qwen_base_dir, lora_alpha=lora_alpha,
                                      on_shard=lambda file: say(f"  read {file.name}"))
        report = ConversionReport(weights.report, tie_word_embeddings=weights.tie_word_embeddings)
        _write_config(qwen_base_dir, staging, weights)
        _write_mllm_weights(weights, staging, say)
        _write_diffusers_part(weights.unet, weights.unet_config, out.unet, UNET_DTYPE, report, say)
        if weights.vae is not None:
            _write_diffusers_part(weights.vae, weights.vae_config, out.vae, None, report, say)
        out.mllm_dir.mkdir(parents=True, exist_ok=True)
        for stale in out.mllm_dir.glob("model*.safetensors*"):
            stale.unlink()
        for file in sorted(staging.iterdir()):
            report.written[out.mllm_dir / file.name] = file.stat().st_size
            file.replace(out.mllm_dir / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def _check_inputs(release_dir: Path, qwen_base_dir: Path, models_dir: Path, out: OutputPaths, overwrite: bool) -> None:
    if not models_dir.is_dir():
        raise ConversionError(f"the models folder {models_dir} does not exist; give your ComfyUI/models folder.\n"
                              + LAYOUT_HELP)
    if not release_dir.is_dir():
        raise ConversionError(f"the GoT release folder {release_dir} does not exist.\n" + LAYOUT_HELP)
    try:
        shard_files(release_dir)
    except CheckpointError as err:
        raise ConversionError(f"{err}\n{LAYOUT_HELP}") from err
    missing = [n for n in QWEN_REQUIRED if not (qwen_base_dir / n).is_file()]
    if not ((qwen_base_dir / "tokenizer.json").is_file() or (qwen_base_dir / "vocab.json").is_file()):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise ConversionError(f"the Qwen2.5-VL-3B-Instruct folder {qwen_base_dir} lacks {', '.join(missing)}.\n"
                              + LAYOUT_HELP)
    try:
        check_json_files(qwen_base_dir, REDOWNLOAD_QWEN)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    existing = out.existing()
    if existing and not overwrite:
        raise ConversionError("the converted model is already there: " + ", ".join(map(str, existing))
                              + ". Delete these files to convert again (or pass --overwrite).")


def _write_mllm_weights(weights: GoTWeights, folder: Path, say: Callable[[str], None]) -> None:
    if weights.tie_word_embeddings:  # equal to embed_tokens (or absent): the model ties it back on load
        weights.mllm.pop(qwen_names().lm_head_key, None)
    say(f"writing the MLLM ({len(weights.mllm)} tensors)")
    write_sharded_safetensors(folder, weights.mllm)
    projectors = {f"{part}.{k}": v for part in ("output_projector", "output_projector_add")
                  for k, v in getattr(weights, part).items()}
    write_safetensors(folder / PROJECTORS_FILE, projectors)


def _write_config(qwen_base_dir: Path, folder: Path, weights: GoTWeights) -> None:
    """The base config.json as it is, except the facts the checkpoint decides: tied embeddings, stored dtype."""
    config = read_json_object(qwen_base_dir / "config.json", REDOWNLOAD_QWEN)
    tie = weights.tie_word_embeddings
    config["tie_word_embeddings"] = tie
    if "tie_word_embeddings" in config.get("text_config", {}):  # pre-v5 transformers also read it there
        config["text_config"]["tie_word_embeddings"] = tie
    dtypes = weights.report.dtypes["mllm"]
    stored = max((d for d in dtypes if d.startswith(("float", "bfloat"))), key=dtypes.get)
    for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]:
        config[key] = stored
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if load_qwen_config(folder).tie_word_embeddings != tie:
        raise ConversionError(f"the installed transformers does not read tie_word_embeddings={tie} back from "
                              f"{folder / 'config.json'}; please report this with your transformers version")


def _write_tokenizer_and_processor(qwen_base_dir: Path, folder: Path) -> None:
    from transformers import AutoTokenizer

    for name in QWEN_COPIED:
        if (qwen_base_dir / name).is_file():
            shutil.copyfile(qwen_base_dir / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(qwen_base_dir, local_files_only=True)
    add_got_tokens(tokenizer)
    resolve_got_tokens(tokenizer)
    tokenizer.save_pretrained(folder)
    resolve_got_tokens(AutoTokenizer.from_pretrained(folder, local_files_only=True))  # what a loader of the converted folder will see


def _write_diffusers_part(state: dict[str, torch.Tensor], config: dict, path: Path, dtype: torch.dtype | None,
                          report: ConversionReport, say: Callable[[str], None]) -> None:
    say(f"writing {path.name} ({len(state)} tensors)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        report.written[path] = write_safetensors(partial, state, {"config": json.dumps(config)}, float_dtype=dtype)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m got_backend.convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert the released GoT-6B checkpoint (pickle shards) to safetensors in a ComfyUI models folder.",
        epilog=LAYOUT_HELP)
    parser.add_argument("--release", required=True, type=Path, help="the downloaded GoT-6B folder")
    parser.add_argument("--qwen", required=True, type=Path, help="the Qwen2.5-VL-3B-Instruct folder")
    parser.add_argument("--models", required=True, type=Path, help="ComfyUI's models folder")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"name of the outputs (default: {DEFAULT_NAME})")
    parser.add_argument("--lora-alpha", type=float, default=GOT_LORA_ALPHA,
                        help=f"LoRA alpha of the checkpoint (default: {GOT_LORA_ALPHA:g}, GoT's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion")
    args = parser.parse_args(argv)
    try:
        report = convert_release(args.release, args.qwen, args.models, name=args.name, lora_alpha=args.lora_alpha,
                                 overwrite=args.overwrite, log=print)
    except GoTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
