"""GoT end to end without ComfyUI, step by step as docs/ALGORITHM.md §4-§10 describe the reference inference.

    pipeline = GoTPipeline.from_models_dir("ComfyUI/models", device="cuda")
    result = pipeline.generate("a red apple on a blue plate")             # text to image
    result = pipeline.generate("make the plate green", image=photo)       # edit
    result = pipeline.render_chain(prompt, edited_chain_text)             # interactive: the user's chain
    result.image.save("out.png"); print(result.text)

One run is a conversation with the MLLM (§4): it reasons (§5) until it stops on <|im_gen_start|> (then an
image is rendered from the turn's semantic tokens §6, boxes §7 and reference image §8 by DDPM §9, and
reasoning goes on after the 64 image queries), on <|vision_start|> (the last image is shown to it, §10) or on
<|endoftext|> (done). This is also the oracle the ComfyUI graph is checked against (tests/comfyui/test_parity.py).

Randomness, as the reference: one torch.Generator on the execution device, seeded with RenderSettings.seed,
draws the start noise (in the VAE's dtype) and then the noise of every DDPM step. ComfyUI's GoT DDPM Sampler
follows the same stream drawn on the CPU, so the two agree exactly on a CPU; on a GPU they draw other numbers.

Where this differs from the released loop, the numbers do not: zero-weight guidance branches are skipped
(test_pipeline.py proves the latents equal), the MLLM's KV cache is reused for the semantic tokens and the
boxes are VAE-encoded in one batch (both proven equal in their own modules' tests). Two guards the reference
lacks: a turn that hits the token limit ends the run (the reference would keep generating), and at most
`max_images` images are rendered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .ssgm.chain import GoTChain, parse_chain
from .ssgm.branches import Conditioning
from .ssgm.decode import decode
from .ssgm.denoise import DEFAULT_SEED, DEFAULT_STEPS, StepCallback, check_steps, denoise
from .ssgm.guidance import EDIT_SCALES, T2I_SCALES, GuidanceScales, check_scales
from .ssgm.latents import reference_latent, spatial_latent, vae_mode_encoder
from .ssgm.sizes import check_output_size, source_aspect_size
from .reasoning.mllm import GoTMLLM
from .weights.models_dir import GoTFiles, load_unet, load_vae, locate, unet_from_state, vae_from_state
from .offload import Offloader
from .images import ImageInput, as_rgb_image
from .reasoning.prompts import Task
from .reasoning.turns import Reasoning, TokenEvent
from .reasoning.sampling import ReasoningSettings
from .reasoning.tokens import BOI, IMAGE_QUERY_TOKENS, VISION_START
from .errors import GoTError

DEFAULT_SIZE = 1024
DEFAULT_MAX_IMAGES = 8
_TURN_END = re.compile(f"({re.escape(BOI)}|{re.escape(VISION_START)})")
_IMAGE_QUERY = re.compile("|".join(map(re.escape, IMAGE_QUERY_TOKENS)))


class PipelineError(GoTError):
    """A run that cannot go on: the chain asks for something the conversation does not have."""


@dataclass(frozen=True)
class RenderSettings:
    """How images are rendered (§9). `scales` None: the task's defaults (T2I_SCALES or EDIT_SCALES)."""

    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    seed: int = DEFAULT_SEED
    scales: GuidanceScales | None = None
    skip_zero_weight: bool = True  # False: all four branches in one batch-4 UNet call, as the reference

    def __post_init__(self) -> None:
        check_output_size(self.width, self.height)
        check_steps(self.steps)
        if self.scales is not None:
            check_scales(GuidanceScales(*self.scales))

    def scales_for(self, task: Task) -> GuidanceScales:
        return self.scales or (EDIT_SCALES if task == "edit" else T2I_SCALES)


@dataclass(frozen=True)
class Progress:
    """Callbacks while a run goes on (the CLI draws tqdm bars with them)."""

    on_token: Callable[[TokenEvent], None] | None = None
    on_turn: Callable[[Reasoning], None] | None = None  # after each reasoning turn
    on_step: StepCallback | None = None  # (steps done, steps in all) during denoising
    # entering "reasoning", "semantic", "latents", "denoise", "decode"; "switch" before a stage's models move in
    on_stage: Callable[[str], None] | None = None

    def stage(self, name: str) -> None:
        if self.on_stage is not None:
            self.on_stage(name)


