"""Few-step diffusion (Fast-DDPM): schedules, fused noising/sampling steps with in-kernel Philox
noise, the fused training loss and the S-step sampler.

Training step (the noise is never stored: the loss regenerates it from the same seed/offset)::

    sched = FastDDPMSchedule("non-uniform", steps=10)
    t = sched.sample_timesteps(x0.shape[0], device=x0.device)        # antithetic pairs
    x_t = q_sample(x0, t, schedule=sched, seed=step, offset=0)
    eps_pred = model(torch.cat([cond, x_t], 1), t.float())
    loss = diffusion_loss(eps_pred, x0, t, step, schedule=sched, offset=0)
    loss.backward()

Sampling (one fused step per timestep; step i draws noise (seed, offset + i))::

    x = FastDDPMSampler(model, sched, kind="ddim", eta=0.0)(torch.randn_like(x0), cond, seed=0)

The same (seed, offset) gives the same noise on every backend, device and dtype; see the noise
contract in :mod:`medkernels.reference.diffusion`.
"""

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
