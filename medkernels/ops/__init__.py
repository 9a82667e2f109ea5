"""Public ops: torch custom ops with autograd and backend dispatch."""

from .decomp_conv import decomp_conv3d
from .diffusion import ddim_step, ddpm_step, diffusion_loss, q_sample
from .group_norm import group_norm_act
from .sigmoid_loss import sigmoid_loss
from .window_attention import cross_window_attention3d, cross_window_attention3d_separate, window_attention3d

__all__ = ["sigmoid_loss", "q_sample", "ddim_step", "ddpm_step", "diffusion_loss",
           "decomp_conv3d", "group_norm_act", "window_attention3d", "cross_window_attention3d",
           "cross_window_attention3d_separate"]
