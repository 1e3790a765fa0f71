"""The tiny release read the plain way, straight from docs/ALGORITHM.md §2, as the reference the loader is checked against.

Deliberately independent of got_backend's reader: all shards loaded at once, LoRA merged with the formula
written out here, names compared in transformers-4.49 spelling (`to_transformers_449_name` of an installed name).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from PIL import Image

from got_backend.testing.fixtures import LORA_ALPHA

MLLM_PEFT = "mllm.base_model.model."
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


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


# GoT's released inference loop, as it ships: the PEFT-wrapped MLLM unmerged, Hugging Face's `generate` over the
# whole conversation at every call, the processor re-run over all input images each time (docs/ALGORITHM.md §10).

class ReleasedLoop:
    """The released multi-turn loop over token ids: `generate` runs one turn, `show` appends an input image
    after <|vision_start|>, `image_queries` appends the 64 queries after <|im_gen_start|>, and `semantic`
    re-runs the whole conversation without a cache for §6."""

    def __init__(self, release: Path, qwen_base: Path) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

        from got_backend.reasoning.tokens import add_got_tokens
        from got_backend.testing.fixtures import LORA_RANK, LORA_TARGETS, MODULES_TO_SAVE, to_transformers_449_name
        from got_backend.weights.mllm_files import dtype_argument

        config = AutoConfig.from_pretrained(qwen_base, local_files_only=True)
        base = Qwen2_5_VLForConditionalGeneration._from_config(config, **dtype_argument(torch.float32))
        self.model = get_peft_model(base, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.05,
                                                     target_modules=list(LORA_TARGETS),
                                                     modules_to_save=list(MODULES_TO_SAVE)))
        raw = raw_state(release)
        installed = {to_transformers_449_name(k): k for k in self.model.state_dict()}
        self.model.load_state_dict({installed[k[len("mllm."):]]: v for k, v in raw.items()
                                    if k.startswith("mllm.")}, strict=True)
        self.model.eval()
        self.token_types = "mm_token_type_ids" in inspect.signature(base.forward).parameters
        self.projector = torch.nn.Linear(*reversed(raw["output_projector.projector.weight"].shape))
        self.projector_add = torch.nn.Linear(*reversed(raw["output_projector_add.projector.weight"].shape))
        self.projector.load_state_dict(expected_part(raw, "output_projector.projector."))
        self.projector_add.load_state_dict(expected_part(raw, "output_projector_add.projector."))
        self.processor = AutoProcessor.from_pretrained(qwen_base, local_files_only=True)
        tokenizer = self.processor.tokenizer
        add_got_tokens(tokenizer)  # the release adds GoT's tokens to Qwen's tokenizer
        self.image_pad = config.image_token_id
        self.stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_gen_start|>", "<|vision_start|>",
                                                                   "<|endoftext|>")]
        self.queries = tuple(tokenizer.convert_tokens_to_ids([f"<|im_gen_{i:04d}|>" for i in range(64)]))
        self.ids: list[int] = []
        self.images: list[Image.Image] = []

    def start(self, prompt_ids: tuple[int, ...], source: Image.Image | None = None) -> ReleasedLoop:
        """A new conversation: the chat-templated prompt (with the source image of an edit)."""
        self.ids, self.images = list(prompt_ids), [] if source is None else [source_transform(source)]
        return self

    def _inputs(self, ids: list[int]) -> dict:
        inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if self.images:  # every input image, processed again at every call
            batch = self.processor.image_processor(images=self.images, return_tensors="pt")
            inputs.update(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        if self.token_types:  # transformers 5 finds the images by the token types the processor gives
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_pad).long()
        return inputs

    def generate(self, logits_processor: list, max_new_tokens: int) -> tuple[int, ...]:
        """One `generate` call of the release, greedy: every token from a full forward over the whole
        conversation (no cache), positions by transformers' own `get_rope_index`. On transformers 4 (GoT's 4.49)
        the shipped `generate` gives these very tokens; from transformers 5 its decode steps extend the 3D
        positions by one on every axis, which misplaces the tokens after a conversation that ends with an
        image's pads (the <|vision_start|> continuation): see docs/ALGORITHM.md §10."""
        new: list[int] = []
        with torch.no_grad():
            while len(new) < max_new_tokens and not (new and new[-1] in self.stops):
                ids = self.ids + new
                scores = self.model(**self._inputs(ids)).logits[:, -1].float()
                for process in logits_processor:
                    scores = process(torch.tensor([ids]), scores)
                new.append(int(scores.argmax(dim=-1)))
        if not TRANSFORMERS_5:
            assert tuple(new) == self._shipped_generate(logits_processor, max_new_tokens)
        self.ids += new
        return tuple(new)

    def _shipped_generate(self, logits_processor: list, max_new_tokens: int) -> tuple[int, ...]:
        from transformers import LogitsProcessorList

        with torch.no_grad():
            out = self.model.generate(**self._inputs(self.ids), max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.stops, pad_token_id=self.stops[-1],
                                      logits_processor=LogitsProcessorList(logits_processor))
        return tuple(out[0, len(self.ids):].tolist())

    def add_image_queries(self) -> None:
        self.ids += self.queries

    def show(self, image: Image.Image) -> None:
        """At <|vision_start|>: the last generated image becomes one more input image (256 pads)."""
        self.images.append(source_transform(image))
        self.ids += [self.image_pad] * 256

    def semantic(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, pooled) of docs/ALGORITHM.md §6 for the conversation, which ends with <|im_gen_start|>."""
        inputs = self._inputs(self.ids + list(self.queries))
        with torch.no_grad():
            h = self.model(**inputs, output_hidden_states=True).hidden_states[-1][:, -64:]
            return self.projector(h), self.projector_add(h).mean(dim=1)


def source_transform(image: Image.Image) -> Image.Image:
    """How the release shows an image to the MLLM: RGB, squashed to 448x448, bicubic."""
    return image.convert("RGB").resize((448, 448), Image.Resampling.BICUBIC)
