"""Drop-in ``nn.Module``s over the fused ops, with the official models' state-dict keys."""

from .decomp_conv import DecompConv3d
from .group_norm import GroupNormAct
from .sigmoid_loss import SigLIPLoss
from .window_attention import CrossModalSwinBlock3d, CrossModalWindowAttention3d, SwinBlock3d, WindowAttention3d

__all__ = ["SigLIPLoss", "DecompConv3d", "GroupNormAct", "WindowAttention3d", "CrossModalWindowAttention3d",
           "SwinBlock3d", "CrossModalSwinBlock3d"]
