"""medkernels' CPU decomposed 3D convolution inside ``jax.jit``, through the XLA FFI.

    import decomp_conv_jax
    decomp_conv_jax.register("build/libmedkernels_jax_ffi.so")
    y = jax.jit(decomp_conv_jax.decomp_conv3d, static_argnames=("stride", "groups", "activation"))(x, w_d, w_h, w_w)

Build the handler library with this folder's CMakeLists.txt (see there). Forward only: wrap it in
``jax.custom_vjp`` with the C ABI's backward for training.
"""

from __future__ import annotations

import ctypes

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "medkernels_decomp_conv3d"
ACTIVATIONS = {None: 0, "gelu": 1, "relu": 2, "silu": 3}
_lib = None


def register(library_path: str) -> None:
    """Load the handler library and register its handlers (CPU; CUDA too when built so), once per process."""
    global _lib
    if _lib is not None:
        return
    _lib = ctypes.cdll.LoadLibrary(library_path)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_lib.MedkernelsDecompConv3d), platform="cpu")
    if hasattr(_lib, "MedkernelsDecompConv3dCuda"):  # built against a CUDA medkernels::core
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_lib.MedkernelsDecompConv3dCuda), platform="CUDA")


def decomp_conv3d(x, w_d, w_h, w_w, bias=None, stride: int = 1, groups=None, activation=None):
    """y = act(conv_d(x) + conv_h(x) + conv_w(x) + bias); x (N, C_in, D, H, W), w_* (C_out, C_in/groups, k)."""
    groups = x.shape[1] if groups is None else groups
    out = jax.ShapeDtypeStruct((x.shape[0], w_d.shape[0], *((s - 1) // stride + 1 for s in x.shape[2:])), x.dtype)
    has_bias = bias is not None
    if bias is None:
        bias = jnp.zeros((w_d.shape[0],), x.dtype)
    call = jax.ffi.ffi_call(TARGET, out)
    return call(x, w_d, w_h, w_w, bias, stride=np.int64(stride), groups=np.int64(groups),
                activation=np.int64(ACTIVATIONS[activation]), has_bias=has_bias)
