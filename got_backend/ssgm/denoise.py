"""GoT's denoising loop (docs/ALGORITHM.md §9): DDPM with SDXL's scheduler, a 12-channel UNet, four guidance branches.

The reference runs the four branches C, T, I, U as one UNet call of batch 4 and steps diffusers'
DDPMScheduler with the generator that drew the starting noise. `denoise` does the same; with
`skip_zero_weight=True` (the default) it leaves out the branches whose guidance weight is 0 (U at the
text-to-image defaults), which gives the same latents up to float rounding (tests/test_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from .branches import Conditioning, add_time_ids, branch_batch
from .guidance import BRANCHES, GuidanceScales, combine_branches, combine_got_cfg, needed_branches
from .sizes import check_output_size
from ..errors import GoTError

# SDXL-base's scheduler_config.json, which the reference loads (clip_sample and thresholding off).
SDXL_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False,
    "thresholding": False, "sample_max_value": 1.0, "variance_type": "fixed_small",
}
DEFAULT_STEPS = 50
DEFAULT_SEED = 42

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


class DenoiseError(GoTError):
    """Inputs to the denoising loop that do not fit together."""


def sdxl_ddpm_scheduler() -> DDPMScheduler:
    """A fresh DDPMScheduler with SDXL's config."""
    return DDPMScheduler(**SDXL_SCHEDULER_CONFIG)


def ddpm_timesteps(steps: int = DEFAULT_STEPS) -> list[int]:
    """The timesteps the reference visits, e.g. 981, 961, ..., 1 for 50 steps ("leading" spacing, offset 1)."""
    scheduler = sdxl_ddpm_scheduler()
    scheduler.set_timesteps(check_steps(steps))
    return [int(t) for t in scheduler.timesteps]


MAX_STEPS = 999  # at 1000 steps "leading" spacing visits t=1000, one past the 1000-entry schedule


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise DenoiseError(f"DDPM steps must be a whole number from 1 to {MAX_STEPS} (GoT uses 50), got {steps!r}")
    return steps


def initial_latents(width: int, height: int, generator: torch.Generator, dtype: torch.dtype,
                    device: torch.device, scheduler: DDPMScheduler) -> torch.Tensor:
    """The starting noise [1, 4, H/8, W/8], drawn in `dtype` (the reference uses the VAE's dtype)."""
    noise = randn_tensor((1, 4, height // 8, width // 8), generator=generator, device=device, dtype=dtype)
    return noise * scheduler.init_noise_sigma


@torch.no_grad()
def denoise(unet: UNet2DConditionModel, cond: Conditioning, scales: GuidanceScales, *, width: int, height: int,
            steps: int = DEFAULT_STEPS, generator: torch.Generator, latent_dtype: torch.dtype,
            skip_zero_weight: bool = True, on_step: StepCallback | None = None) -> torch.Tensor:
    """Run DDPM from seeded noise to the final latents [1, 4, H/8, W/8] (in the scheduler's space, i.e. still
    multiplied by the VAE's scaling factor).

    `generator` draws the starting noise and then, as in the reference, the noise each DDPM step adds.
    Latents stay in `latent_dtype`; the UNet's inputs are cast to the UNet's dtype and its prediction back.
    """
    run = DenoiseRun(unet, cond, scales, width=width, height=height, steps=steps, generator=generator,
                     latent_dtype=latent_dtype, skip_zero_weight=skip_zero_weight)
    while not run.finished:
        run.step()
        if on_step is not None:
            on_step(run.done, steps)
    return run.latents


class DenoiseRun:
    """`denoise` one DDPM step at a time, so that several candidates can be run in lockstep, looked at between
    steps (`predicted_x0`: the scheduler's estimate of the final latents) and left unfinished (docs/ALGORITHM.md
    §13). Stepping a run to the end gives exactly `denoise`'s latents."""

    def __init__(self, unet: UNet2DConditionModel, cond: Conditioning, scales: GuidanceScales, *, width: int,
                 height: int, steps: int = DEFAULT_STEPS, generator: torch.Generator, latent_dtype: torch.dtype,
                 skip_zero_weight: bool = True) -> None:
        check_output_size(width, height)
        cond.check(width, height)
        self.unet, self.scales, self.generator = unet, scales, generator
        self.latent_dtype, self.skip_zero_weight = latent_dtype, skip_zero_weight
        device, unet_dtype = unet.device, unet.dtype
        self.scheduler = sdxl_ddpm_scheduler()
        self.scheduler.set_timesteps(check_steps(steps), device=device)
        self.latents = initial_latents(width, height, generator, latent_dtype, device, self.scheduler)
        self.predicted_x0: torch.Tensor | None = None  # after the first step
        self.done = 0  # steps taken

        self.branches = needed_branches(*scales) if skip_zero_weight else BRANCHES
        self.context, self.extra = (t.to(device, unet_dtype) for t in branch_batch(cond, self.branches))
        # [1, ...] for the whole batch, as the reference passes them (the UNet broadcasts the added embedding)
        self.added = {"text_embeds": cond.pooled.to(device, unet_dtype),
                      "time_ids": add_time_ids(width, height).to(device, unet_dtype)}

    @property
    def steps(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def finished(self) -> bool:
        return self.done == self.steps

    @torch.no_grad()
    def step(self) -> None:
        """One UNet call (all needed branches batched) and one DDPM step."""
        t = self.scheduler.timesteps[self.done]
        noisy = self.scheduler.scale_model_input(self.latents, t).to(self.unet.dtype)
        noisy = noisy.expand(len(self.branches), -1, -1, -1)
        eps = self.unet(torch.cat([noisy, self.extra], dim=1), t, encoder_hidden_states=self.context,
                        added_cond_kwargs=self.added, return_dict=False)[0].to(self.latent_dtype)
        if self.skip_zero_weight:
            guided = combine_branches(dict(zip(self.branches, eps.split(1))), *self.scales)
        else:
            guided = combine_got_cfg(*eps.split(1), *self.scales)
        self.latents, self.predicted_x0 = self.scheduler.step(guided, t, self.latents, generator=self.generator,
                                                              return_dict=False)
        self.done += 1


class NonFiniteLatentError(DenoiseError):
    """Sampling produced NaN or infinite latents (which would decode to a black or garbage image)."""


def check_finite_latents(latents: torch.Tensor, cause: str) -> torch.Tensor:
    """`latents` if every value is finite, else a NonFiniteLatentError that names the likely `cause`."""
    bad = int((~torch.isfinite(latents)).sum())
    if bad:
        raise NonFiniteLatentError(f"the sampled latent holds {bad:,} NaN or infinite values (of {latents.numel():,}), "
                                   f"so it cannot be decoded into an image: {cause}")
    return latents