@dataclass(frozen=True)
class Render:
    """One rendered image and what it was made from."""

    reasoning: Reasoning  # the turn that ended with <|im_gen_start|>
    chain: GoTChain  # the boxes of that turn (§10: the current turn's text only)
    latents: torch.Tensor  # the final DDPM latents [1, 4, H/8, W/8] (times the VAE scaling factor)
    image: Image.Image  # decoded at the render size (before the aspect resize of §9)


@dataclass
class GoTResult:
    turns: list[Reasoning] = field(default_factory=list)
    renders: list[Render] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)  # the renders at the source's aspect (§9)

    @property
    def text(self) -> str:
        """The whole chain over all turns, special tokens included."""
        return "".join(turn.text for turn in self.turns)

    @property
    def chain_text(self) -> str:
        """`text` as a user edits it (what the CLI writes and --chain-file reads back): without image-query
        tokens, which the reasoner appends itself after each <|im_gen_start|>."""
        return _IMAGE_QUERY.sub("", self.text)

    @property
    def image(self) -> Image.Image:
        if not self.images:
            stop = self.turns[-1].stop if self.turns else "nothing"
            raise PipelineError(f"the reasoning rendered no image (it stopped on {stop}); raise max_new_tokens "
                                "or end the chain with <|im_gen_start|>")
        return self.images[-1]


