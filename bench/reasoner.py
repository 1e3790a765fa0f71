"""Reasoner decoding speed: transformers' default `generate` (dynamic cache) against GoT's fast decoder.

Builds the full-size Qwen2.5-VL-3B architecture with random weights on the GPU (nothing is downloaded; the
tokenizer is the real Qwen BPE rebuilt by the test fixtures), then measures in one run, at batch 1 and greedy:
decode tokens/s of each path and their ratio, time to first token (text-to-image and edit prompts), peak VRAM,
the CUDA-graph capture time, and whether both paths chose the same tokens. Stop tokens are suppressed in both
paths so that every run decodes exactly --tokens tokens.

    python bench/reasoner.py                 # H100-class GPU, bf16
    python bench/reasoner.py --tiny          # smoke run on the CPU with the tiny test model
    python bench/reasoner.py --json out.json # also write the figures as JSON (bench/gpu_check.py reads them)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import (AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration,  # noqa: E402
                          SuppressTokensLogitsProcessor)

from got_backend.testing.fixtures import make_qwen_base, qwen_config  # noqa: E402
from got_backend.reasoning.mllm import GoTMLLM, resolve_dtype  # noqa: E402
from got_backend.reasoning.prompts import chat_messages, condition_image, instruction  # noqa: E402
from got_backend.reasoning.tokens import add_got_tokens  # noqa: E402

PROMPT = "A cozy reading corner with a green armchair, a floor lamp and a cat asleep on a stack of books"
EDIT = "Replace the armchair with a red sofa"
GOAL_TOKENS_PER_SECOND = 250  # on an H100-class GPU, bf16, batch 1


def qwen25_vl_3b_config() -> dict:
    """Qwen2.5-VL-3B-Instruct's config.json (the published sizes)."""
    config = qwen_config()
    config.update(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_hidden_layers=36,
                  num_key_value_heads=2, max_window_layers=70,
                  rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
    config["vision_config"].update(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                   out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31])
    return config


def build_reasoner(folder: Path, tiny: bool, dtype: torch.dtype, device: str) -> GoTMLLM:
    make_qwen_base(folder)
    if not tiny:
        (folder / "config.json").write_text(json.dumps(qwen25_vl_3b_config()))
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa").to(dtype)
    processor = AutoProcessor.from_pretrained(folder)
    add_got_tokens(processor.tokenizer)
    hidden = config.get_text_config().hidden_size
    projectors = [torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1280 if not tiny else 32)]
    return GoTMLLM(model, processor, *(p.to(device) for p in projectors), decoding="fast")


def agreeing(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """How many tokens two greedy runs share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def profile_table(device: str, work, rows: int = 15) -> str:
    """torch.profiler's summary of `work()`: the ops and kernels with the most self time on the device."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        work()
        sync(device)
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=rows)


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def generate_baseline(mllm: GoTMLLM, inputs: dict, tokens: int, device: str) -> tuple[list[int], float]:
    """transformers' generate with its default dynamic cache, greedy, stop tokens suppressed."""
    stops = list(mllm.tokens.stop_ids)
    sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        out = mllm.model.generate(**inputs, max_new_tokens=tokens, do_sample=False, suppress_tokens=stops,
                                  eos_token_id=stops, pad_token_id=mllm.tokens.endoftext)
    sync(device)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), time.perf_counter() - started


