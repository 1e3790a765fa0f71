"""GoT end to end, one image: the released loop against this project's pipeline, in one run on one GPU.

Full-size architectures with random weights (nothing is downloaded): Qwen2.5-VL-3B (bf16), the 12-channel
SDXL UNet (2.6 B parameters) and SDXL's VAE, at 1024x1024 with 50 DDPM steps, for a chain of --tokens tokens
(250 by default) with four coloured boxes. Random weights never write such a chain, so both paths are made to
write the same one token by token (a logits processor forces each next token; every token still costs a full
decoding step).

released loop (GoT's GenCot.generate, one image)    ours (got_backend.pipeline)
  transformers generate, dynamic KV cache             fast decoder (static KV cache, CUDA graph)
  second full forward over the chain + 64 queries     semantic tokens from the generation's KV cache
  one VAE encode per box (+ the reference)            one batched VAE encode
  4 guidance branches, batch-4 UNet, UNet as loaded   zero-weight branch skipped (3 at the T2I defaults),
  (fp32; --baseline-unet-dtype)                       fp16 UNet
  everything resident on the GPU                      with --offload-style staging: MLLM and UNet/VAE take
                                                      turns on the GPU (pinned CPU copies)

Prints each stage's time, the end-to-end ratio, and peak VRAM with and without offloading.

    python bench/end_to_end.py          # CUDA GPU (H100-class)
    python bench/end_to_end.py --tiny   # CPU smoke run of this script with the tiny test models
    python bench/end_to_end.py --json out.json   # also write the figures as JSON (bench/gpu_check.py reads them)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

from got_backend.ssgm.chain import parse_chain  # noqa: E402
from got_backend.ssgm.branches import Conditioning  # noqa: E402
from got_backend.ssgm.decode import decode  # noqa: E402
from got_backend.ssgm.denoise import denoise  # noqa: E402
from got_backend.testing.fixtures import unet_config, vae_config  # noqa: E402
from got_backend.ssgm.guidance import T2I_SCALES  # noqa: E402
from got_backend.ssgm.latents import black_pixels, vae_mode_encoder  # noqa: E402
from got_backend.ssgm.layout import color_canvases  # noqa: E402
from got_backend.reasoning.mllm import GoTMLLM, resolve_dtype  # noqa: E402
from got_backend.pipeline import GoTPipeline, Progress, ReasoningSettings, RenderSettings  # noqa: E402
from got_backend.reasoning.prompts import chat_messages, instruction  # noqa: E402
from got_backend.reasoning.semantic import IMAGE_QUERY_COUNT  # noqa: E402
from full_size_release import SDXL_UNET_12CH  # noqa: E402
from reasoner import build_reasoner, peak_gib, peak_reset, profile_table, sync  # noqa: E402

PROMPT = "A sunlit kitchen table with a red teapot, two blue cups, a basket of oranges and a green plant"
OBJECTS = [("red teapot", (90, 310, 420, 720), "red"), ("blue cup", (460, 520, 610, 760), "blue"),
           ("basket of oranges", (640, 380, 950, 770), "orange"), ("green plant", (420, 40, 700, 470), "green")]
GOAL_SPEEDUP = 2.4  # end to end against the released loop, 250 tokens, 1024x1024, 50 steps
GOAL_OFFLOAD_PEAK_GB = 10.0
FILLER = (" The light comes from a window on the left, the table is made of pale oak, and the background is a "
          "soft cream wall with a little shadow below the shelf.")

class ForceSequence:
    """A transformers-style logits processor: the n-th new token is `ids[n]` (one instance per run)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids, self.prompt_length = ids, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        index = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[min(index, len(self.ids) - 1)]] = 0.0
        return forced


