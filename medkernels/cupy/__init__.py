"""Our CUDA kernels on CuPy arrays without a compiled extension: the sources go through NVRTC.

    import cupy as cp
    from medkernels import cupy as mkc
    y = mkc.decomp_conv3d(x, w_d, w_h, w_w, bias, stride=1, groups=None, activation="gelu")

``cupy.RawModule`` compiles, at the first call and once per process, the same per-thread kernel
bodies the compiled library runs (``csrc/include/medkernels/detail/*.h``, shared with
``medkernels/cuda/*.cuh``), wrapped in ``extern "C"`` kernels. The compiled library's
launch plans (shared-memory tiles, 16-byte vector paths) are not reproduced: every op runs its
generic one-thread-per-output kernel. Forward ops only. cupy is imported by the functions of
this module, never by the rest of the package. ``source()`` is the exact NVRTC input; the tests
compile it with nvcc where NVRTC is absent.

One module per family (medkernels/cupy/<family>.py: its extern "C" wrappers, registered with
``_nvrtc.register``, and its public functions); ``_nvrtc`` holds the shared NVRTC plumbing.
"""

from __future__ import annotations

from ._nvrtc import KERNELS, include_dir, source
from .decomp_conv import decomp_conv3d
from .diffusion import ddim_step, ddpm_step, q_sample
from .group_norm import group_norm_act
from .window_attention import cross_window_attention3d, cross_window_attention3d_separate, window_attention3d

__all__ = ["decomp_conv3d", "q_sample", "ddim_step", "ddpm_step", "group_norm_act", "window_attention3d",
           "cross_window_attention3d", "cross_window_attention3d_separate", "source", "include_dir", "KERNELS"]
