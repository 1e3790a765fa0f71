"""Reading the released GoT-6B checkpoint into its parts: merged MLLM, the two projectors, UNet, VAE.

The release (docs/ALGORITHM.md §2) is one state dict over five pickle shards: `mllm.` (PEFT-wrapped Qwen2.5-VL in
transformers-4.49 names), `output_projector.projector.`, `output_projector_add.projector.`, `unet.`, `vae.`.
Shards are read one at a time and each tensor is moved into its part at once, so the model is held once.
Every tensor must land somewhere and every tensor the models need must be there; otherwise nothing is returned
and a CheckpointError lists what was left over and what is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .diffusers_configs import ConfigInferenceError, infer_unet_config, infer_vae_config, unet_shapes, vae_shapes
from .peft_merge import GOT_LORA_ALPHA, MergeStats, PeftMerger
from .qwen_names import QwenNames, load_qwen_config, qwen_names
from .shapes import state_mismatch, state_shapes
from .state_dicts import CheckpointError, UnsafeCheckpointError, iter_shards

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["CheckpointError", "UnsafeCheckpointError", "CheckpointReport", "GoTWeights", "read_got_checkpoint",
           "check_mllm_state", "GOT_LORA_ALPHA"]

PARTS = (("mllm.", "mllm"), ("output_projector.projector.", "output_projector"),
         ("output_projector_add.projector.", "output_projector_add"), ("unet.", "unet"), ("vae.", "vae"))
LISTED = 12  # names shown per list in an error message

# Key prefixes of files people mistake for GoT-6B, and what they are.
SDXL_FILE = "an SDXL/SD checkpoint (ComfyUI/SGM layout); load it with ComfyUI's checkpoint loader"
FOREIGN = (("model.diffusion_model.", SDXL_FILE), ("conditioner.embedders.", SDXL_FILE),
           ("down_blocks.", "a bare diffusers UNet, not the GoT release"),
           ("encoder.down_blocks.", "a bare diffusers VAE, not the GoT release"),
           ("model.layers.", "a bare language model (e.g. Qwen2.5-VL), not the GoT release"),
           ("model.language_model.", "a bare Qwen2.5-VL model, not the GoT release"),
           ("visual.blocks.", "a bare Qwen2.5-VL model, not the GoT release"))


@dataclass
class CheckpointReport:
    source: Path
    files: list[str] = field(default_factory=list)
    tensors_read: int = 0
    bytes_read: int = 0
    tensors: dict[str, int] = field(default_factory=dict)  # per part, after merging
    dtypes: dict[str, dict[str, int]] = field(default_factory=dict)  # part -> dtype -> count
    peft_wrapped: bool = False
    lora_pairs_merged: int = 0
    lora_ranks: tuple[int, ...] = ()
    lora_alpha: float = GOT_LORA_ALPHA
    modules_to_save_taken: int = 0
    originals_dropped: int = 0
    renamed_keys: int = 0
    tie_word_embeddings: bool = True

    def lines(self) -> list[str]:
        scales = ", ".join(f"r={r} -> alpha/r={self.lora_alpha / r:g}" for r in self.lora_ranks) or "none"
        out = [f"read {self.tensors_read} tensors ({self.bytes_read / 1e6:,.1f} MB) from {len(self.files)} file(s) "
               f"in {self.source}: {', '.join(self.files)}",
               f"MLLM: PEFT-wrapped={self.peft_wrapped}, LoRA pairs merged={self.lora_pairs_merged} "
               f"(alpha={self.lora_alpha:g}; {scales}), modules_to_save copies taken={self.modules_to_save_taken} "
               f"(originals dropped={self.originals_dropped}), keys renamed to the installed transformers' "
               f"names={self.renamed_keys}, tie_word_embeddings={self.tie_word_embeddings}"]
        for part, count in self.tensors.items():
            dtypes = ", ".join(f"{d} x{n}" for d, n in sorted(self.dtypes[part].items()))
            out.append(f"{part}: {count} tensors ({dtypes})")
        return out


@dataclass
class GoTWeights:
    """GoT's parts. `mllm` uses the installed transformers' names (LoRA merged); projectors hold
    `weight`/`bias`; `unet`/`vae` use diffusers names, with configs inferred from their shapes."""

    mllm: dict[str, torch.Tensor]
    output_projector: dict[str, torch.Tensor]
    output_projector_add: dict[str, torch.Tensor]
    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor] | None
    unet_config: dict
    vae_config: dict | None
    tie_word_embeddings: bool
    report: CheckpointReport


class _Findings:
    """What did not fit, collected over the whole checkpoint so one error can list all of it."""

    def __init__(self) -> None:
        self.unplaced: list[str] = []
        self.missing: list[str] = []
        self.other: list[str] = []

    def check_against(self, part: str, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                      source: Callable[[str], str], optional: frozenset[str] = frozenset()) -> None:
        mismatch = state_mismatch(expected, state, optional)
        self.unplaced += [source(k) for k in mismatch.unexpected]
        self.missing += [f"{part}: {k} {tuple(expected[k])}" for k in mismatch.missing]
        self.other += [f"{source(k)} has shape {tuple(found)}, the {part} needs {tuple(needed)}"
                       for k, found, needed in mismatch.misshaped]

    def raise_if_any(self, where: Path) -> None:
        if not (self.unplaced or self.missing or self.other):
            return
        sections = [("left unplaced (in the checkpoint, but no part of GoT has such a tensor)", self.unplaced),
                    ("expected but not found (the models need them)", self.missing),
                    ("other problems", self.other)]
        text = [f"the GoT checkpoint {where} does not fit GoT's models; nothing was loaded."]
        for title, items in sections:
            if items:
                shown = "\n    ".join(items[:LISTED])
                more = f"\n    ... and {len(items) - LISTED} more" if len(items) > LISTED else ""
                text.append(f"  {len(items)} {title}:\n    {shown}{more}")
        text.append("Check that this is the complete LucasFang/GoT-6B release (all shards, undamaged) and that the "
                    "Qwen2.5-VL-3B-Instruct folder is the one GoT was trained from.")
        raise CheckpointError("\n".join(text))


def _route(key: str) -> tuple[str | None, str]:
    for prefix, part in PARTS:
        if key.startswith(prefix):
            return part, key[len(prefix):]
    return None, key


def _not_got(file: Path, keys: list[str]) -> CheckpointError:
    roots = Counter(k.split(".")[0] for k in keys).most_common(5)
    found = ", ".join(f"{root}.* x{n}" for root, n in roots)
    kind = next((what for prefix, what in FOREIGN if any(k.startswith(prefix) for k in keys)), "not GoT-6B")
    return CheckpointError(
        f"{file} holds no GoT tensors (none starts with mllm., unet., vae. or output_projector*); its tensors are "
        f"{found}. This looks like {kind}. GoT-6B is the folder from LucasFang/GoT-6B with "
        "pytorch_model.bin.index.json and pytorch_model-0000N-of-00005.bin; put it in models/LLM/GoT-6B.")


def read_got_checkpoint(path: str | Path, qwen_base: str | Path | PretrainedConfig | None = None, *,
                        lora_alpha: float = GOT_LORA_ALPHA,
                        on_shard: Callable[[Path], None] | None = None) -> GoTWeights:
    """Read a GoT checkpoint (released folder, index json, single .bin or .safetensors) shard by shard.

    `qwen_base` (the Qwen2.5-VL-3B-Instruct folder or its config) lets the MLLM be checked name by name and
    shape by shape against the installed transformers' model; without it names are still converted and
    `check_mllm_state` does the check before the weights are loaded. `on_shard(file)` is called after each file
    has been distributed (and dropped).
    """
    path = Path(path)
    config = load_qwen_config(qwen_base) if isinstance(qwen_base, (str, Path)) else qwen_base
    names = qwen_names(config)
    report = CheckpointReport(source=path, lora_alpha=lora_alpha)
    findings = _Findings()
    merger = PeftMerger(lora_alpha)
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for _, part in PARTS if part != "mllm"}
    origins: dict[str, str] = {}  # checkpoint key -> its file, for messages

    def where(key: str) -> str:
        return f"{key} ({origins[key]})"

    for shard in iter_shards(path):
        if not any(_route(k)[0] for k in shard.tensors):
            raise _not_got(shard.file, list(shard.tensors))
        while shard.tensors:
            key, tensor = shard.tensors.popitem()
            report.tensors_read += 1
            report.bytes_read += tensor.numel() * tensor.element_size()
            origins[key] = shard.file.name
            part, name = _route(key)
            if part is None:
                findings.unplaced.append(where(key))
            elif part == "mllm":
                merger.add(name, tensor, where(key))
            else:
                parts[part][name] = tensor
        report.files.append(shard.file.name)
        if on_shard is not None:
            on_shard(shard.file)
        del shard

    mllm, report.renamed_keys = _installed_mllm(merger, names, findings)
    _check_projectors(parts, names, findings, where)
    unet_config = _checked_diffusers_part("unet", parts["unet"], findings, where, infer_unet_config, unet_shapes,
                                          pooled_dim=_pooled_dim(parts))
    vae = parts["vae"] or None
    vae_config = _checked_diffusers_part("vae", vae, findings, where, infer_vae_config, vae_shapes) if vae else None
    if not mllm:
        findings.missing.append("mllm: the whole MLLM (no mllm.* tensors)")
    findings.raise_if_any(path)

    # GoT's modules_to_save copies of lm_head and embed_tokens were trained apart, which unties them.
    tie = names.lm_head_key not in mllm or (
        names.embed_key in mllm and torch.equal(mllm[names.lm_head_key], mllm[names.embed_key]))
    _summarise(report, merger.stats, {"mllm": mllm, **parts}, tie)
    return GoTWeights(mllm=mllm, output_projector=parts["output_projector"],
                      output_projector_add=parts["output_projector_add"], unet=parts["unet"], vae=vae,
                      unet_config=unet_config, vae_config=vae_config, tie_word_embeddings=tie, report=report)


def _summarise(report: CheckpointReport, stats: MergeStats, parts: dict[str, dict[str, torch.Tensor]],
               tie: bool) -> None:
    report.peft_wrapped = stats.peft_wrapped > 0
    report.lora_pairs_merged = stats.lora_pairs_merged
    report.lora_ranks = tuple(sorted(stats.lora_ranks))
    report.modules_to_save_taken = stats.modules_to_save_taken
    report.originals_dropped = stats.originals_dropped
    report.tie_word_embeddings = tie
    for part, state in parts.items():
        report.tensors[part] = len(state)
        report.dtypes[part] = dict(Counter(str(t.dtype).removeprefix("torch.") for t in state.values()))


def _installed_mllm(merger: PeftMerger, names: QwenNames, findings: _Findings) -> tuple[dict[str, torch.Tensor], int]:
    """The merged MLLM in the installed names, and how many names changed."""
    plain = merger.finish()
    findings.other += merger.problems
    mllm: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    renamed = 0
    for old, tensor in plain.items():
        new = names.installed_name(old)
        if new is None:
            findings.unplaced.append(merger.sources[old])
        else:
            mllm[new] = tensor
            sources[new] = merger.sources[old]
            renamed += new != old
    plain.clear()
    if names.shapes is not None and mllm:
        findings.check_against("MLLM", mllm, names.shapes, sources.__getitem__,
                               optional=frozenset({names.lm_head_key}))  # absent lm_head = tied to embed_tokens
    return mllm, renamed


def _check_projectors(parts: dict[str, dict[str, torch.Tensor]], names: QwenNames, findings: _Findings,
                      where: Callable[[str], str]) -> None:
    hidden = names.shapes[names.embed_key][1] if names.shapes is not None else None
    for part in ("output_projector", "output_projector_add"):
        state = parts[part]
        weight = state.get("weight")
        if weight is None or weight.dim() != 2:
            findings.missing.append(f"{part}: {part}.projector.weight (an nn.Linear weight, 2-D)")
            findings.unplaced += [where(f"{part}.projector.{k}") for k in state if k != "weight"]
            continue
        rows, cols = weight.shape[0], hidden or weight.shape[1]
        findings.check_against(part, state, {"weight": torch.Size((rows, cols)), "bias": torch.Size((rows,))},
                               lambda k, p=part: where(f"{p}.projector.{k}"))


def _pooled_dim(parts: dict[str, dict[str, torch.Tensor]]) -> int | None:
    weight = parts["output_projector_add"].get("weight")
    return weight.shape[0] if weight is not None and weight.dim() == 2 else None


def _checked_diffusers_part(part: str, state: dict[str, torch.Tensor], findings: _Findings,
                            where: Callable[[str], str], infer, shapes_of, **infer_kwargs) -> dict:
    if not state:
        findings.missing.append(f"{part}: the whole {part.upper()} (no {part}.* tensors)")
        return {}
    shapes = state_shapes(state)
    try:
        config = infer(shapes, **infer_kwargs)
        expected = shapes_of(config)
    except (ConfigInferenceError, ValueError, TypeError) as err:
        findings.other.append(f"cannot work out the {part.upper()}'s structure: {err}")
        return {}
    findings.check_against(part.upper(), state, expected, lambda k: where(f"{part}.{k}"))
    return config


def check_mllm_state(state: Mapping[str, torch.Tensor], model: torch.nn.Module, where: str | Path) -> None:
    """Refuse `state` (installed names, e.g. `GoTWeights.mllm`) unless it fills `model` (a
    Qwen2_5_VLForConditionalGeneration, on the meta device is enough) exactly.

    Any missing, unexpected or mis-shaped tensor raises CheckpointError naming them. A missing lm_head is fine
    when the model ties it to embed_tokens; an lm_head that differs from embed_tokens is refused for such a
    model (build it with tie_word_embeddings=GoTWeights.tie_word_embeddings).
    """
    expected = state_shapes(model.state_dict())
    embed_key = next(k for k in expected if k.endswith("embed_tokens.weight"))
    lm_head_key = next(k for k in expected if k.endswith("lm_head.weight"))
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    findings = _Findings()
    findings.check_against("model", state, expected, str, optional=frozenset({lm_head_key} if tied else ()))
    if tied and lm_head_key in state and embed_key in state and not torch.equal(state[lm_head_key], state[embed_key]):
        findings.other.append(f"{lm_head_key} differs from {embed_key}, but this model ties them "
                              "(tie_word_embeddings=True); build it with tie_word_embeddings=False")
    if not tied and lm_head_key not in state and embed_key in state:
        findings.other.append(f"{lm_head_key} is absent (the weights tie it to {embed_key}), but this model "
                              "unties them; build it with tie_word_embeddings=True")
    findings.raise_if_any(Path(where))
