"""Command line: GoT end to end without ComfyUI.

    python -m got_backend generate --prompt "a red apple on a blue plate" --models ComfyUI/models --out apple.png
    python -m got_backend generate --prompt "make the plate green" --image apple.png --models ComfyUI/models --out green.png
    python -m got_backend generate --prompt "..." --chain-file apple.chain.txt --models ComfyUI/models --out edited.png
    python -m got_backend generate --smoke --out smoke.png     # tiny random models, CPU, under a minute

Writes OUT.png (the last image), OUT.chain.txt (the chain; edit it and pass it back with --chain-file),
OUT.layout.png (the boxes of the last image) and, when a run renders several images, OUT.1.png, OUT.2.png, ...
for the earlier ones. The models come from a ComfyUI-style models folder (converted or as released), or
straight from the released folders with --release and --qwen.
"""

from __future__ import annotations

import sys

LOADING = "Loading PyTorch, transformers and diffusers (this takes a few seconds) ..."
if __name__ == "__main__":  # run as a program: the imports below take seconds, so say so before them
    print(LOADING, flush=True)

import argparse
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .chat import ChatModel
from .judge import cli as judge_cli
from .ssgm.guidance import GuidanceScales
from .ssgm.layout import layout_preview
from .weights.models_dir import DEFAULT_NAME, GoTFiles, ModelFilesError, layout_help, locate
from .pipeline import (DEFAULT_SIZE, GoTPipeline, GoTResult, PipelineError, Progress, ReasoningSettings,
                       RenderSettings)
from .ssgm.denoise import DEFAULT_SEED, DEFAULT_STEPS
from .reasoning.sampling import DEFAULT_MAX_NEW_TOKENS
from .errors import GoTError
from .images import ImageInputError
from .reasoning.prompts import PromptError
from .reasoning.turns import Reasoning, TokenEvent