def chain_ids(mllm: GoTMLLM, tokens: int, objects: int = len(OBJECTS)) -> list[int]:
    """A chain of exactly `tokens` tokens: the first `objects` coloured boxes, descriptive text, <|im_gen_start|>."""
    text = "The image shows " + ", ".join(
        f"a <|object_ref_start|>{name}<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|> ({color})"
        for name, (x1, y1, x2, y2), color in OBJECTS[:objects]) + "."
    ids = mllm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > tokens - 1:
        raise SystemExit(f"--tokens {tokens} is too short for the benchmark chain's boxes ({len(ids) + 1} tokens)")
    filler = mllm.tokenizer(FILLER, add_special_tokens=False)["input_ids"]
    while len(ids) < tokens - 1:
        ids += filler
    return ids[:tokens - 1] + [mllm.tokens.boi]


@dataclass
class Stages:
    """Wall time per stage (the device synchronised at every boundary)."""

    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    _name: str | None = None
    _started: float = 0.0

    def enter(self, name: str | None) -> None:
        sync(self.device)
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + now - self._started
        self._name, self._started = name, now

    def run(self, name: str, work: Callable[[], object]) -> object:
        self.enter(name)
        result = work()
        self.enter(None)
        return result

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def released_loop(mllm: GoTMLLM, unet: torch.nn.Module, vae: torch.nn.Module, forced: list[int],
                  render: RenderSettings, device: str) -> tuple[Stages, str]:
    """GoT's released generate() for one image, stage by stage (docs/ALGORITHM.md §4-§9)."""
    stages = Stages(device)
    chat = mllm.processor.apply_chat_template(chat_messages(instruction(PROMPT, "t2i"), False), tokenize=False,
                                              add_generation_prompt=True)
    inputs = {k: v.to(mllm.device) for k, v in mllm.processor(text=[chat], return_tensors="pt").items()}
    prompt_length = inputs["input_ids"].shape[1]
    stops = list(mllm.tokens.stop_ids)

    def reason() -> torch.Tensor:
        with torch.no_grad():
            return mllm.model.generate(**inputs, max_new_tokens=len(forced), do_sample=False,
                                       logits_processor=[ForceSequence(forced)],
                                       eos_token_id=stops, pad_token_id=mllm.tokens.endoftext)

    sequence = stages.run("reasoning", reason)

    def second_pass() -> tuple[torch.Tensor, ...]:
        queries = torch.tensor([mllm.tokens.image_queries], device=sequence.device)
        ids = torch.cat([sequence, queries], dim=1)
        with torch.no_grad():
            out = mllm.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                             return_dict=True)
            h = out.hidden_states[-1][:, -IMAGE_QUERY_COUNT:].to(mllm.output_projector.weight.dtype)
            return (mllm.output_projector(h), mllm.output_projector_add(h).mean(dim=1),
                    mllm.output_projector(torch.zeros_like(h)))

    context, pooled, null_context = stages.run("semantic tokens", second_pass)
    text = mllm.tokenizer.decode(sequence[0, prompt_length:].tolist(), skip_special_tokens=False)

    def latents() -> tuple[torch.Tensor, torch.Tensor]:
        encode = vae_mode_encoder(vae)
        reference = encode(black_pixels(render.width, render.height))
        canvases = color_canvases(parse_chain(text), render.width, render.height)
        canvases = canvases if len(canvases) else black_pixels(render.width, render.height)
        spatial = torch.cat([encode(canvas[None]) for canvas in canvases]).mean(dim=0, keepdim=True)
        return reference, spatial

    reference, spatial = stages.run("VAE encodes", latents)
    cond = Conditioning(context, null_context, pooled, reference, spatial)
    final = stages.run("denoise", lambda: denoise(
        unet, cond, T2I_SCALES, width=render.width, height=render.height, steps=render.steps,
        generator=torch.Generator(device).manual_seed(render.seed), latent_dtype=vae.dtype,
        skip_zero_weight=False))
    stages.run("decode", lambda: decode(vae, final))
    return stages, text


