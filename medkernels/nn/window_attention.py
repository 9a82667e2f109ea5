"""Swin-style (shifted) window attention modules over the fused ``window_attention3d`` op.

State-dict keys follow the official models so their weights load unchanged:

- :class:`WindowAttention3d`: MONAI Swin UNETR's ``WindowAttention`` (``qkv``, ``proj``,
  ``relative_position_bias_table``, buffer ``relative_position_index``).
- :class:`CrossModalWindowAttention3d`: SwinCross's ``WindowAttention_crossModality`` (the same
  keys: one qkv projection, one projection and one bias table shared by both modalities).
- :class:`SwinBlock3d` / :class:`CrossModalSwinBlock3d`: MONAI's ``SwinTransformerBlock``
  (``norm1``, ``attn``, ``norm2``, ``mlp.linear1``, ``mlp.linear2``).

The modules take and return channels-last volumes (B, D, H, W, C). ``forward`` of the attention
modules does what MONAI's ``SwinTransformerBlock.forward_part1`` does after ``norm1``: pad,
shift, mask, windowed attention with the projection, reverse, unshift, crop. The padding tokens'
keys and values are the qkv bias (MONAI pads zero features before the projection); the kernel
reads them from the bias instead of padding the volume. ``relative_position_index`` is kept for
state-dict compatibility; the kernels compute the same index from token coordinates.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..ops.window_attention import cross_window_attention3d, window_attention3d
from ..reference.window_attention import _triple, relative_position_index

IntOr3 = Union[int, Sequence[int]]


def _check_volume(name: str, x: torch.Tensor, dim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[-1] != dim:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be (B, D, H, W, C={dim}) channels-last, got {got}")


class _WindowAttentionBase(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: IntOr3, shift_size: IntOr3 = 0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, proj_drop: float = 0.0,
                 mask_value: float = -100.0, backend: str = "auto", clamp_window: bool = True) -> None:
        super().__init__()
        if not isinstance(clamp_window, bool):
            raise TypeError(f"clamp_window must be a bool, got {type(clamp_window).__name__} {clamp_window!r}")
        self.clamp_window = clamp_window
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.window_size = _triple("window_size", window_size, minimum=1)
        self.shift_size = _triple("shift_size", shift_size)
        for w, s in zip(self.window_size, self.shift_size):
            if not 0 <= s < w:
                raise ValueError(
                    f"shift_size must be in [0, window_size), got {self.shift_size} for {self.window_size}"
                )
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.mask_value, self.backend = mask_value, backend
        wd, wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(self.window_size).clone())
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _qkv(self, x: torch.Tensor):
        b, d, h, w, c = x.shape
        qkv = self.qkv(x).view(b, d, h, w, 3, self.num_heads, c // self.num_heads)
        return qkv.unbind(4)

    def _pad_kv(self) -> Optional[torch.Tensor]:
        if self.qkv.bias is None:
            return None  # zero features project to zero keys and values
        return self.qkv.bias.view(3, self.num_heads, self.dim // self.num_heads)[1:]

    def _opts(self) -> dict:
        return dict(window=self.window_size, shift=self.shift_size, rel_bias_table=self.relative_position_bias_table,
                    mask_value=self.mask_value, scale=self.scale, pad_kv=self._pad_kv(), backend=self.backend,
                    clamp_window=self.clamp_window)

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        b, d, h, w = o.shape[:4]
        return self.proj_drop(self.proj(o.reshape(b, d, h, w, self.dim)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}, "
                f"num_heads={self.num_heads}")


class WindowAttention3d(_WindowAttentionBase):
    """(Shifted) window multi-head self-attention with relative position bias, MONAI's
    ``WindowAttention`` plus the pad/shift/partition of ``forward_part1``, fused.

    Args:
        dim: channels C. num_heads: heads (C divisible by it). window_size: int or (wd, wh, ww).
        shift_size: int or 3 ints in [0, window) (MONAI: 0 for even blocks, window // 2 for odd).
        qkv_bias: bias in the qkv projection. qk_scale: logit scale (default head_dim ** -0.5).
        proj_drop: dropout after the projection. mask_value: shift-mask value (-100 as MONAI).
        backend: see :func:`medkernels.ops.window_attention3d`. clamp_window: True (MONAI) shrinks
        the window to an axis no longer than it; False keeps it (Swin's own code, SwinCross).

    forward: (B, D, H, W, C) -> (B, D, H, W, C).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_volume("x", x, self.dim)
        q, k, v = self._qkv(x)
        return self._out(window_attention3d(q, k, v, **self._opts()))


class CrossModalWindowAttention3d(_WindowAttentionBase):
    """SwinCross's cross-modal window attention (``WindowAttention_crossModality``): one qkv
    projection, projection and bias table shared by the two modalities;
    ``out_a = proj(attn(q_a, k_b, v_b))``, ``out_b = proj(attn(q_b, k_a, v_a))``, both directions
    in one kernel launch. forward: ((B, D, H, W, C), (B, D, H, W, C)) -> the pair. SwinCross's
    numbers need ``clamp_window=False`` (its code never shrinks the window on a small grid)."""

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_volume("x_a", x_a, self.dim)
        _check_volume("x_b", x_b, self.dim)
        if x_a.shape != x_b.shape:
            raise ValueError(f"x_a and x_b must have one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
        o_a, o_b = cross_window_attention3d(self.qkv(x_a), self.qkv(x_b), self.num_heads, **self._opts())
        return self._out(o_a), self._out(o_b)


class _Mlp(nn.Module):
    """MONAI's ``MLPBlock`` (dropout_mode "swin"): linear1 -> GELU -> drop -> linear2 -> drop."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.fn = nn.GELU()
        self.drop1 = nn.Dropout(dropout_rate)
        self.drop2 = self.drop1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.linear2(self.drop1(self.fn(self.linear1(x)))))


class SwinBlock3d(nn.Module):
    """MONAI's ``SwinTransformerBlock`` (3D, no drop path): ``x + attn(norm1(x))`` then
    ``x + mlp(norm2(x))``, the attention fused. (B, D, H, W, C) -> (B, D, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window_size: IntOr3, shift_size: IntOr3 = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 norm_layer=nn.LayerNorm, backend: str = "auto", clamp_window: bool = True) -> None:
        super().__init__()
        if not isinstance(clamp_window, bool):
            raise TypeError(f"clamp_window must be a bool, got {type(clamp_window).__name__} {clamp_window!r}")
        self.norm1 = norm_layer(dim)
        self.attn = self._attention(dim, num_heads, window_size, shift_size, qkv_bias, drop, backend)
        self.attn.clamp_window = clamp_window
        self.norm2 = norm_layer(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)

    @staticmethod
    def _attention(dim, num_heads, window_size, shift_size, qkv_bias, drop, backend) -> nn.Module:
        return WindowAttention3d(dim, num_heads, window_size, shift_size, qkv_bias, proj_drop=drop, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossModalSwinBlock3d(SwinBlock3d):
    """SwinCross's cross-modal block (``SwinTransformerBlock_crossModality``): shared norms,
    cross attention and MLP for the two streams.

    ``residual="swincross"`` (default) reproduces the official block, which adds stream a's
    shortcut to *both* attention outputs::

        a, b = cross_attn(norm1(x_a), norm1(x_b))
        y_a, y_b = x_a + a, x_a + b
        return y_a + mlp(norm2(y_a)), y_b + mlp(norm2(y_b))

    so SwinCross checkpoints give SwinCross's numbers, with ``clamp_window=False`` (SwinCross's
    3^3 last stage at 96^3 still rolls and masks one 3^3 window; MONAI's clamp would not).
    ``residual="per_stream"`` gives each
    stream its own shortcut (``y_b = x_b + b``) instead. Keys as :class:`SwinBlock3d`.
    ((B, D, H, W, C), (B, D, H, W, C)) -> the pair.
    """

    RESIDUALS = ("swincross", "per_stream")

    def __init__(self, dim: int, num_heads: int, window_size: IntOr3, shift_size: IntOr3 = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 norm_layer=nn.LayerNorm, backend: str = "auto", residual: str = "swincross",
                 clamp_window: bool = True) -> None:
        if residual not in self.RESIDUALS:
            raise ValueError(f"residual must be one of {self.RESIDUALS}, got {residual!r}")
        super().__init__(dim, num_heads, window_size, shift_size, mlp_ratio, qkv_bias, drop, norm_layer, backend,
                         clamp_window)
        self.residual = residual

    @staticmethod
    def _attention(dim, num_heads, window_size, shift_size, qkv_bias, drop, backend) -> nn.Module:
        return CrossModalWindowAttention3d(dim, num_heads, window_size, shift_size, qkv_bias, proj_drop=drop,
                                           backend=backend)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        a, b = self.attn(self.norm1(x_a), self.norm1(x_b))
        y_a, y_b = x_a + a, (x_a if self.residual == "swincross" else x_b) + b
        return y_a + self.mlp(self.norm2(y_a)), y_b + self.mlp(self.norm2(y_b))

    def extra_repr(self) -> str:
        return f"residual={self.residual!r}"