def split_chain_turns(text: str) -> list[str]:
    """A (multi-turn) chain text cut after each <|im_gen_start|> and <|vision_start|>: the pieces the MLLM
    writes between images. GoTResult.text joins exactly these back."""
    parts = _TURN_END.split(text)  # text, stop, text, stop, ..., text
    pieces = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
    return pieces + [parts[-1]] if parts[-1] else pieces


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in [0, 1] -> RGB PIL, truncating x * 255 to uint8 as the reference does."""
    array = (pixels[0].permute(1, 2, 0).float().cpu().numpy() * 255).astype(np.uint8)
    return Image.fromarray(array)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> [1, 3, H, W] float32 in [0, 1] (x / 255, which the latents module rounds back exactly)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255


class GoTPipeline:
    """GoT's MLLM, 12-channel UNet and VAE on one device (or, with `offload`, each on it only for its stage)."""

    def __init__(self, mllm: GoTMLLM, unet: torch.nn.Module, vae: torch.nn.Module, *,
                 device: torch.device | str | None = None, offload: bool = False,
                 max_images: int = DEFAULT_MAX_IMAGES) -> None:
        self.mllm, self.unet, self.vae = mllm, unet, vae
        if offload and device is None:
            raise PipelineError("offloading needs the device the stages run on (device='cuda')")
        self.device = _indexed(torch.device(device) if device is not None else unet.device)
        self.offload = offload
        self.max_images = max_images
        self._offloader = Offloader(self.device) if offload else None
        self._resident: str | None = None
        if not offload:
            for model in (mllm, unet, vae):
                if _indexed(model.device) != self.device:
                    model.to(self.device)

    @classmethod
    def from_files(cls, files: GoTFiles, *, device: torch.device | str = "cpu", mllm_dtype: torch.dtype | None = None,
                   unet_dtype: torch.dtype | None = None, vae_dtype: torch.dtype = torch.float32,
                   offload: bool = False, decoding: str = "fast") -> GoTPipeline:
        """Load from located files (see models_dir.locate). Defaults: bf16 MLLM and fp16 UNet on CUDA, fp32 on
        the CPU; fp32 VAE (SDXL's VAE overflows in fp16)."""
        device = torch.device(device)
        on_gpu = device.type == "cuda"
        mllm_dtype = mllm_dtype or (torch.bfloat16 if on_gpu else torch.float32)
        unet_dtype = unet_dtype or (torch.float16 if on_gpu else torch.float32)
        home = "cpu" if offload else device
        if files.released:
            from .weights.checkpoint import read_got_checkpoint

            weights = read_got_checkpoint(files.mllm, files.qwen_base)
            mllm = GoTMLLM.from_release(files.mllm, files.qwen_base, mllm_dtype, home, decoding, weights)
            unet = unet_from_state(weights.unet, weights.unet_config, unet_dtype, home, str(files.mllm))
            if files.vae is not None:
                vae = load_vae(files.vae, vae_dtype, home)
            elif weights.vae is not None:
                vae = vae_from_state(weights.vae, weights.vae_config, vae_dtype, home, str(files.mllm))
            else:
                raise PipelineError(f"the checkpoint {files.mllm} holds no VAE; put SDXL's VAE into models/vae/ "
                                    "(sdxl_vae.safetensors) and name it with vae=")
        else:
            mllm = GoTMLLM.from_converted(files.mllm, mllm_dtype, home, decoding)
            unet = load_unet(files.unet, unet_dtype, home)
            vae = load_vae(files.vae, vae_dtype, home)
        return cls(mllm, unet, vae, device=device, offload=offload)

    @classmethod
    def from_models_dir(cls, models_dir: str | Path, *, name: str = "GoT-6B", vae: str | None = None,
                        **kwargs) -> GoTPipeline:
        """Load GoT from a ComfyUI-style models folder, converted or as released (models_dir.locate)."""
        return cls.from_files(locate(models_dir, name, vae), **kwargs)

    # The run: reasoning and rendering, turn by turn

    def generate(self, prompt: str, image: ImageInput | None = None, *,
                 render: RenderSettings = RenderSettings(), reasoning: ReasoningSettings = ReasoningSettings(),
                 progress: Progress = Progress()) -> GoTResult:
        """Text to image (no `image`) or an edit of `image`: the MLLM reasons, images are rendered."""
        source = as_rgb_image(image, "source image") if image is not None else None
        return self._run(self.reason(prompt, source, reasoning, progress), [], source, render, reasoning, progress)

    def reason(self, prompt: str, image: ImageInput | None = None, settings: ReasoningSettings = ReasoningSettings(),
               progress: Progress = Progress(), assistant_prefix: str = "") -> Reasoning:
        """The first reasoning turn (§4, §5), with the MLLM on the device."""
        self.use_stage("reason", progress, "reasoning")
        return self.mllm.reason(prompt, image, assistant_prefix=assistant_prefix, settings=settings,
                                on_token=progress.on_token)

    def render_chain(self, prompt: str, chain_text: str, image: ImageInput | None = None, *,
                     render: RenderSettings = RenderSettings(), reasoning: ReasoningSettings = ReasoningSettings(),
                     progress: Progress = Progress()) -> GoTResult:
        """Interactive generation (§5): render from a chain the user wrote or edited, skipping the MLLM's
        own reasoning where the text says what to write. Semantic tokens are recomputed from the edited text,
        the layout comes from its boxes. A multi-turn chain (as GoTResult.text writes it) is replayed turn by
        turn; where the text ends without a stop token, the MLLM goes on writing from it."""
        source = as_rgb_image(image, "source image") if image is not None else None
        pieces = split_chain_turns(chain_text)
        if not pieces:
            raise PipelineError("the chain text is empty: give the chain to render (ending with <|im_gen_start|>)")
        self.use_stage("reason", progress, "reasoning")
        if pieces[0].endswith(BOI):
            first = self.mllm.user_chain(prompt, pieces[0], source)
        else:
            first = self.reason(prompt, source, reasoning, progress, assistant_prefix=pieces[0])
        return self._run(first, pieces[1:], source, render, reasoning, progress)

    def _run(self, turn: Reasoning, pieces: list[str], source: Image.Image | None, render: RenderSettings,
             settings: ReasoningSettings, progress: Progress) -> GoTResult:
        """The reference's loop (§10): render at <|im_gen_start|>, show the last image at <|vision_start|>,
        end at <|endoftext|> (or at the token limit, or after max_images images)."""
        result = GoTResult()
        while True:
            result.turns.append(turn)
            if progress.on_turn is not None:
                progress.on_turn(turn)
            shown = None
            if turn.stop == "boi":
                if len(result.renders) == self.max_images:
                    break
                reference = result.renders[-1].image if result.renders else source
                result.renders.append(self.render_turn(turn, reference, render, progress))
            elif turn.stop == "vision_start":
                if not result.renders:
                    raise PipelineError("the chain asks to look at the last rendered image (<|vision_start|>) "
                                        "before any image was rendered (<|im_gen_start|>)")
                shown = result.renders[-1].image
            else:
                break
            self.use_stage("reason", progress, "reasoning")
            turn = self.mllm.continue_reasoning(turn, shown, assistant_prefix=pieces.pop(0) if pieces
                                                     else "", settings=settings, on_token=progress.on_token)
        size = source.size if source is not None else (render.width, render.height)
        final = source_aspect_size(size, min(render.width, render.height))
        result.images = [r.image.resize(final, Image.Resampling.BICUBIC) for r in result.renders]
        return result

    # One image from one turn: §6-§9

    def render_turn(self, turn: Reasoning, reference: Image.Image | None, render: RenderSettings,
                    progress: Progress = Progress()) -> Render:
        """Render the image a turn ending with <|im_gen_start|> asks for; `reference` is the image being
        edited (the source, or the last output in a multi-turn edit), None for text to image."""
        cond, chain = self.conditioning(turn, reference, render.width, render.height, progress)
        self.use_stage("unet", progress, "denoise")
        generator = torch.Generator(self.device).manual_seed(render.seed)
        latents = denoise(self.unet, cond, render.scales_for(turn.task), width=render.width,  # §9
                          height=render.height, steps=render.steps, generator=generator,
                          latent_dtype=self.vae.dtype, skip_zero_weight=render.skip_zero_weight,
                          on_step=progress.on_step)
        self.use_stage("vae", progress, "decode")
        return Render(turn, chain, latents, to_pil(decode(self.vae, latents)))

    def conditioning(self, turn: Reasoning, reference: Image.Image | None, width: int, height: int,
                     progress: Progress = Progress()) -> tuple[Conditioning, GoTChain]:
        """What the UNet is conditioned on for this turn, and the turn's boxes."""
        self.use_stage("reason", progress, "semantic")
        semantic = self.mllm.semantic_guidance(turn)                                          # §6
        self.use_stage("vae", progress, "latents")
        chain = parse_chain(turn.text, drawn_after=turn.layout_breaks)  # §5/§7, this turn only (§10)
        encode = vae_mode_encoder(self.vae)
        pixels = pil_to_tensor(reference) if reference is not None else None
        cond = Conditioning(context=semantic.context, null_context=semantic.null_context, pooled=semantic.pooled,
                            reference=reference_latent(pixels, encode, width, height),                # §8
                            spatial=spatial_latent(chain, encode, width, height))                     # §7
        return cond, chain

    # Where the models live

    def use_stage(self, stage: str, progress: Progress, event: str) -> None:
        """Announce `event` after putting the stage's models on the device (a move is announced as "switch")."""
        if self._offloader is not None and self._resident != stage:
            progress.stage("switch")
            self._stage(stage)
        progress.stage(event)

    def use_for(self, model: torch.nn.Module, progress: Progress, event: str) -> None:
        """Announce `event` (the judge's or the thinker's turn) with `model` ready to answer: GoT's own MLLM is
        put back on the device with its stage (with offload it was moved out for rendering); another model
        stays where it was loaded."""
        if model is self.mllm.model:
            self.use_stage("reason", progress, event)
        else:
            progress.stage(event)

    def _stage(self, stage: str) -> None:
        """With offload, only the stage's models are on the device: the MLLM to "reason", the VAE to encode
        and decode ("vae"), the UNet to "unet". So the peak is one stage's, not the sum. The MLLM's KV cache
        (GPU memory) is dropped when it leaves."""
        if self._offloader is None or self._resident == stage:
            return
        if self._resident == "reason":
            self.mllm.release_caches()
        wanted = self._parts(stage)
        leaving = self._parts(self._resident) if self._resident else self._parts("reason") + self._parts("render")
        for module in leaving:
            if module not in wanted:
                self._offloader.unload(module)
        for module in wanted:
            self._offloader.load(module)
        self._resident = stage

    def _parts(self, stage: str) -> tuple[torch.nn.Module, ...]:
        return {"reason": (self.mllm.model, self.mllm.output_projector, self.mllm.output_projector_add),
                "vae": (self.vae,), "unet": (self.unet,), "render": (self.unet, self.vae)}[stage]


def _indexed(device: torch.device) -> torch.device:
    """"cuda" as the "cuda:N" that tensors report, so that devices compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
