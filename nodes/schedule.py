"""GoT DDPM Schedule and GoT DDPM Sampler: the released GoT's sampling (diffusers' DDPMScheduler with SDXL's
config, "leading" timesteps) in ComfyUI, so that a graph reproduces the reference pipeline number for number.

ComfyUI's `ddpm` sampler takes the same DDPM step (posterior mean and "fixed small" variance) in sigma space.
Three things differ from diffusers' loop, and these two nodes set them:
- the timesteps: diffusers visits 981, 961, ..., 1 for 50 steps ("leading": every 1000 // steps, plus 1).
  ComfyUI's `ddim_uniform` scheduler gives the same ones for 50 steps (its sigmas equal to float rounding),
  but not for every count: it strides by 1000 // steps from 1 up to the top of the schedule, so 30 steps
  become 31 from 991 (diffusers: 958, ..., 1) and 64 become 67 from 991 (diffusers: 946, ..., 1). GoT DDPM
  Schedule returns the model's sigmas at diffusers' timesteps for any step count, then 0 (the last step goes
  to the clean image).
- the start: diffusers starts from unit noise (init_noise_sigma = 1) at the first timestep; ComfyUI starts a
  schedule below sigma_max from noise * sigma. The sampler starts as diffusers does.
- the noise each step adds: diffusers draws it from the generator that drew the start noise, continuing its
  stream; ComfyUI's default noise sampler restarts a generator from the seed. The sampler continues the stream
  of ComfyUI's start noise (RandomNoise draws it on the CPU from the seed), so with the same seed the step noise
  is the pipeline's whenever the pipeline's generator is a CPU one (always on a CPU machine).
"""

from __future__ import annotations

import torch
from typing_extensions import override
from comfy_api.latest import io

import comfy.k_diffusion.sampling
import comfy.samplers

from ..got_backend.ssgm.denoise import DEFAULT_STEPS, MAX_STEPS, ddpm_timesteps


class DiffusersDDPMSampler(comfy.samplers.KSAMPLER):
    """ComfyUI's DDPM step, started and fed with noise as diffusers' DDPMScheduler loop is."""

    def __init__(self) -> None:
        super().__init__(sample_ddpm_continued)

    @override
    def max_denoise(self, model_wrap, sigmas) -> bool:
        # ComfyUI then scales the start noise by sqrt(1 + sigma^2): unit variance in DDPM's x_t, as diffusers.
        return True


def continued_noise(x: torch.Tensor, seed: int | None):
    """Step noise from the CPU stream seeded with `seed`, after the start noise that stream already gave."""
    generator = torch.Generator("cpu").manual_seed(0 if seed is None else seed)
    torch.randn(x.shape, generator=generator)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator).to(x.device, x.dtype)


@torch.no_grad()
def sample_ddpm_continued(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                          callback=None, disable: bool | None = None) -> torch.Tensor:
    seed = (extra_args or {}).get("seed")
    return comfy.k_diffusion.sampling.sample_ddpm(model, x, sigmas, extra_args, callback, disable,
                                                  noise_sampler=continued_noise(x, seed))


class GoTDDPMSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTDDPMSchedule",
            display_name="GoT DDPM Schedule",
            category="GoT/sampling",
            description="The timesteps GoT's released pipeline samples (diffusers' DDPM with SDXL's config, "
                        "'leading' spacing: 981, 961, ..., 1 for 50 steps) as sigmas of this model. Use with the "
                        "GoT DDPM Sampler to reproduce the reference images.",
            inputs=[
                io.Model.Input("model", tooltip="GoT's UNet (GoT UNet Loader): its noise schedule gives the sigmas."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS,
                             tooltip="DDPM steps; GoT uses 50."),
            ],
            outputs=[io.Sigmas.Output("sigmas", display_name="sigmas",
                                      tooltip="The model's sigmas at GoT's DDPM timesteps, then 0.")],
        )

    @classmethod
    def execute(cls, model, steps: int) -> io.NodeOutput:
        sampling = model.get_model_object("model_sampling")
        sigmas = sampling.sigma(torch.tensor(ddpm_timesteps(steps), dtype=torch.float32))
        return io.NodeOutput(torch.cat([sigmas.cpu().float(), torch.zeros(1)]))


class GoTDDPMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTDDPMSampler",
            display_name="GoT DDPM Sampler",
            category="GoT/sampling",
            description="DDPM as GoT's released pipeline runs it (diffusers' DDPMScheduler): starts from unit "
                        "noise at the first timestep and adds step noise that continues the seed's random "
                        "stream. With the GoT DDPM Schedule, RandomNoise and the GoT Guider it reproduces the "
                        "reference pipeline (python -m got_backend generate) on the CPU.",
            inputs=[],
            outputs=[io.Sampler.Output("sampler", display_name="sampler",
                                       tooltip="For SamplerCustomAdvanced, with GoT DDPM Schedule's sigmas.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(DiffusersDDPMSampler())


NODES: list[type[io.ComfyNode]] = [GoTDDPMSchedule, GoTDDPMSampler]
