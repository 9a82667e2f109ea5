"""Argument checks shared by the ops: every message names the argument, what was expected and
what came."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._dispatch import FLOAT_DTYPES
from . import _kit


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {str(t.dtype).replace('torch.', '')}, device {t.device}"


def check_tensor(name: str, t, *, dim: Optional[int] = None, dims: Optional[Sequence[int]] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), got {describe(t)}")
    allowed = [dim] if dim is not None else list(dims or [])
    if allowed and t.dim() not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {want}, got {describe(t)}")


def check_same(ref_name: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    """Every tensor in ``others`` must match ``ref`` in device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: move them to one device")
        if t.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {str(t.dtype).replace('torch.', '')} but {ref_name} has "
                f"{str(ref.dtype).replace('torch.', '')}: cast them to one dtype"
            )


def check_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def is_channels_last_3d(t: torch.Tensor) -> bool:
    """True when ``t`` is stored NDHWC (and not also plain contiguous)."""
    return t.dim() == 5 and t.shape[1] > 1 and t.stride(1) == 1 and not t.is_contiguous()


def empty_like_layout(t: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """A new tensor of ``shape`` in ``t``'s memory layout (channels-last stays channels-last)."""
    fmt = torch.channels_last_3d if is_channels_last_3d(t) else torch.contiguous_format
    return _kit.empty(shape, dtype=dtype or t.dtype, device=t.device, memory_format=fmt)


def cuda_stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def dtype_code(dtype: torch.dtype):
    """The ``medkernels._C.DType`` of a torch dtype (the compiled backends' parameter blocks)."""
    from .._extension import extension

    C = extension.module
    return {
        torch.float32: C.DType.float32,
        torch.float16: C.DType.float16,
        torch.bfloat16: C.DType.bfloat16,
        torch.float64: C.DType.float64,
    }[dtype]
