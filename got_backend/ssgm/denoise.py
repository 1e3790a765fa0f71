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
    check_output_size(width, height)
    cond.check(width, height)
    device, unet_dtype = unet.device, unet.dtype
    scheduler = sdxl_ddpm_scheduler()
    scheduler.set_timesteps(check_steps(steps), device=device)
    latents = initial_latents(width, height, generator, latent_dtype, device, scheduler)

    branches = needed_branches(*scales) if skip_zero_weight else BRANCHES
    context, extra = (t.to(device, unet_dtype) for t in branch_batch(cond, branches))
    batch = len(branches)
    # [1, ...] for the whole batch, as the reference passes them (the UNet broadcasts the added embedding)
    added = {"text_embeds": cond.pooled.to(device, unet_dtype),
             "time_ids": add_time_ids(width, height).to(device, unet_dtype)}

    for index, t in enumerate(scheduler.timesteps):
        noisy = scheduler.scale_model_input(latents, t).to(unet_dtype).expand(batch, -1, -1, -1)
        eps = unet(torch.cat([noisy, extra], dim=1), t, encoder_hidden_states=context,
                   added_cond_kwargs=added, return_dict=False)[0].to(latent_dtype)
        if skip_zero_weight:
            guided = combine_branches(dict(zip(branches, eps.split(1))), *scales)
        else:
            guided = combine_got_cfg(*eps.split(1), *scales)
        latents = scheduler.step(guided, t, latents, generator=generator, return_dict=False)[0]
        if on_step is not None:
            on_step(index + 1, steps)
    return latents
