"""Plain-PyTorch references: the oracle of the tests, the baseline of the benchmarks and the
``backend="reference"`` implementation. Each follows the official model's code step by step."""

from .decomp_conv import decomp_conv3d_bwd_ref, decomp_conv3d_module_ref, decomp_conv3d_ref
from .diffusion import ddim_step_ref, ddpm_step_ref, diffusion_loss_ref, normal_ref, q_sample_ref
from .group_norm import group_norm_act_bwd_ref, group_norm_act_ref
from .models import DCFormerRef, MixerLowHighHybridMLPRef, clip_softmax_loss_ref, med3dvlm_sigmoid_loss_ref
from .sigmoid_loss import sigmoid_loss_bwd_ref, sigmoid_loss_ref
from .window_attention import cross_window_attention3d_ref, window_attention3d_bwd_ref, window_attention3d_ref

__all__ = ["DCFormerRef", "MixerLowHighHybridMLPRef", "clip_softmax_loss_ref", "med3dvlm_sigmoid_loss_ref",
           "sigmoid_loss_ref", "sigmoid_loss_bwd_ref", "group_norm_act_ref", "group_norm_act_bwd_ref",
           "q_sample_ref", "ddim_step_ref", "ddpm_step_ref", "diffusion_loss_ref", "normal_ref",
           "decomp_conv3d_ref", "decomp_conv3d_bwd_ref", "decomp_conv3d_module_ref",
           "window_attention3d_ref", "window_attention3d_bwd_ref", "cross_window_attention3d_ref"]
