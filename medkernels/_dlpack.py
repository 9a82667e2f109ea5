"""Any DLPack array in, the caller's kind out: NumPy, CuPy, JAX (or any ``__dlpack__`` object).

``@accepts_dlpack`` on a public op turns every argument that is not a ``torch.Tensor`` but has
``__dlpack__`` into a tensor with ``torch.from_dlpack`` (zero-copy, same device and strides) and
converts the tensor results back to the kind of the first such argument:

    y = medkernels.ops.decomp_conv3d(np_x, np_wd, np_wh, np_ww)   # y is a numpy.ndarray
    y = medkernels.ops.decomp_conv3d(jax_x, ...)                    # y is a jax.Array

Torch tensors pass through untouched (the wrapper adds one ``isinstance`` per argument), so
autograd and ``torch.compile`` see the op as before. Results convert back zero-copy where the
kind allows it (NumPy and CuPy views of the result's memory; JAX may copy). Gradients do not
flow through foreign arrays: differentiate in their own framework (JAX: the FFI custom call).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

__all__ = ["accepts_dlpack", "to_torch", "from_torch"]


def _is_foreign(v: Any) -> bool:
    return not isinstance(v, torch.Tensor) and hasattr(type(v), "__dlpack__")


def _kind(v: Any) -> str:
    mod = type(v).__module__.split(".")[0]
    if mod in ("numpy", "cupy", "jax", "jaxlib"):
        return "jax" if mod == "jaxlib" else mod
    return "torch"  # an unknown DLPack producer gets torch tensors back


def to_torch(v: Any) -> torch.Tensor:
    """A zero-copy torch view of a DLPack array (a copy for read-only NumPy arrays, which DLPack cannot mark)."""
    if isinstance(v, torch.Tensor):
        return v
    if _kind(v) == "numpy" and not v.flags.writeable:
        return torch.from_numpy(v.copy())
    return torch.from_dlpack(v)


def from_torch(t: Any, kind: str) -> Any:
    """``t`` (a tensor, or a tuple/list of them) as arrays of ``kind``: "numpy", "cupy", "jax" or "torch"."""
    if isinstance(t, (tuple, list)):
        return type(t)(from_torch(x, kind) for x in t)
    if not isinstance(t, torch.Tensor) or kind == "torch":
        return t
    t = t.detach()
    if kind == "numpy":
        import numpy as np

        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: hand back float32
            t = t.float()
        return np.from_dlpack(t)
    if kind == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    if kind == "jax":
        import jax.dlpack

        return jax.dlpack.from_dlpack(t.contiguous())
    return t


def accepts_dlpack(fn: Callable) -> Callable:
    """Let ``fn`` (a function of torch tensors) take any ``__dlpack__`` array and return the caller's kind."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first: Optional[Any] = next((v for v in (*args, *kwargs.values()) if _is_foreign(v)), None)
        if first is None:
            return fn(*args, **kwargs)
        args = tuple(to_torch(v) if _is_foreign(v) else v for v in args)
        kwargs = {k: (to_torch(v) if _is_foreign(v) else v) for k, v in kwargs.items()}
        return from_torch(fn(*args, **kwargs), _kind(first))

    return wrapper
