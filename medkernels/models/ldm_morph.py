"""LDM-Morph (Wu & Gong, arXiv 2411.15426; code ``wujiong-hub/LDM-Morph``, ``TransModels/``):
latent-diffusion-guided deformable registration, 2D with the official state-dict keys, and the
same network in 3D.

Network (:class:`LDMMorph`, facts from the official code; every key name is the official one):

- ``lwsa``: the TransMorph/Swin encoder (``LWSA``) on ``cat(moving, fixed)``: ``transformer.
  patch_embed`` (conv k=s=4 + LayerNorm), four stages ``transformer.layers.{i}`` of
  (shifted) window self-attention blocks (window 7, shift 3 on odd blocks, relative position
  bias, qkv without bias, GELU MLP, pre-norm residuals, DropPath 0 -> 0.3), PatchMerging between
  stages, ``transformer.norm{i}`` on each stage output (H/4 .. H/32, 64 .. 512 channels).
  ``lwsa.c1`` / ``lwsa.c2`` are computed and discarded by the official code: kept (unused).
- ``c1..c4``: conv 3x3 + PReLU mapping the four LDM feature stacks to 64/128/256/512 channels.
- ``lwca1..4``: windowed cross-attention (paper: LGCA), one Swin stage of 2 blocks, 4 heads:
  ``lwca(x, y)`` takes the **queries from y** and the keys, values and residual from x, through
  one shared qkv projection and one shared ``norm1``; only ``norm0`` of ``norm0..3`` is used
  (the others are kept). The network calls ``lwca_k(swin_k, ldm_k)`` and ``lwca_k(ldm_k, swin_k)``
  with the same weights (scales 1-3; scale 4 only the first): ours runs both directions in one
  ``cross_window_attention3d_separate`` launch (:meth:`LWCA.pair`).
- ``up0..up3``: decoder blocks (bicubic x2, concat skips, Conv+InstanceNorm+LeakyReLU twice;
  ``conv1`` with two skips, ``conv3`` with one: the unused one of each block is kept), ``up``
  (bicubic x2), ``reg_head`` (conv 3x3 with N(0, 1e-5) weights and zero bias, then Softsign:
  a displacement in normalised [-1, 1] grid units, channel 0 along H, 1 along W).

Window attention runs through :func:`medkernels.ops.window_attention3d` /
:func:`~medkernels.ops.cross_window_attention3d_separate`, 2D windows as depth-1 3D windows.
The official TransMorph blocks never clamp the window to a small feature map as MONAI does: a map
of at most 7 tokens on an axis is zero-padded to 7 and still shifted by 3. The ops compute exactly
that with ``clamp_window=False`` (padding keys and values are the qkv bias, as the official zero
features give).

LDM features (:class:`LDMFeatureExtractor`): the VQ first stage's encoder + ``quant_conv``
(taming ``Encoder``, no quantisation, ``scale_factor`` 1) and the CompVis ``openaimodel.UNetModel``
(:class:`LDMUNet`: ``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``),
run at t = 1 on ``q_sample(z, 1, noise)`` with the same noise for both images; encoder features
``[0, 2] -> score1``, ``[3, 5] -> score2``, ``[6, 8] -> score3``, ``[9, 11] -> score4``, each
``cat(mov_a, mov_b, fix_a, fix_b)``. Only the input blocks run (the official code runs the whole
UNet and keeps the encoder features: the same values).

Warp (:func:`warp`): ``grid_sample`` on the identity ``linspace(-1, 1)`` grid plus the flow,
bilinear (trilinear in 3D), ``align_corners=True``, ``padding_mode="border"``.

Loss (:func:`hierarchical_loss`): ``beta * MSE(fixed, warped) + (1 - beta) * MSE(E(warped), E(fixed))
+ smooth * smoothness(flow)`` with beta 0.6, smooth 0.01. The released code computes the latent term
under ``no_grad`` and ``detach``es it, so it carries **no gradient**: ``latent_grad=False``
(default) is that; ``latent_grad=True`` back-propagates through the frozen encoder into the warp.

3D (``spatial_dims=3``; no official 3D code or weights): Conv3d, 3D windows (7x7x7), the
TransMorph 3D 8-way PatchMerging, trilinear instead of bicubic upsampling (PyTorch has no 3D
bicubic), trilinear warping, a 3-channel flow (d, h, w); the LDM UNet and VQ encoder in 3D with
isotropic stride-2 down/upsampling (CompVis' 3D option resamples only the inner two axes).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.group_norm import GroupNormAct
from ..nn.window_attention import _WindowAttentionBase
from ..ops.window_attention import cross_window_attention3d_separate, window_attention3d
from .fast_ddpm import AttnBlock, Downsample

# --- configs -----------------------------------------------------------------------------------
# LDMMorph(128*2, 192*2, 320*2, 448*2) with utils/configs.py (train.py, infer.py)
_OFFICIAL_NET = dict(channels=(256, 384, 640, 896), spatial_dims=2, in_channels=1, embed_dim=64,
                     depths=(2, 2, 4, 2), num_heads=(4, 4, 8, 8), window_size=7, mlp_ratio=4.0, qkv_bias=False,
                     drop_path_rate=0.3, patch_size=4, reg_head_chan=16)
# configs/latent-diffusion/casmus-ldm-vq16-64ch.yaml: unet_config and first_stage_config.ddconfig
_OFFICIAL_UNET = dict(in_channels=1, out_channels=1, model_channels=64, channel_mult=(1, 2, 3, 4),
                      num_res_blocks=2, attention_resolutions=(8, 4, 2), num_head_channels=32, dropout=0.0)
_OFFICIAL_VQ = dict(in_channels=1, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(32,),
                    resolution=128, z_channels=1, embed_dim=1, dropout=0.0)
_TINY_UNET = dict(in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=2,
                  attention_resolutions=(4, 8), num_head_channels=32, dropout=0.0)
_TINY_VQ = dict(in_channels=1, ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, attn_resolutions=(8,), resolution=32,
                z_channels=1, embed_dim=1, dropout=0.0)
# LDM features of the tiny UNet: 2 * (32 + 32), 2 * (32 + 32), 2 * (32 + 64), 2 * (64 + 64)
_TINY_NET = dict(channels=(128, 128, 192, 256), spatial_dims=2, in_channels=1, embed_dim=8, depths=(2, 2, 2, 2),
                 num_heads=(2, 2, 2, 2), window_size=3, mlp_ratio=2.0, qkv_bias=False, drop_path_rate=0.1,
                 patch_size=4, reg_head_chan=4)

LDM_MORPH_CONFIGS: Dict[str, dict] = {
    # the official network (31,510,854 parameters) + the CAMUS LDM (UNet 22.41 M) and VQ encoder; 128x128 frames
    "official": dict(net=_OFFICIAL_NET, unet=_OFFICIAL_UNET, vq=_OFFICIAL_VQ,
                     schedule=dict(linear_start=0.0015, linear_end=0.0195, timesteps=1000), t=1),
    # CPU tests and the demo: 32x32 (or 32^3) inputs, window 3 (every padding/shift case at 8, 4, 2, 1 tokens)
    "tiny": dict(net=_TINY_NET, unet=_TINY_UNET, vq=_TINY_VQ,
                 schedule=dict(linear_start=0.0015, linear_end=0.0195, timesteps=1000), t=1),
    "tiny3d": dict(net=dict(_TINY_NET, spatial_dims=3), unet=_TINY_UNET, vq=_TINY_VQ,
                   schedule=dict(linear_start=0.0015, linear_end=0.0195, timesteps=1000), t=1),
}

# the official loss weights (train.py: --beta 0.6, --smth_labda 0.01)
LDM_MORPH_LOSS = dict(beta=0.6, smooth=0.01)


def _conv(dims: int, c_in: int, c_out: int, k: int, stride=1, padding: int = 0, bias: bool = True) -> nn.Module:
    return (nn.Conv2d, nn.Conv3d)[dims - 2](c_in, c_out, k, stride=stride, padding=padding, bias=bias)


def _check_dims(spatial_dims) -> int:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def _tuple(name: str, v, n: int) -> Tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != n or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in t):
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {v!r}")
    return t


# --- window attention with the official (unclamped) TransMorph geometry ------------------------
class WindowAttention(_WindowAttentionBase):
    """The official ``WindowAttention`` of ``basic_LWSA.py`` / ``basic_LWCA.py`` (keys
    ``relative_position_bias_table``, buffer ``relative_position_index``, ``qkv``, ``proj``: those of
    :class:`medkernels.nn.WindowAttention3d`'s base) on the fused op, with TransMorph's unclamped
    window (``clamp_window=False``: pad to whole windows, shift even a single window).
    ``window`` is 3 ints (2D: ``(1, wh, ww)``); the table and the index are the official 2D ones for
    a depth-1 window.

    :meth:`attend` takes ``(query source, key/value source)`` pairs of normalised channels-last
    features (B, D, H, W, C) (the source None: self-attention) and a shift; two pairs run in one
    cross-attention launch."""

    def __init__(self, dim: int, window: Tuple[int, int, int], num_heads: int, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, proj_drop: float = 0.0, backend: str = "auto") -> None:
        super().__init__(dim, num_heads, tuple(window), 0, qkv_bias, qk_scale, proj_drop, -100.0, backend,
                         clamp_window=False)

    def _project(self, q_src: torch.Tensor, kv_src: Optional[torch.Tensor]):
        if kv_src is None:
            return self._qkv(q_src)
        c, h = self.dim, self.num_heads
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(q_src, w[:c], None if b is None else b[:c]).unflatten(-1, (h, c // h))
        k, v = F.linear(kv_src, w[c:], None if b is None else b[c:]).unflatten(-1, (2, h, c // h)).unbind(-3)
        return q, k, v

    def attend(self, pairs: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]],
               shift: Tuple[int, int, int]) -> List[torch.Tensor]:
        qkvs = [self._project(q_src, kv_src) for q_src, kv_src in pairs]
        # the official code pads zero features: their keys and values are the qkv bias (_pad_kv)
        kw = dict(self._opts(), shift=tuple(shift))
        if len(qkvs) == 1:
            outs = [window_attention3d(*qkvs[0], **kw)]
        else:  # out_a = attn(q_a, k_b, v_b), out_b = attn(q_b, k_a, v_a)
            (q0, k0, v0), (q1, k1, v1) = qkvs
            outs = list(cross_window_attention3d_separate(q0, k1, v1, q1, k0, v0, **kw))
        return [self._out(o) for o in outs]


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``, scaled by 1 / keep)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * (mask / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``fc1`` -> GELU -> drop -> ``fc2`` -> drop."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """The official ``SwinTransformerBlock`` (LWSA): ``x + dp(attn(norm1(x)))``, then
    ``x + dp(mlp(norm2(x)))``, channels-last (B, D, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: Tuple[int, int, int], shift: Tuple[int, int, int],
                 mlp_ratio: float, qkv_bias: bool, drop_path: float, backend: str) -> None:
        super().__init__()
        self.shift_size = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _ffn(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._ffn(x, self.attn.attend([(self.norm1(x), None)], self.shift_size)[0])


class CrossBlock(SwinBlock):
    """The official LWCA ``SwinTransformerBlock``: ``forward(x, y)`` attends with queries from
    ``norm1(y)`` to keys/values from ``norm1(x)`` (one shared norm1 and qkv), residual x.
    :meth:`pair` runs two such calls in one cross-attention launch."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self._ffn(x, self.attn.attend([(self.norm1(y), self.norm1(x))], self.shift_size)[0])

    def pair(self, xa, ya, xb, yb) -> Tuple[torch.Tensor, torch.Tensor]:
        normed: Dict[int, torch.Tensor] = {}

        def n(t):  # in the first block xa is yb and xb is ya: normalise each tensor once
            if id(t) not in normed:
                normed[id(t)] = self.norm1(t)
            return normed[id(t)]

        ha, hb = self.attn.attend([(n(ya), n(xa)), (n(yb), n(xb))], self.shift_size)
        return self._ffn(xa, ha), self._ffn(xb, hb)


class PatchMerging(nn.Module):
    """2x2 (2D, the official order x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) or
    2x2x2 (3D, TransMorph's order) neighbours concatenated, ``norm``, ``reduction`` to 2C."""

    _ORDER = {2: ((0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)),
              3: ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))}

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        n = 2 ** spatial_dims
        self.reduction = nn.Linear(n * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(n * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[1:4]
        pad_d = d % 2 if self.spatial_dims == 3 else 0
        if h % 2 or w % 2 or pad_d:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, pad_d))
        sd = 2 if self.spatial_dims == 3 else 1
        parts = [x[:, a::sd, b::2, c::2] for a, b, c in self._ORDER[self.spatial_dims]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class _Stage(nn.Module):
    def __init__(self, blocks: List[nn.Module], downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


def _dpr(rate: float, depths: Sequence[int]) -> List[float]:
    return [x.item() for x in torch.linspace(0, rate, sum(depths), device="cpu")]


def _windows(window, spatial_dims: int):
    w = _tuple("window_size", window, spatial_dims)
    w3 = (1,) * (3 - spatial_dims) + w
    return w3, tuple(x // 2 for x in w3)


class PatchEmbed(nn.Module):
    """``proj`` conv (kernel = stride = patch) + ``norm`` (LayerNorm over channels)."""

    def __init__(self, patch: int, in_chans: int, embed_dim: int, spatial_dims: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = _conv(spatial_dims, in_chans, embed_dim, patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n in reversed(x.shape[2:]):
            pads += [0, (self.patch - n % self.patch) % self.patch]
        if any(pads):
            x = F.pad(x, pads)
        x = self.proj(x)
        x = x.movedim(1, -1)
        if x.dim() == 4:
            x = x.unsqueeze(1)
        return self.norm(x)  # (B, D, H, W, C)


class SwinEncoder(nn.Module):
    """The official ``basic_LWSA.SwinTransformer``: ``patch_embed``, ``layers.{i}`` (blocks +
    ``downsample``), ``norm{i}``. forward: (B, C_in, *spatial) -> the four stage outputs,
    channels-last (B, D, H, W, C_i)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size, mlp_ratio: float, qkv_bias: bool, drop_path_rate: float,
                 spatial_dims: int, backend: str) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, spatial_dims)
        window, shift = _windows(window_size, spatial_dims)
        dpr = _dpr(drop_path_rate, depths)
        self.layers = nn.ModuleList()
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        for i, depth in enumerate(depths):
            dim, start = self.num_features[i], sum(depths[:i])
            blocks = [SwinBlock(dim, num_heads[i], window, shift if j % 2 else (0, 0, 0), mlp_ratio, qkv_bias,
                                dpr[start + j], backend) for j in range(depth)]
            self.layers.append(_Stage(blocks, PatchMerging(dim, spatial_dims) if i < len(depths) - 1 else None))
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            for blk in layer.blocks:
                x = blk(x)
            outs.append(getattr(self, f"norm{i}")(x))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return outs


class ConvNormAct(nn.Sequential):
    """The official ``Conv2dReLU``: conv (no bias) -> InstanceNorm (no affine; our fused group
    norm with one group per channel) -> LeakyReLU(0.01). Keys ``0.weight``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, padding: int = 1, spatial_dims: int = 2,
                 backend: str = "auto") -> None:
        super().__init__(_conv(spatial_dims, c_in, c_out, kernel, padding=padding, bias=False),
                         GroupNormAct(c_out, c_out, eps=1e-5, affine=False, activation=None, backend=backend),
                         nn.LeakyReLU(0.01, inplace=True))


class LWSA(nn.Module):
    """The official ``LWSA``: ``transformer`` (:class:`SwinEncoder`), ``c1``/``c2`` (computed and
    discarded by the official forward: kept, unused). forward -> (f_4, f_8, f_16, f_32)
    channels-last."""

    def __init__(self, in_channel: int, embed_dim: int, reg_head_chan: int, spatial_dims: int, backend: str,
                 **swin) -> None:
        super().__init__()
        self.transformer = SwinEncoder(in_chans=in_channel, embed_dim=embed_dim, spatial_dims=spatial_dims,
                                       backend=backend, **swin)
        self.c1 = ConvNormAct(in_channel, embed_dim // 2, spatial_dims=spatial_dims, backend=backend)
        self.c2 = ConvNormAct(in_channel, reg_head_chan, spatial_dims=spatial_dims, backend=backend)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.transformer(x)


class _CrossSwin(nn.Module):
    """The official ``basic_LWCA.SwinTransformer``: one stage ``layers.0.blocks`` and ``norm0..3``
    (only ``norm0`` is used)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size, mlp_ratio: float, qkv_bias: bool,
                 drop_path: Sequence[float], num_norms: int, spatial_dims: int, backend: str) -> None:
        super().__init__()
        window, shift = _windows(window_size, spatial_dims)
        blocks = [CrossBlock(dim, num_heads, window, shift if j % 2 else (0, 0, 0), mlp_ratio, qkv_bias,
                             drop_path[j], backend) for j in range(depth)]
        self.layers = nn.ModuleList([_Stage(blocks, None)])
        for i in range(num_norms):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))


def _to_last(x: torch.Tensor) -> torch.Tensor:
    x = x.movedim(1, -1)
    return x.unsqueeze(1) if x.dim() == 4 else x


def _to_first(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    x = x.movedim(-1, 1)
    return (x.squeeze(2) if spatial_dims == 2 else x).contiguous()


class LWCA(nn.Module):
    """The official ``LWCA`` (key prefix ``transformer``): ``forward(x, y)`` on (B, C, *spatial)
    maps, queries from y, keys/values/residual from x; returns ``norm0`` of the result,
    (B, C, *spatial). :meth:`pair` returns ``(lwca(a, b), lwca(b, a))`` in one launch per block.
    Both also take channels-last (B, D, H, W, C) inputs with ``channels_last=True``."""

    def __init__(self, dim: int, spatial_dims: int, backend: str, **kw) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.transformer = _CrossSwin(dim, spatial_dims=spatial_dims, backend=backend, **kw)

    def _blocks(self):
        return self.transformer.layers[0].blocks

    def _out(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        x = self.transformer.norm0(x)
        return x if channels_last else _to_first(x, self.spatial_dims)

    def forward(self, x: torch.Tensor, y: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if not channels_last:
            x, y = _to_last(x), _to_last(y)
        for blk in self._blocks():
            x = blk(x, y)
        return self._out(x, channels_last)

    def pair(self, a: torch.Tensor, b: torch.Tensor, channels_last: bool = False):
        if not channels_last:
            a, b = _to_last(a), _to_last(b)
        xa, xb = a, b
        for blk in self._blocks():
            xa, xb = blk.pair(xa, b, xb, a)
        return self._out(xa, channels_last), self._out(xb, channels_last)


class DecoderBlock(nn.Module):
    """The official ``DecoderBlock``: upsample x2 (bicubic; trilinear in 3D), concat the skip(s),
    ``conv1`` (two skips) or ``conv3`` (one), then ``conv2``. Both convs are built, as official."""

    def __init__(self, c_in: int, c_out: int, skip: int, spatial_dims: int, backend: str) -> None:
        super().__init__()
        kw = dict(spatial_dims=spatial_dims, backend=backend)
        self.conv1 = ConvNormAct(c_in + 2 * skip, c_out, **kw)
        self.conv2 = ConvNormAct(c_out, c_out, **kw)
        self.conv3 = ConvNormAct(c_in + skip, c_out, **kw)
        self.mode = "bicubic" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor, skip: torch.Tensor, skip2: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)
        if skip2 is None:
            return self.conv2(self.conv3(torch.cat([x, skip], 1)))
        return self.conv2(self.conv1(torch.cat([x, skip, skip2], 1)))


class RegistrationHead(nn.Sequential):
    """conv 3x3 (weights N(0, 1e-5), bias 0) -> Softsign. Keys ``0.weight``, ``0.bias``."""

    def __init__(self, c_in: int, spatial_dims: int) -> None:
        conv = _conv(spatial_dims, c_in, spatial_dims, 3, padding=1)
        with torch.no_grad():
            conv.weight.normal_(0.0, 1e-5)
            conv.bias.zero_()
        super().__init__(conv, nn.Softsign())


class LDMMorph(nn.Module):
    """The official ``LDMMorph`` (``TransModels/LDMMorph.py``); see the module docstring.

    Args:
        channel_1..channel_4: channels of the four LDM feature stacks (official: 256, 384, 640, 896).
        spatial_dims: 2 (official) or 3.
        in_channels: channels of each image (official 1; the encoders see 2 * in_channels).
        embed_dim: Swin width of stage 1 (official 64; stages 64/128/256/512, decoder down to 32).
        depths, num_heads, window_size, mlp_ratio, qkv_bias, drop_path_rate, patch_size: the LWSA
            config (official (2, 2, 4, 2), (4, 4, 8, 8), 7, 4, False, 0.3, 4).
        cross_depths, cross_num_heads, cross_window_size: the LWCA config (default: the LWSA's;
            the LWCA uses ``cross_depths[0]`` blocks of ``cross_num_heads[0]`` heads at every
            scale, drop path ``linspace(0, rate, sum(cross_depths))[:depth]``, as official).
        reg_head_chan: width of the unused ``lwsa.c2`` (official 16).
        backend: of every fused op (window attention, group norm): "auto", "cpu", "reference", ...

    forward(moving, fixed, score1, score2, score3, score4): images (B, in_channels, *S) with every
    spatial size a multiple of 8 * patch_size (official: 128x128), LDM features scoreK
    (B, channel_K, *S / (patch_size * 2**(K-1))); returns the flow (B, spatial_dims, *S) in
    normalised grid units, channels in axis order (h, w) / (d, h, w).
    """

    def __init__(self, channel_1: int = 256, channel_2: int = 384, channel_3: int = 640, channel_4: int = 896, *,
                 spatial_dims: int = 2, in_channels: int = 1, embed_dim: int = 64,
                 depths: Sequence[int] = (2, 2, 4, 2), num_heads: Sequence[int] = (4, 4, 8, 8), window_size=7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path_rate: float = 0.3, patch_size: int = 4,
                 cross_depths: Optional[Sequence[int]] = None, cross_num_heads: Optional[Sequence[int]] = None,
                 cross_window_size=None, reg_head_chan: int = 16, backend: str = "auto") -> None:
        super().__init__()
        sd = self.spatial_dims = _check_dims(spatial_dims)
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths and num_heads must have 4 stages (the network is wired for 4 scales), got "
                             f"{depths} and {num_heads}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (the stride-2 branch has embed_dim // 2 channels), "
                             f"got {embed_dim}")
        self.channels = (channel_1, channel_2, channel_3, channel_4)
        self.in_channels, self.patch_size, self.backend = in_channels, patch_size, backend
        cross_depths = tuple(cross_depths or depths)
        cross_num_heads = tuple(cross_num_heads or num_heads)
        cross_window = window_size if cross_window_size is None else cross_window_size
        e = embed_dim
        kw = dict(spatial_dims=sd, backend=backend)
        self.avg_pool = (nn.AvgPool2d, nn.AvgPool3d)[sd - 2](3, stride=2, padding=1)
        self.ec1 = ConvNormAct(2 * in_channels, e // 2, **kw)
        self.lwsa = LWSA(2 * in_channels, e, reg_head_chan, patch_size=patch_size, depths=depths, num_heads=num_heads,
                         window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         drop_path_rate=drop_path_rate, **kw)
        for k, c in enumerate(self.channels):
            self.add_module(f"c{k + 1}", nn.Sequential(_conv(sd, c, e * 2 ** k, 3, padding=1), nn.PReLU()))
        dpr = _dpr(drop_path_rate, cross_depths)[: cross_depths[0]]
        for k in range(4):
            self.add_module(f"lwca{k + 1}", LWCA(e * 2 ** k, depth=cross_depths[0], num_heads=cross_num_heads[0],
                                                 window_size=cross_window, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                                 drop_path=dpr, num_norms=len(cross_depths), **kw))
        self.up0 = DecoderBlock(8 * e, 4 * e, 4 * e, **kw)
        self.up1 = DecoderBlock(4 * e, 2 * e, 2 * e, **kw)
        self.up2 = DecoderBlock(2 * e, e, e, **kw)
        self.up3 = DecoderBlock(e, e // 2, e // 2, **kw)
        self.up_mode = "bicubic" if sd == 2 else "trilinear"
        self.reg_head = RegistrationHead(e // 2, sd)

    @classmethod
    def from_config(cls, name: str = "official", **overrides) -> LDMMorph:
        """The network of :data:`LDM_MORPH_CONFIGS` (``"official"``, ``"tiny"``, ``"tiny3d"``)."""
        if name not in LDM_MORPH_CONFIGS:
            raise ValueError(f"name must be one of {sorted(LDM_MORPH_CONFIGS)}, got {name!r}")
        cfg = dict(LDM_MORPH_CONFIGS[name]["net"], **overrides)
        return cls(*cfg.pop("channels"), **cfg)

    def set_backend(self, backend: str) -> LDMMorph:
        """Switch every fused op to ``backend``; returns self."""
        for m in self.modules():
            if isinstance(m, (WindowAttention, GroupNormAct)):
                m.backend = backend
        self.backend = backend
        return self

    def _check(self, moving, fixed, scores) -> None:
        sd = self.spatial_dims
        for name, t in (("moving", moving), ("fixed", fixed)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 + sd or t.shape[1] != self.in_channels:
                got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be (B, {self.in_channels}, {', '.join('HW' if sd == 2 else 'DHW')}), "
                                 f"got {got}")
        if fixed.shape != moving.shape:
            raise ValueError(f"fixed must have the shape of moving {tuple(moving.shape)}, got {tuple(fixed.shape)}")
        m = 8 * self.patch_size
        if any(n % m for n in moving.shape[2:]):
            raise ValueError(f"moving/fixed spatial sizes must be multiples of 8 * patch_size = {m} (four scales "
                             f"and the decoder's x2 upsampling), got {tuple(moving.shape[2:])}")
        for k, (s, c) in enumerate(zip(scores, self.channels)):
            want = (moving.shape[0], c) + tuple(n // (self.patch_size * 2 ** k) for n in moving.shape[2:])
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != want:
                got = f"shape {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"score{k + 1} must be {want} (B, channel_{k + 1}, spatial / "
                                 f"{self.patch_size * 2 ** k}), got {got}")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, score1: torch.Tensor, score2: torch.Tensor,
                score3: torch.Tensor, score4: torch.Tensor) -> torch.Tensor:
        scores = (score1, score2, score3, score4)
        self._check(moving, fixed, scores)
        sd = self.spatial_dims
        x = torch.cat((moving, fixed), dim=1)
        f4 = self.ec1(self.avg_pool(x))
        swin = self.lwsa(x)  # channels-last, H/4 .. H/32
        cnn = [_to_last(getattr(self, f"c{k + 1}")(s)) for k, s in enumerate(scores)]
        mov, fix = [], []
        for k in range(3):  # lwca_k(swin_k, cnn_k) and lwca_k(cnn_k, swin_k): one launch per block
            m, f = getattr(self, f"lwca{k + 1}").pair(swin[k], cnn[k], channels_last=True)
            mov.append(_to_first(m, sd))
            fix.append(_to_first(f, sd))
        deepest = _to_first(self.lwca4(swin[3], cnn[3], channels_last=True), sd)
        x = self.up0(deepest, mov[2], fix[2])
        x = self.up1(x, mov[1], fix[1])
        x = self.up2(x, mov[0], fix[0])
        x = self.up3(x, f4)
        x = F.interpolate(x, scale_factor=2, mode=self.up_mode, align_corners=False)
        return self.reg_head(x)


# --- warp, smoothness, loss, folding ------------------------------------------------------------
def _check_flow(name: str, flow: torch.Tensor) -> int:
    if not isinstance(flow, torch.Tensor) or flow.dim() not in (4, 5) or flow.shape[1] != flow.dim() - 2:
        got = f"shape {tuple(flow.shape)}" if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name} must be (B, 2, H, W) or (B, 3, D, H, W) (one channel per spatial axis), got {got}")
    return flow.dim() - 2


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(*shape, n) ``linspace(-1, 1)`` coordinates per axis, in axis order (h, w) / (d, h, w)."""
    axes = [torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """The official ``SpatialTransform``: sample ``image`` (B, C, *S) at identity + ``flow``
    (B, n, *S, normalised units, channels (h, w) / (d, h, w)) with ``grid_sample(mode,
    align_corners=True, padding_mode="border")``; "bilinear" is trilinear in 3D, "nearest" for labels."""
    n = _check_flow("flow", flow)
    if not isinstance(image, torch.Tensor) or image.dim() != n + 2 or image.shape[2:] != flow.shape[2:]:
        got = f"shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be (B, C, {', '.join(map(str, flow.shape[2:]))}) like flow, got {got}")
    grid = identity_grid(flow.shape[2:], flow.device, flow.dtype) + flow.movedim(1, -1)
    return F.grid_sample(image, grid.flip(-1), mode=mode, align_corners=True, padding_mode="border")


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """The official ``smoothloss``: forward differences per axis scaled to pixels (``/ 2 * n``),
    squared, meaned, averaged over the axes."""
    n = _check_flow("flow", flow)
    terms = []
    for a in range(n):
        size = flow.shape[2 + a]
        d = (flow.narrow(2 + a, 1, size - 1) - flow.narrow(2 + a, 0, size - 1)).abs() / 2 * size
        terms.append((d * d).mean())
    return sum(terms) / n


def hierarchical_loss(fixed: torch.Tensor, warped: torch.Tensor, flow: torch.Tensor,
                      encode: Callable[[torch.Tensor], torch.Tensor], fixed_latent: Optional[torch.Tensor] = None,
                      beta: float = 0.6, smooth: float = 0.01, latent_grad: bool = False) -> Dict[str, torch.Tensor]:
    """``beta * MSE(fixed, warped) + (1 - beta) * MSE(encode(warped), encode(fixed)) + smooth *
    smoothness(flow)`` (``train.py``). The target latent is always a constant (``fixed_latent`` or
    ``encode(fixed)`` without grad). ``latent_grad=False`` (official): the warped image's latent is
    computed under no_grad and detached, so the latent term has no gradient; True: it is
    differentiated through ``encode`` into the warp. Returns loss, pixel, latent, smooth."""
    with torch.no_grad():
        target = encode(fixed) if fixed_latent is None else fixed_latent
    target = target.detach()
    if latent_grad:
        moved = encode(warped)
    else:
        with torch.no_grad():
            moved = encode(warped).detach()
    pixel = F.mse_loss(warped, fixed)
    latent = F.mse_loss(moved, target)
    reg = smoothness(flow)
    return dict(loss=beta * pixel + (1 - beta) * latent + smooth * reg, pixel=pixel, latent=latent, smooth=reg)


def jacobian_determinant(flow: torch.Tensor, pixel_scale: str = "official") -> torch.Tensor:
    """Jacobian determinant of ``x + u(x)`` per pixel, as ``jacobian_determinant_vxm`` (np.gradient:
    central differences inside, one-sided at the borders) after converting the normalised flow
    (B, n, *S) to pixels: ``pixel_scale="official"`` multiplies by n/2 per axis as ``infer.py``
    does, ``"align_corners"`` by (n - 1)/2 (the exact scale of the grid). Returns (B, *S)."""
    n = _check_flow("flow", flow)
    sizes = flow.shape[2:]
    if pixel_scale not in ("official", "align_corners"):
        raise ValueError(f"pixel_scale must be 'official' or 'align_corners', got {pixel_scale!r}")
    scale = [(s if pixel_scale == "official" else s - 1) / 2 for s in sizes]
    disp = torch.stack([flow[:, a] * scale[a] for a in range(n)], 1)
    # J[i][j] = d(x_j + u_j) / d x_i
    J = [[torch.gradient(disp[:, j], dim=1 + i)[0] + (1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    if n == 2:
        return J[0][0] * J[1][1] - J[1][0] * J[0][1]
    return (J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1]) - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
            + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0]))


def folding_percent(flow: torch.Tensor, pixel_scale: str = "official") -> float:
    """Percentage of pixels (voxels) with a non-positive Jacobian determinant, ``100 *
    mean(det <= 0)`` over the batch (``infer.py``'s ``np.sum(jac_det <= 0) / np.prod(shape)``,
    as a percentage). The identity (zero flow) gives 0."""
    with torch.no_grad():
        return float((jacobian_determinant(flow, pixel_scale) <= 0).double().mean().item() * 100.0)


# --- the LDM feature extractor: CompVis openaimodel.UNetModel and the VQ encoder ---------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """CompVis ``timestep_embedding``: ``[cos(t f) | sin(t f)]``, ``f_i = exp(-ln(max_period) i / half)``,
    float32 (float64 for float64 models is the caller's cast)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """CompVis ``ResBlock`` (no scale-shift norm, no up/down): ``in_layers`` (GroupNorm32 + SiLU
    fused, conv), ``emb_layers`` (SiLU, Linear), ``out_layers`` (GroupNorm32 of ``h + emb`` + SiLU
    fused, dropout, zero conv), ``skip_connection`` (1x1 when the width changes)."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int, dropout: float, dims: int, backend: str) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNormAct(32, ch, eps=1e-5, activation="silu", backend=backend),
                                       nn.Identity(), _conv(dims, ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(GroupNormAct(32, out_ch, eps=1e-5, activation="silu", backend=backend),
                                        nn.Identity(), nn.Dropout(dropout),
                                        _zero(_conv(dims, out_ch, out_ch, 3, padding=1)))
        self.skip_connection = nn.Identity() if ch == out_ch else _conv(dims, ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = self.out_layers[0](h, add=self.emb_layers(emb).to(h.dtype))
        h = self.out_layers[3](self.out_layers[2](h))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """CompVis ``AttentionBlock`` with ``QKVAttentionLegacy`` (qkv channels ordered (heads, 3,
    head_dim); ``(q/ch^.25)(k/ch^.25)`` = SDPA's scale): ``norm``, ``qkv`` (Conv1d), ``proj_out``
    (zero Conv1d), residual; attention over all positions through SDPA."""

    def __init__(self, ch: int, num_heads: int, backend: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNormAct(32, ch, eps=1e-5, activation=None, backend=backend)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = _zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, T, C)
        qkv = F.linear(h, self.qkv.weight[..., 0], self.qkv.bias)
        # (B, T, heads, 3, hd) -> q, k, v (B, heads, T, hd)
        q, k, v = qkv.unflatten(-1, (self.num_heads, 3, c // self.num_heads)).permute(3, 0, 2, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        out = F.linear(a.transpose(1, 2).flatten(-2), self.proj_out.weight[..., 0], self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(x.shape)


class _Down(nn.Module):
    """CompVis ``Downsample`` with conv: ``op`` 3x3 stride 2 padding 1 (isotropic in 3D)."""

    def __init__(self, ch: int, dims: int) -> None:
        super().__init__()
        self.op = _conv(dims, ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _Up(nn.Module):
    """CompVis ``Upsample`` with conv: nearest x2 (isotropic in 3D), ``conv`` 3x3."""

    def __init__(self, ch: int, dims: int) -> None:
        super().__init__()
        self.conv = _conv(dims, ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _TimestepSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class LDMUNet(nn.Module):
    """CompVis ``openaimodel.UNetModel`` (unconditional, legacy attention, ``num_head_channels``
    heads, no scale-shift norm, conv resampling), its state-dict keys (LDM checkpoints prefix them
    ``model.diffusion_model.``).

    forward(x, t) -> eps (B, out_channels, *S); :meth:`encoder_features` -> the output of every
    ``input_blocks[i]`` (the repo's ``return_ids=True`` encoder list)."""

    def __init__(self, in_channels: int, out_channels: int, model_channels: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attention_resolutions: Sequence[int], num_head_channels: int,
                 dropout: float = 0.0, spatial_dims: int = 2, backend: str = "auto") -> None:
        super().__init__()
        dims = _check_dims(spatial_dims)
        if model_channels % 32:
            raise ValueError(f"model_channels must be a multiple of 32 (GroupNorm32), got {model_channels}")
        self.model_channels, self.num_res_blocks = model_channels, num_res_blocks
        self.channel_mult, self.spatial_dims = tuple(channel_mult), dims
        emb = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))

        def res(c_in, c_out):
            return ResBlock(c_in, emb, c_out, dropout, dims, backend)

        def attn(c):
            return AttentionBlock(c, c // num_head_channels, backend)

        self.input_blocks = nn.ModuleList([_TimestepSequential(_conv(dims, in_channels, model_channels, 3,
                                                                     padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(_TimestepSequential(*layers))
                chans.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(_TimestepSequential(_Down(ch, dims)))
                chans.append(ch)
                ds *= 2
        self.middle_block = _TimestepSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(_Up(ch, dims))
                    ds //= 2
                self.output_blocks.append(_TimestepSequential(*layers))
        self.out = nn.Sequential(GroupNormAct(32, ch, eps=1e-5, activation="silu", backend=backend), nn.Identity(),
                                 _zero(_conv(dims, model_channels, out_channels, 3, padding=1)))

    def feature_indices(self) -> List[Tuple[int, int]]:
        """Per level, (downsample output of the level above or conv_in, last block of the level): the
        official ``[0, 2], [3, 5], [6, 8], [9, 11]`` for 2 blocks per level."""
        r = self.num_res_blocks
        return [(k * (r + 1), k * (r + 1) + r) for k in range(len(self.channel_mult))]

    def _emb(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        e = timestep_embedding(t, self.model_channels)
        return self.time_embed(e.to(x.dtype))

    def encoder_features(self, x: torch.Tensor, t, upto: Optional[int] = None) -> List[torch.Tensor]:
        emb = self._emb(x, t)
        hs, h = [], x
        for m in self.input_blocks[: upto]:
            h = m(h, emb)
            hs.append(h)
        return hs

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        emb = self._emb(x, t)
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], 1), emb)
        return self.out[2](self.out[0](h))


class _EncResBlock(nn.Module):
    """taming ``ResnetBlock`` without a time embedding: ``norm1``+swish, ``conv1``, ``norm2``+swish,
    dropout, ``conv2``, plus the input (``nin_shortcut`` 1x1 when the width changes). GroupNorm 32, eps 1e-6."""

    def __init__(self, c_in: int, c_out: int, dropout: float, dims: int, backend: str) -> None:
        super().__init__()
        self.norm1 = GroupNormAct(32, c_in, eps=1e-6, activation="silu", backend=backend)
        self.conv1 = _conv(dims, c_in, c_out, 3, padding=1)
        self.norm2 = GroupNormAct(32, c_out, eps=1e-6, activation="silu", backend=backend)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(dims, c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = _conv(dims, c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.dropout(self.norm2(self.conv1(self.norm1(x)))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _TamingEncoder(nn.Module):
    """taming/CompVis ``Encoder`` (``double_z=False``): ``conv_in``, ``down.{i}.{block, attn,
    downsample}``, ``mid.{block_1, attn_1, block_2}``, ``norm_out`` + swish, ``conv_out``."""

    def __init__(self, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, dropout: float, dims: int,
                 backend: str) -> None:
        super().__init__()
        if ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm 32), got {ch}")
        self.conv_in = _conv(dims, in_channels, ch, 3, padding=1)
        in_mult, cur = (1,) + tuple(ch_mult), resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            c_in, c_out = ch * in_mult[i], ch * mult
            for _ in range(num_res_blocks):
                level.block.append(_EncResBlock(c_in, c_out, dropout, dims, backend))
                c_in = c_out
                if cur in attn_resolutions:
                    level.attn.append(AttnBlock(c_in, dims, backend))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(c_in, True, dims)
                cur //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = _EncResBlock(c_in, c_in, dropout, dims, backend)
        self.mid.attn_1 = AttnBlock(c_in, dims, backend)
        self.mid.block_2 = _EncResBlock(c_in, c_in, dropout, dims, backend)
        self.norm_out = GroupNormAct(32, c_in, eps=1e-6, activation="silu", backend=backend)
        self.conv_out = _conv(dims, c_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, blk in enumerate(level.block):
                h = blk(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(self.norm_out(h))


class VQEncoder(nn.Module):
    """The VQ first stage's ``encode`` of ``VQModelInterface`` (no quantisation): ``encoder`` then
    ``quant_conv`` (1x1 to embed_dim). Keys ``encoder.*``, ``quant_conv.*`` (``first_stage_model.``
    in LDM checkpoints)."""

    def __init__(self, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, embed_dim: int,
                 dropout: float = 0.0, spatial_dims: int = 2, backend: str = "auto") -> None:
        super().__init__()
        dims = _check_dims(spatial_dims)
        self.encoder = _TamingEncoder(in_channels, ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
                                      z_channels, dropout, dims, backend)
        self.quant_conv = _conv(dims, z_channels, embed_dim, 1)
        self.factor = 2 ** (len(ch_mult) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))


def ldm_schedule(linear_start: float, linear_end: float, timesteps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """CompVis ``register_schedule`` "linear": betas = linspace(sqrt(start), sqrt(end), T)**2 in
    float64; returns (sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)) as float32 (as stored)."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, 0)
    return ac.sqrt().float(), (1.0 - ac).sqrt().float()


class LDMFeatureExtractor(nn.Module):
    """The frozen VQ encoder (``first_stage``) and LDM UNet (``unet``) that make LDM-Morph's four
    feature stacks (``train.py``): z = encode(img) (no grad), ``x_t = q_sample(z, t, noise)`` with one
    noise tensor for both images, the UNet's encoder features at t. Parameters are frozen
    (requires_grad False); the module stays in eval mode."""

    def __init__(self, unet: dict, vq: dict, schedule: dict, t: int = 1, spatial_dims: int = 2,
                 backend: str = "auto") -> None:
        super().__init__()
        self.first_stage = VQEncoder(**vq, spatial_dims=spatial_dims, backend=backend)
        self.unet = LDMUNet(**unet, spatial_dims=spatial_dims, backend=backend)
        sa, som = ldm_schedule(**schedule)
        self.register_buffer("sqrt_alphas_cumprod", sa, persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", som, persistent=False)
        self.t = t
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LDMFeatureExtractor:
        return super().train(False)  # the official LDM is always in eval mode

    @property
    def factor(self) -> int:
        return self.first_stage.factor

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The VQ latent (pre-quantisation, scale_factor 1); differentiable in the image."""
        return self.first_stage(image)

    def q_sample(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.sqrt_alphas_cumprod[self.t].to(z.dtype)
        s = self.sqrt_one_minus_alphas_cumprod[self.t].to(z.dtype)
        return a * z + s * noise

    @torch.no_grad()
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None):
        """-> (score1, score2, score3, score4, fixed latent). ``noise`` (like the latent) defaults to
        ``randn`` (from ``generator`` when given; the official code draws it unseeded)."""
        zm, zf = self.encode(moving), self.encode(fixed)
        if noise is None:
            noise = torch.randn(zm.shape, generator=generator, device=zm.device, dtype=zm.dtype)
        idx = self.unet.feature_indices()
        upto = idx[-1][1] + 1
        fm = self.unet.encoder_features(self.q_sample(zm, noise), self.t, upto)
        ff = self.unet.encoder_features(self.q_sample(zf, noise), self.t, upto)
        scores = tuple(torch.cat((fm[a], fm[b], ff[a], ff[b]), 1) for a, b in idx)
        return scores + (zf,)


def load_ldm_state_dict(extractor: LDMFeatureExtractor, state_dict: Mapping[str, torch.Tensor],
                        ema: bool = False) -> None:
    """Load a CompVis LatentDiffusion checkpoint's ``state_dict`` (``model.diffusion_model.*``,
    ``first_stage_model.encoder.*`` / ``quant_conv.*``; the decoder, quantizer and schedule buffers
    are not needed) strictly into ``extractor``. ``ema=True`` takes the UNet from ``model_ema.``
    (dot-stripped names); the official registration code uses the non-EMA weights."""
    sd = state_dict.get("state_dict", state_dict)
    unet_keys = extractor.unet.state_dict().keys()
    if ema:
        unet = {k: sd["model_ema.diffusion_model" + k.replace(".", "")] for k in unet_keys}
    else:
        unet = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    first = {k[len("first_stage_model."):]: v for k, v in sd.items()
             if k.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv."))}
    extractor.unet.load_state_dict(unet, strict=True)
    extractor.first_stage.load_state_dict(first, strict=True)


class LDMMorphRegistration(nn.Module):
    """The whole LDM-Morph registration step: ``model`` (:class:`LDMMorph`, the checkpointed
    network) and ``ldm`` (:class:`LDMFeatureExtractor`, frozen).

    forward(moving, fixed, noise=None, generator=None) -> dict(flow, warped, fixed_latent).
    :meth:`loss` adds the hierarchical loss (``latent_grad`` as :func:`hierarchical_loss`)."""

    def __init__(self, config: str = "official", backend: str = "auto", **net_overrides) -> None:
        super().__init__()
        if config not in LDM_MORPH_CONFIGS:
            raise ValueError(f"config must be one of {sorted(LDM_MORPH_CONFIGS)}, got {config!r}")
        cfg = LDM_MORPH_CONFIGS[config]
        self.model = LDMMorph.from_config(config, backend=backend, **net_overrides)
        self.ldm = LDMFeatureExtractor(cfg["unet"], cfg["vq"], cfg["schedule"], cfg["t"],
                                       spatial_dims=self.model.spatial_dims, backend=backend)

    def set_backend(self, backend: str) -> LDMMorphRegistration:
        """Switch every fused op of the network and the feature extractor to ``backend``; returns self."""
        self.model.set_backend(backend)
        for m in self.ldm.modules():
            if isinstance(m, GroupNormAct):
                m.backend = backend
        return self

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        *scores, zf = self.ldm(moving, fixed, noise, generator)
        flow = self.model(moving, fixed, *scores)
        return dict(flow=flow, warped=warp(moving, flow), fixed_latent=zf)

    def loss(self, moving: torch.Tensor, fixed: torch.Tensor, noise: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None, beta: float = 0.6, smooth: float = 0.01,
             latent_grad: bool = False) -> Dict[str, torch.Tensor]:
        out = self(moving, fixed, noise, generator)
        out.update(hierarchical_loss(fixed, out["warped"], out["flow"], self.ldm.encode, out["fixed_latent"],
                                     beta=beta, smooth=smooth, latent_grad=latent_grad))
        return out


# --- the synthetic demo --------------------------------------------------------------------------
def synthetic_pair(size: int = 32, spatial_dims: int = 2, batch: int = 1, seed: int = 0, amplitude: float = 0.08):
    """(moving, fixed, true flow): smooth random blobs in [0, 1] and the same image warped by a
    smooth random displacement (``amplitude`` in normalised units)."""
    g = torch.Generator().manual_seed(seed)
    shape = (size,) * spatial_dims
    grid = identity_grid(shape)
    img = torch.zeros((batch, 1) + shape)
    for _ in range(6):
        c = torch.rand(batch, spatial_dims, generator=g) * 1.2 - 0.6
        r = torch.rand(batch, 1, generator=g) * 0.25 + 0.15
        d2 = ((grid[None] - c.view(batch, *(1,) * spatial_dims, spatial_dims)) ** 2).sum(-1)
        img += torch.exp(-d2 / (2 * r.view(batch, *(1,) * spatial_dims) ** 2))[:, None]
    img = img / img.amax(dim=tuple(range(1, spatial_dims + 2)), keepdim=True)
    coarse = torch.randn((batch, spatial_dims) + (3,) * spatial_dims, generator=g) * amplitude
    flow = F.interpolate(coarse, size=shape, mode="bilinear" if spatial_dims == 2 else "trilinear",
                         align_corners=True)
    return img, warp(img, flow), flow


def demo(steps: int = 40, config: str = "tiny", size: int = 32, lr: float = 1e-3, seed: int = 0,
         latent_grad: bool = False, log: Callable[[str], None] = print) -> List[float]:
    """Train a freshly initialised LDM-Morph (random LDM weights: no pretrained LDM ships) on one
    synthetic pair; prints the loss and the folding percentage. Returns the losses."""
    torch.manual_seed(seed)
    reg = LDMMorphRegistration(config)
    sd = reg.model.spatial_dims
    moving, fixed, _ = synthetic_pair(size, sd, seed=seed)
    opt = torch.optim.Adam(reg.model.parameters(), lr=lr)
    noise_gen = torch.Generator().manual_seed(seed)
    losses = []
    log(f"LDM-Morph {config} ({sd}D, {sum(p.numel() for p in reg.model.parameters()):,} trainable parameters), "
        f"{size}^{sd} synthetic pair, Adam lr {lr}, latent_grad={latent_grad}")
    for step in range(steps):
        reg.model.train()
        out = reg.loss(moving, fixed, generator=noise_gen, latent_grad=latent_grad)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"step {step:3d}  loss {out['loss'].item():.5f}  pixel {out['pixel'].item():.5f}  latent "
                f"{out['latent'].item():.5f}  smooth {out['smooth'].item():.5f}  folding "
                f"{folding_percent(out['flow']):.2f}%")
    reg.model.eval()
    with torch.no_grad():
        out = reg(moving, fixed, generator=noise_gen)
    before = F.mse_loss(moving, fixed).item()
    after = F.mse_loss(out["warped"], fixed).item()
    log(f"MSE(moving, fixed) {before:.5f} -> MSE(warped, fixed) {after:.5f}; folding (|J| <= 0) "
        f"{folding_percent(out['flow']):.2f}% of pixels")
    return losses


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="LDM-Morph on a synthetic pair")
    parser.add_argument("--demo", action="store_true", help="train a tiny LDM-Morph on a synthetic pair")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--config", default="tiny", choices=sorted(LDM_MORPH_CONFIGS))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-grad", action="store_true", help="differentiable latent term (not official)")
    args = parser.parse_args()
    demo(args.steps, args.config, args.size, args.lr, latent_grad=args.latent_grad)
