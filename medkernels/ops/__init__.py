"""Public ops: torch custom ops with autograd and backend dispatch."""

from .decomp_conv import decomp_conv3d

__all__ = ["decomp_conv3d"]