def ours(pipeline: GoTPipeline, forced: list[int], render: RenderSettings, device: str) -> tuple[Stages, str, str]:
    """One image through GoTPipeline: reason, then render_turn (its stage events give the split)."""
    stages = Stages(device)
    names = {"reasoning": "reasoning", "semantic": "semantic tokens", "switch": "offload switch",
             "latents": "VAE encodes", "denoise": "denoise", "decode": "decode"}
    progress = Progress(on_stage=lambda name: stages.enter(names[name]))
    pipeline.mllm.clear_context()  # no KV reuse of the previous run's prompt: every run prefills
    settings = ReasoningSettings(max_new_tokens=len(forced), logits_processor=(ForceSequence(forced),))
    reasoning = pipeline.reason(PROMPT, settings=settings, progress=progress)
    pipeline.render_turn(reasoning, None, render, progress)
    stages.enter(None)
    stats = reasoning.stats
    note = (f"{stats.decoder} decoder, {stats.tokens_per_second:.0f} tok/s, CUDA graph capture "
            f"{stats.capture_seconds:.2f}s included") if stats else ""
    return stages, note, reasoning.text


def build_unet(tiny: bool, dtype: torch.dtype, device: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    with torch.device(device):
        return UNet2DConditionModel(**(unet_config() if tiny else SDXL_UNET_12CH)).to(dtype).eval().requires_grad_(False)


def build_vae(device: str) -> AutoencoderKL:
    torch.manual_seed(1)
    with torch.device(device):
        return AutoencoderKL(**vae_config()).eval().requires_grad_(False)


def table(columns: dict[str, Stages], peaks: dict[str, float]) -> None:
    names = list(dict.fromkeys(name for stages in columns.values() for name in stages.seconds))
    print(f"{'stage':<18}" + "".join(f"{title:>20}" for title in columns))
    for name in names:
        cells = [f"{stages.seconds[name]:>19.3f}s" if name in stages.seconds else f"{'-':>20}"
                 for stages in columns.values()]
        print(f"{name:<18}" + "".join(cells))
    print(f"{'end to end':<18}" + "".join(f"{stages.total:>19.3f}s" for stages in columns.values()))
    print(f"{'peak VRAM':<18}" + "".join(f"{peaks[title]:>17.2f}GiB" if peaks[title] == peaks[title] else
                                        f"{'n/a':>20}" for title in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test models on the CPU (smoke run of the script)")
    parser.add_argument("--tokens", type=int, default=None, help="chain length (default 250; 128 with --tiny)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="DDPM steps (default 50; 3 with --tiny)")
    parser.add_argument("--baseline-unet-dtype", default="fp32",
                        help="the released loop's UNet/VAE dtype (default fp32: its loader builds them in fp32)")
    parser.add_argument("--objects", type=int, default=len(OBJECTS), choices=range(1, len(OBJECTS) + 1),
                        help=f"coloured boxes in the chain (default {len(OBJECTS)}; fewer fit a shorter chain)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more resident run of ours (top ops and kernels over all its stages)")
    args = parser.parse_args(argv)
    diffusers_logging.set_verbosity_error()  # its note on casting models with .to(dtype) is not for us
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run on a GPU machine, or pass --tiny for a CPU smoke run")
    tokens = args.tokens or (128 if args.tiny else 250)
    size = args.size or (64 if args.tiny else 1024)
    render = RenderSettings(width=size, height=size, steps=args.steps or (3 if args.tiny else 50))
    mllm_dtype = torch.float32 if args.tiny else torch.bfloat16
    ours_unet_dtype = torch.float32 if args.tiny else torch.float16
    baseline_dtype = resolve_dtype(args.baseline_unet_dtype)

    with tempfile.TemporaryDirectory() as tmp:
        mllm = build_reasoner(Path(tmp) / "Qwen2.5-VL-3B-Instruct", args.tiny, mllm_dtype, device)
    unet = build_unet(args.tiny, baseline_dtype, device)
    vae = build_vae(device).to(baseline_dtype)
    forced = chain_ids(mllm, tokens, args.objects)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"GoT end to end, one image {size}x{size}, {render.steps} DDPM steps, a {tokens}-token chain with "
          f"{args.objects} coloured boxes, random weights ({sum(p.numel() for p in mllm.model.parameters()) / 1e9:.2f} B "
          f"MLLM, {sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B UNet), on {gpu}; torch {torch.__version__}")

    warm = RenderSettings(width=size, height=size, steps=2)
    warm_up = device == "cuda"  # kernels, cuDNN autotuning, CUDA graph capture; nothing to warm on the CPU
    if warm_up:
        released_loop(mllm, unet, vae, forced, warm, device)
    peak_reset(device)
    base, base_text = released_loop(mllm, unet, vae, forced, render, device)
    peaks = {"released loop": peak_gib(device)}

    # Ours: fp16 UNet (the fp32 one is dropped first), fp32 VAE, everything resident.
    unet = unet.to(ours_unet_dtype)
    vae = vae.to(torch.float32)
    if device == "cuda":
        torch.cuda.empty_cache()
    resident = GoTPipeline(mllm, unet, vae, device=device)
    if warm_up:
        ours(resident, forced, warm, device)
    peak_reset(device)
    fast, fast_note, fast_text = ours(resident, forced, render, device)
    peaks["ours"] = peak_gib(device)
    profile = profile_table(device, lambda: ours(resident, forced, render, device)) if args.profile else None
    if profile:
        print(f"profile of one resident run of ours:\n{profile}")

    offloading = GoTPipeline(mllm, unet, vae, device=device, offload=True)
    if warm_up:
        ours(offloading, forced, warm, device)  # pinned CPU copies are made, UNet/VAE left resident
    if device == "cuda":
        torch.cuda.empty_cache()
    peak_reset(device)
    staged, staged_note, staged_text = ours(offloading, forced, render, device)
    peaks["ours, offload"] = peak_gib(device)

    columns = {"released loop": base, "ours": fast, "ours, offload": staged}
    table(columns, peaks)
    print(f"ours: {fast_note}; with offload: {staged_note}")
    same = base_text == fast_text == staged_text and len(parse_chain(base_text).colored) == args.objects
    print(f"all three wrote the same {tokens}-token chain with {args.objects} coloured boxes: {'yes' if same else 'NO'}")
    offload_peak = peaks["ours, offload"] * 2**30 / 1e9
    print(f"end-to-end speed-up: {base.total / fast.total:.2f}x resident, {base.total / staged.total:.2f}x with "
          f"offload (goal >= {GOAL_SPEEDUP}x); peak VRAM with offload "
          + (f"{offload_peak:.2f} GB (goal <= {GOAL_OFFLOAD_PEAK_GB:g} GB)" if device == "cuda" else "n/a on the CPU"))
    print(f"released loop's UNet/VAE in {str(baseline_dtype)[6:]}, ours: UNet {str(ours_unet_dtype)[6:]}, VAE float32, "
          f"MLLM {str(mllm_dtype)[6:]} in both")
    if args.json:
        on_gpu = device == "cuda"
        results = {
            "device": gpu, "size": size, "steps": render.steps, "tokens": tokens, "objects": args.objects,
            "stages_s": {title: dict(stages.seconds) for title, stages in columns.items()},
            "end_to_end_s": {title: stages.total for title, stages in columns.items()},
            "speedup": base.total / fast.total, "speedup_offload": base.total / staged.total,
            "peak_vram_gb": {title: peak * 2**30 / 1e9 if on_gpu else None for title, peak in peaks.items()},
            "same_chain": same, "ours_note": fast_note, "offload_note": staged_note,
            "dtypes": {"released_unet_vae": str(baseline_dtype)[6:], "ours_unet": str(ours_unet_dtype)[6:],
                       "ours_vae": "float32", "mllm": str(mllm_dtype)[6:]},
            "goal_speedup": GOAL_SPEEDUP, "goal_offload_peak_gb": GOAL_OFFLOAD_PEAK_GB, "profile": profile,
        }
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