def baseline_inputs(mllm: GoTMLLM, image) -> dict:
    text = instruction(EDIT, "edit") if image is not None else instruction(PROMPT, "t2i")
    chat = mllm.processor.apply_chat_template(chat_messages(text, image is not None), tokenize=False,
                                              add_generation_prompt=True)
    images = [condition_image(image)] if image is not None else None
    batch = mllm.processor(text=[chat], images=images, return_tensors="pt")
    return {k: v.to(mllm.device) for k, v in batch.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test model on the CPU (smoke run)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per run (default 256; 32 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="bf16 (GPU default), fp16 or fp32 (--tiny default)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--profile", action="store_true",
                        help="after the measurements, profile one more run of ours (top ops and kernels)")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run on a GPU machine, or pass --tiny for a CPU smoke run")
    tokens = args.tokens or (32 if args.tiny else 256)
    dtype = resolve_dtype(args.dtype or ("fp32" if args.tiny else "bf16"))

    with tempfile.TemporaryDirectory() as tmp:
        mllm = build_reasoner(Path(tmp) / "Qwen2.5-VL-3B-Instruct", args.tiny, dtype, device)
    params = sum(p.numel() for p in mllm.model.parameters()) / 1e9
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    model = "the tiny test model" if args.tiny else "the Qwen2.5-VL-3B architecture"
    print(f"{model} ({params:.2f} B parameters, random weights), {str(dtype)[6:]}, batch 1, "
          f"{tokens} greedy tokens, on {gpu}; torch {torch.__version__}")
    source = torch.rand(1, 3, 768, 1024, generator=torch.Generator().manual_seed(0))
    suppress = [SuppressTokensLogitsProcessor(list(mllm.tokens.stop_ids), device=device)]

    # Baseline: transformers' generate with the dynamic cache.
    t2i_inputs, edit_inputs = baseline_inputs(mllm, None), baseline_inputs(mllm, source)
    generate_baseline(mllm, t2i_inputs, 4, device)  # warm-up
    base_ttft = statistics.median(generate_baseline(mllm, t2i_inputs, 1, device)[1] for _ in range(args.repeats))
    base_edit_ttft = statistics.median(generate_baseline(mllm, edit_inputs, 1, device)[1] for _ in range(args.repeats))
    peak_reset(device)
    runs = [generate_baseline(mllm, t2i_inputs, tokens, device) for _ in range(args.repeats)]
    base_peak = peak_gib(device)
    base_tokens, base_seconds = runs[0][0], statistics.median(seconds for _, seconds in runs)
    base_rate = (tokens - 1) / max(base_seconds - base_ttft, 1e-9)

    # Ours: the first call captures the CUDA graph. Each run prefills from scratch (no reuse of the prompt).
    def fresh(prompt: str, image=None, count: int = tokens, reasoner: GoTMLLM = mllm):
        reasoner.clear_context()
        return reasoner.reason(prompt, image, max_new_tokens=count, logits_processor=suppress)

    fallback = GoTMLLM(mllm.model, mllm.processor, mllm.output_projector, mllm.output_projector_add,
                       decoding="plain")
    plain = fresh(PROMPT, reasoner=fallback)
    fallback.release_caches()

    peak_reset(device)
    first = fresh(PROMPT)
    ours = [fresh(PROMPT) for _ in range(args.repeats)]
    edit = [fresh(EDIT, source, 1) for _ in range(args.repeats)]
    ours_peak = peak_gib(device)
    rate = statistics.median(r.stats.tokens_per_second for r in ours)
    ttft = statistics.median(r.stats.time_to_first_token for r in ours)
    edit_ttft = statistics.median(r.stats.time_to_first_token for r in edit)
    same, same_plain = agreeing(base_tokens, first.token_ids), agreeing(plain.token_ids, first.token_ids)

    print(f"{'path':<46}{'decode tok/s':>13}{'TTFT t2i':>10}{'TTFT edit':>11}{'peak VRAM':>11}")
    print(f"{'transformers generate, dynamic cache (baseline)':<46}{base_rate:>13.1f}{base_ttft:>9.3f}s"
          f"{base_edit_ttft:>10.3f}s{base_peak:>9.2f}GiB")
    print(f"{'GoT reasoner, plain decoder (the fallback)':<46}{plain.stats.tokens_per_second:>13.1f}"
          f"{plain.stats.time_to_first_token:>9.3f}s")
    print(f"{'GoT reasoner, ' + first.stats.decoder + ' decoder':<46}{rate:>13.1f}{ttft:>9.3f}s"
          f"{edit_ttft:>10.3f}s{ours_peak:>9.2f}GiB")
    print(f"speed-up: {rate / base_rate:.2f}x (goal: >= {GOAL_TOKENS_PER_SECOND} tok/s and >= 7.5x on an H100)   "
          f"end-to-end {tokens} tokens: baseline {base_seconds:.3f}s, ours "
          f"{statistics.median(r.stats.time_to_first_token + r.stats.decode_seconds for r in ours):.3f}s")

    print(f"CUDA graph capture (first call only): {first.stats.capture_seconds:.3f}s"
          + (f"; note: {mllm.decoder_note}" if mllm.decoder_note else ""))
    print(f"greedy tokens identical to the baseline: {same}/{len(base_tokens)}"
          + ("" if same == len(base_tokens) else f" (first difference at token {same})")
          + f"; to the plain decoder: {same_plain}/{len(plain.token_ids)}")
    profile = profile_table(device, lambda: fresh(PROMPT)) if args.profile else None
    if profile:
        print(f"profile of one {tokens}-token run of ours:\n{profile}")
    if args.json:
        results = {
            "device": gpu, "dtype": str(dtype)[6:], "parameters_b": round(params, 3), "tokens": tokens,
            "decoder": first.stats.decoder, "decoder_note": mllm.decoder_note,
            "ours_tok_s": rate, "hf_generate_tok_s": base_rate, "plain_decoder_tok_s": plain.stats.tokens_per_second,
            "speedup": rate / base_rate, "ttft_t2i_s": ttft, "ttft_edit_s": edit_ttft, "hf_ttft_t2i_s": base_ttft,
            "hf_ttft_edit_s": base_edit_ttft, "capture_s": first.stats.capture_seconds,
            "peak_vram_gib": ours_peak if device == "cuda" else None,
            "hf_peak_vram_gib": base_peak if device == "cuda" else None,
            "tokens_agree_hf": same, "tokens_agree_plain": same_plain, "tokens_compared": len(base_tokens),
            "goal_tok_s": GOAL_TOKENS_PER_SECOND, "profile": profile,
        }
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
