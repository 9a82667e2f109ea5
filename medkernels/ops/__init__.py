"""Public ops: torch custom ops with autograd and backend dispatch."""

from .decomp_conv import decomp_conv3d
from .window_attention import cross_window_attention3d, window_attention3d

__all__ = ["decomp_conv3d", "window_attention3d", "cross_window_attention3d"]
