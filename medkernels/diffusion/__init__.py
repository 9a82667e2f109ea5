"""Few-step diffusion (Fast-DDPM): schedules, fused noising/sampling steps with in-kernel Philox
noise, the fused training loss and the S-step sampler."""

from ..ops.diffusion import ddim_step, ddpm_step, diffusion_loss, q_sample, randn
from .sampler import FastDDPMSampler
from .schedule import FastDDPMSchedule, fast_ddpm_timesteps, make_betas

__all__ = [
    "FastDDPMSampler",
    "FastDDPMSchedule",
    "fast_ddpm_timesteps",
    "make_betas",
    "q_sample",
    "ddim_step",
    "ddpm_step",
    "diffusion_loss",
    "randn",
]