SMOKE_SIZE = 128
SMOKE_STEPS = 8
SMOKE_TOKENS = 16
SMOKE_PROMPT = "a red ball left of a blue cube"
# Random tiny weights never close a chain by themselves, so the smoke run renders this one (the interactive
# path: the same semantic, spatial and reference guidance a reasoned chain gets) and lets the MLLM go on after it.
SMOKE_CHAIN = ("The image shows a <|object_ref_start|>red ball<|object_ref_end|><|box_start|>(80,420),(440,860)"
               "<|box_end|> (red) on the left of a <|object_ref_start|>blue cube<|object_ref_end|><|box_start|>"
               "(540,300),(930,860)<|box_end|> (blue), on a plain background.<|im_gen_start|>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m got_backend", description="GoT end to end without ComfyUI.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="reason a chain and render it (text to image, or an edit)",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=layout_help(Path("ComfyUI/models")))
    gen.add_argument("--prompt", help="the caption (text to image) or the edit instruction (with --image)")
    gen.add_argument("--image", type=Path, help="the image to edit")
    gen.add_argument("--chain-file", type=Path, help="render this (edited) chain instead of reasoning one")
    gen.add_argument("--out", type=Path, required=True, help="the image to write (PNG)")
    where = gen.add_argument_group("models")
    where.add_argument("--models", type=Path, help="ComfyUI's models folder (converted or released GoT)")
    where.add_argument("--name", default=DEFAULT_NAME, help=f"the model's name there (default {DEFAULT_NAME})")
    where.add_argument("--vae", help="a VAE file name in models/vae/ (default: <name>-vae, then sdxl_vae)")
    where.add_argument("--release", type=Path, help="the released GoT-6B folder (instead of --models)")
    where.add_argument("--qwen", type=Path, help="the Qwen2.5-VL-3B-Instruct folder (with --release)")
    where.add_argument("--smoke", action="store_true",
                       help="build tiny random models in a temporary folder and run on them (CPU, < 1 min)")
    render = gen.add_argument_group("rendering (docs/ALGORITHM.md §9)")
    render.add_argument("--width", type=int, default=None,
                        help=f"render width (default {DEFAULT_SIZE}; smoke {SMOKE_SIZE})")
    render.add_argument("--height", type=int, default=None,
                        help=f"render height (default {DEFAULT_SIZE}; smoke {SMOKE_SIZE})")
    render.add_argument("--steps", type=int, default=None,
                        help=f"DDPM steps (default {DEFAULT_STEPS}; smoke {SMOKE_STEPS})")
    render.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"noise seed (default {DEFAULT_SEED})")
    render.add_argument("--scales", type=float, nargs=3, metavar=("A_T", "A_S", "A_R"),
                        help="text, spatial and reference guidance (default 7.5 4 1; edits 4 3 1.5)")
    render.add_argument("--all-branches", action="store_true",
                        help="run all four guidance branches, as the reference (same result, slower)")
    reason = gen.add_argument_group("reasoning")
    reason.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"per turn (default {DEFAULT_MAX_NEW_TOKENS}; smoke {SMOKE_TOKENS})")
    reason.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    reason.add_argument("--temperature", type=float, default=1.0)
    reason.add_argument("--top-p", type=float, default=1.0)
    reason.add_argument("--reasoning-seed", type=int, help="seed for --sample")
    gen.add_argument_group("thinking (Think-Then-Generate, docs/ALGORITHM.md §12)").add_argument(
        "--think", type=Path, metavar="FOLDER",
        help="first let this Qwen2.5-VL folder reason about the prompt and rewrite it (its limit: "
             "--max-new-tokens); GoT's own MLLM folder is used without loading it again. Writes OUT.thinking.txt")
    judge_cli.add_arguments(gen)
    run = gen.add_argument_group("hardware")
    run.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    run.add_argument("--offload", action="store_true",
                     help="keep each model on the GPU only for its stage (less VRAM, some copying)")
    run.add_argument("--plain-decoding", action="store_true",
                     help="Hugging Face's dynamic-cache decoding instead of the fast decoder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return generate(args)
    except GoTError as err:  # input GoT cannot use; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def generate(args: argparse.Namespace) -> int:
    args.judging = judge_cli.wants_judge(args)  # its options are checked before any file is looked at
    if args.smoke:
        with smoke_models() as files:
            return run(args, files, SMOKE_SIZE, SMOKE_STEPS, SMOKE_TOKENS)
    return run(args, model_files(args), DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_MAX_NEW_TOKENS)


def model_files(args: argparse.Namespace) -> GoTFiles:
    if args.release or args.qwen:
        if not (args.release and args.qwen):
            raise ModelFilesError("--release (the GoT-6B folder) and --qwen (the Qwen2.5-VL-3B-Instruct folder) "
                                  "go together")
        if args.vae:
            raise ModelFilesError("--vae names a file in a models folder; with --release the VAE comes from the "
                                  "release (use --models to pick another)")
        return GoTFiles(args.release, args.qwen, None, None)
    if args.models is None:
        raise ModelFilesError("say where GoT's files are: --models ComfyUI/models (or --release and --qwen, or "
                              "--smoke to try tiny random models).\n" + layout_help(Path("ComfyUI/models")))
    return locate(args.models, args.name, args.vae)


@contextmanager
def smoke_models() -> Iterator[GoTFiles]:
    """Tiny random GoT models built in a temporary folder, converted into a models folder."""
    from .convert import convert_release
    from .testing.fixtures import make_tiny_release

    with tempfile.TemporaryDirectory(prefix="got-smoke-") as folder:
        started = time.monotonic()
        print("smoke: building tiny random GoT models (the released layout) ...", flush=True)
        models = Path(folder) / "models"
        models.mkdir()
        with warnings.catch_warnings():  # PEFT's and transformers' notes about building random models
            warnings.simplefilter("ignore")
            try:
                release = make_tiny_release(Path(folder) / "release")
            except RuntimeError as err:  # the tokenizer is rebuilt from the dashscope package
                raise PipelineError(f"--smoke needs the test extras: {err}") from err
            convert_release(release.got_release, release.qwen_base, models)
        print(f"smoke: converted into {models} in {time.monotonic() - started:.1f} s", flush=True)
        yield locate(models)


def run(args: argparse.Namespace, files: GoTFiles, size: int, steps: int, tokens: int) -> int:
    # the libraries' notes to developers (deprecations) mean nothing to a user at the command line
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|diffusers)\.")
    prompt = args.prompt or (SMOKE_PROMPT if args.smoke else None)
    if not prompt:
        raise PromptError("give the caption or edit instruction with --prompt")
    if args.chain_file:
        refuse_overwriting(args.chain_file, args.out)
    chain_text = read_chain(args.chain_file) if args.chain_file else (SMOKE_CHAIN if args.smoke else None)
    if args.smoke and not args.chain_file:
        print("smoke: tiny random weights cannot reason, so the example chain is rendered (interactive path)")
    source = read_image(args.image) if args.image else None
    render = RenderSettings(width=_or(args.width, size), height=_or(args.height, size), steps=_or(args.steps, steps),
                            seed=args.seed, scales=GuidanceScales(*args.scales) if args.scales else None,
                            skip_zero_weight=not args.all_branches)
    reasoning = ReasoningSettings(max_new_tokens=_or(args.max_new_tokens, tokens), do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.reasoning_seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    started = time.monotonic()
    pipeline = GoTPipeline.from_files(files, device=device, offload=args.offload,
                                      decoding="plain" if args.plain_decoding else "fast")
    print(f"loaded GoT on {device} in {time.monotonic() - started:.1f} s", flush=True)
    if args.think:
        prompt = think_first(args, files, pipeline, prompt, source, reasoning)
    if args.judging:
        chat = ChatModel.for_folder(args.judge, pipeline.mllm, files.mllm, device=pipeline.device)
        with ProgressBars(reasoning.max_new_tokens, render.steps) as bars:
            return judge_cli.judged_run(args, pipeline, chat, prompt, chain_text, source, render, reasoning,
                                        bars.progress)
    with ProgressBars(reasoning.max_new_tokens, render.steps) as bars:
        if chain_text is not None:
            result = pipeline.render_chain(prompt, chain_text, source, render=render, reasoning=reasoning,
                                           progress=bars.progress)
        else:
            result = pipeline.generate(prompt, source, render=render, reasoning=reasoning, progress=bars.progress)
    return write_outputs(result, args.out, render)


def think_first(args: argparse.Namespace, files: GoTFiles, pipeline: GoTPipeline, prompt: str,
                source: Image.Image | None, reasoning: ReasoningSettings) -> str:
    """The revised prompt from the --think folder (the original one when it gives none), its thinking written
    to OUT.thinking.txt."""
    from .thinking import MARKER, think

    started = time.monotonic()
    chat = ChatModel.for_folder(args.think, pipeline.mllm, files.mllm, device=pipeline.device)
    with ProgressBars(reasoning.max_new_tokens, 0) as bars:
        pipeline.use_for(chat.model, bars.progress, "thinking")
        thought = think(chat, prompt, source, settings=reasoning, on_token=bars.progress.on_token)
    for note in thought.notes:
        print(f"thinking: {note}", file=sys.stderr)
    path = args.out.with_suffix(".thinking.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{thought.thinking}\n\n{MARKER} {thought.prompt}\n", encoding="utf-8")
    print(f"thought for {time.monotonic() - started:.1f} s ({thought.new_tokens} tokens; thinking -> {path})\n"
          f"revised prompt: {thought.prompt}", flush=True)
    return thought.prompt


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def refuse_overwriting(chain_file: Path, out: Path) -> None:
    """The chain file a user edited is never overwritten by the run's own outputs."""
    for written in (out, out.with_suffix(".chain.txt"), out.with_suffix(".layout.png")):
        if written.resolve() == chain_file.resolve():
            raise PipelineError(f"--out {out} would write {written} over your chain file {chain_file}; choose "
                                f"another --out, e.g. --out {out.with_name(out.stem + '-edited.png')}")


def read_chain(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(f"cannot read the chain file {path}: {err}") from err


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ImageInputError(f"cannot read the image {path}: {err}") from err


def write_outputs(result: GoTResult, out: Path, render: RenderSettings) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    chain_path = out.with_suffix(".chain.txt")
    chain_path.write_text(result.chain_text, encoding="utf-8")
    print(f"chain -> {chain_path}")
    if not result.renders:
        stop = result.turns[-1].stop if result.turns else "nothing"
        print(f"no image: the reasoning stopped on {stop} without asking for an image (<|im_gen_start|>); "
              "raise --max-new-tokens, or finish the chain by hand and pass it with --chain-file", file=sys.stderr)
        return 1
    for index, image in enumerate(result.images[:-1], start=1):
        image.save(out.with_suffix(f".{index}.png"))
    result.images[-1].save(out)
    last = result.renders[-1]
    preview = layout_preview(last.chain, render.width, render.height)
    layout_path = out.with_suffix(".layout.png")
    Image.fromarray((preview * 255).round().byte().numpy()).save(layout_path)
    print(f"image -> {out} ({len(result.images)} rendered; layout -> {layout_path})")
    return 0


class ProgressBars:
    """tqdm bars: tokens per reasoning turn, DDPM steps per image."""

    def __init__(self, max_new_tokens: int, steps: int) -> None:
        self.max_new_tokens, self.steps = max_new_tokens, steps
        self.tokens = self.denoise = None
        self.progress = Progress(on_token=self._token, on_turn=self._turn, on_step=self._step)

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in (self.tokens, self.denoise):
            if bar is not None:
                bar.close()

    def _token(self, event: TokenEvent) -> None:
        from tqdm import tqdm

        if self.tokens is None:
            self.tokens = tqdm(total=self.max_new_tokens, desc="reasoning", unit="tok")
        self.tokens.update(1)

    def _turn(self, reasoning: Reasoning) -> None:
        if self.tokens is not None:
            self.tokens.close()
            self.tokens = None
        print(turn_summary(reasoning), flush=True)

    def _step(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.denoise is None:
            self.denoise = tqdm(total=total, desc="denoising", unit="step")
        self.denoise.update(1)
        if done == total:
            self.denoise.close()
            self.denoise = None


def turn_summary(reasoning: Reasoning) -> str:
    """What a reasoning turn came to, in a user's words."""
    wrote = f"the model wrote {reasoning.new_tokens} tokens" if reasoning.new_tokens else "your chain was read"
    return wrote + {"boi": ": the plan is ready, drawing the image",
                    "vision_start": ": it asks to look at the image it drew",
                    "endoftext": ": it has finished",
                    "max_tokens": " and reached the token limit before finishing its plan"}[reasoning.stop]


if __name__ == "__main__":
    sys.exit(main())
