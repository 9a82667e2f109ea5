"""medkernels: fused Triton/CUDA/C++ kernels for 3D medical vision-language and diffusion models."""

from . import _environment  # noqa: F401  (sets TRITON_INTERPRET before any kernel module loads)
from ._dispatch import BACKEND_ORDER, backends
from ._extension import extension as _extension

__version__ = "0.1.0"

# Load the compiled module now, not on first dispatch: a first import inside torch.compile's
# trace would break the graph.
_ = _extension.unavailable_reason


def build_info() -> dict:
    """What ``medkernels._C`` was built with (CUDA version, archs, OpenMP), or why it is missing."""
    info = _extension.build_info()
    if not info:
        return {"error": _extension.unavailable_reason}
    return info


def convert(model, *, backend: str = "auto"):
    """Swap, in place and with the same state dict, the patterns our kernels cover in an existing
    model (MONAI's diffusion UNet / ControlNet / AutoencoderKL ResBlocks, GroupNorm + SiLU pairs,
    SwinUNETR's 3D window attention); returns a report of what was replaced. See
    :mod:`medkernels._convert`."""
    from ._convert import convert as _convert

    return _convert(model, backend=backend)


__all__ = ["BACKEND_ORDER", "backends", "build_info", "convert", "__version__"]
