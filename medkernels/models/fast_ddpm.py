"""The Fast-DDPM noise-prediction UNet (mirthAI/Fast-DDPM ``models/diffusion.py``, class ``Model``),
2D with the official state-dict keys, and the same network in 3D.

Network (facts from the official code; every key name below is the official one):

- ``temb.dense.{0,1}``: Linear(ch, 4ch), swish, Linear(4ch, 4ch) over the sinusoidal embedding of
  t, frequencies ``exp(-ln(1e4) * i / (half - 1))``, ``[sin | cos]`` (t is used as a float).
- ``conv_in`` 3x3; ``down.{i}`` for each level i of ``ch_mult``: ``block.{j}`` (num_res_blocks
  ResnetBlocks ch*in_mult -> ch*ch_mult[i]), ``attn.{j}`` after each block at levels whose
  resolution (counted from ``image_size``, halved per level) is in ``attn_resolutions``, and
  ``downsample.conv`` (pad the far side of each spatial axis by one, 3x3 stride 2, no padding)
  except at the last level.
- ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``.
- ``up.{i}`` indexed by level (the official code builds them bottom-up with ``insert(0, ...)``):
  ``block.{j}`` for j < num_res_blocks + 1, each taking ``cat([h, skip])``, ``attn.{j}`` as down,
  ``upsample.conv`` (nearest x2, 3x3) except at level 0.
- ``norm_out`` + swish, ``conv_out`` 3x3.
- ResnetBlock: ``norm1`` (GroupNorm) + swish, ``conv1``, ``+ temb_proj(swish(temb))``, ``norm2`` +
  swish, dropout, ``conv2``, plus the input (through the 1x1 ``nin_shortcut`` when the width
  changes). AttnBlock: ``norm``, 1x1 ``q``/``k``/``v``, single-head softmax attention over all
  positions with scale c^-0.5, 1x1 ``proj_out``, plus the input. Every GroupNorm has 32 groups,
  eps 1e-6.

Ours: every GroupNorm is a :class:`medkernels.nn.GroupNormAct` (an ``nn.GroupNorm`` subclass with
the same keys), so ``norm1`` + swish, ``norm2`` with the time-embedding add + swish, and
``norm_out`` + swish are each one fused ``group_norm_act``; the attention norms use it without an
activation. ``swish(temb)`` is computed once per forward (the official code recomputes the same
value in every block) and attention runs through ``F.scaled_dot_product_attention`` (the same
softmax(q k^T / sqrt(c)) v). ``backend`` is handed to every fused op.

Dtypes: the official embedding is always float32, so the official model runs in float32 only
(fp16/bf16 through autocast). Ours computes the sinusoidal embedding in float32 (float64 when the
parameters are float64) and casts it to the parameters' dtype, so a float64 or 16-bit model runs
without autocast; in float32 it is the official computation.

``spatial_dims=3`` builds the same network in 3D: Conv3d, the downsample's far-side pad on all
three axes before the stride-2 3x3x3 conv, nearest x2 upsampling, attention over all D*H*W
positions. The official code is 2D only: the 3D network has no official keys or outputs to match.

Conditioning is channel concatenation, the noisy image last (the official ``functions/losses.py``
and ``functions/denoising.py``): ``cat([condition, x_t])`` for denoising (ldfd) and translation
(brats), model type ``sg``; ``cat([x_bw, x_fw, x_t])`` for super-resolution (pmub), type ``sr``.
:func:`sg_input` / :func:`sr_input` build them; :class:`medkernels.diffusion.FastDDPMSampler`
takes ``cond`` and concatenates ``cat([cond, x_t])`` itself, so for sr pass
``cond=sr_condition(x_bw, x_fw)``.

Checkpoints: :func:`load_fast_ddpm_checkpoint` loads the official ``[state_dict, optimizer,
epoch, step(, ema_shadow)]`` lists (the model state dict with DataParallel's ``module.`` prefix,
the EMA shadow with bare keys; sampling uses the EMA, as the official runner does) or a plain
state dict.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.group_norm import GroupNormAct

# The networks of the official configs/*.yml (model section, and data.image_size).
_OFFICIAL = dict(ch=128, out_ch=1, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.0, image_size=256, resamp_with_conv=True)
FAST_DDPM_CONFIGS: Dict[str, dict] = {
    "ldfd_linear": dict(_OFFICIAL, in_channels=2),   # low-dose -> full-dose CT denoising, type sg
    "brats_linear": dict(_OFFICIAL, in_channels=2),  # BraTS MRI translation, type sg
    "pmub_linear": dict(_OFFICIAL, in_channels=3),   # multi-image super-resolution, type sr
    # CPU tests: two levels (8^d and 4^d), attention at the second and in the middle
    "tiny": dict(ch=32, out_ch=1, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                 in_channels=2, image_size=8, resamp_with_conv=True),
}
# config -> the official model type (how the input is conditioned)
FAST_DDPM_CONDITIONING: Dict[str, str] = {"ldfd_linear": "sg", "brats_linear": "sg", "pmub_linear": "sr",
                                          "tiny": "sg"}
# the diffusion section shared by the official configs (FastDDPMSchedule's arguments)
FAST_DDPM_DIFFUSION = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)

_GROUPS, _EPS = 32, 1e-6


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) ``[sin(t f) | cos(t f)]``, ``f_i = exp(-ln(1e4) i / (half - 1))``,
    computed in ``dtype`` (the official code: float32); odd ``dim`` gets a zero last column."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"the embedding width (ch) must be >= 4, got {dim}")
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _conv(spatial_dims: int, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return (nn.Conv2d, nn.Conv3d)[spatial_dims - 2](c_in, c_out, k, stride=stride, padding=padding)


def _norm(channels: int, activation: Optional[str], backend: str) -> GroupNormAct:
    return GroupNormAct(_GROUPS, channels, eps=_EPS, activation=activation, backend=backend)


class ResnetBlock(nn.Module):
    """``x' + conv2(drop(swish(norm2(conv1(swish(norm1(x))) + temb_proj(swish(temb))))))``, x'
    through ``nin_shortcut`` (1x1) when the width changes. ``forward(x, temb_act)`` takes the
    already activated embedding ``swish(temb)`` (B, temb_ch)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float, spatial_dims: int,
                 backend: str) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels, "silu", backend)
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels, "silu", backend)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = _conv(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        h = self.norm2(h, add=self.temb_proj(temb_act).to(h.dtype))  # the time-embedding add, fused
        h = self.conv2(self.dropout(h))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, 1x1 q/k/v/proj_out, scale c^-0.5,
    residual."""

    def __init__(self, channels: int, spatial_dims: int, backend: str) -> None:
        super().__init__()
        self.norm = _norm(channels, None, backend)
        self.q = _conv(spatial_dims, channels, channels, 1)
        self.k = _conv(spatial_dims, channels, channels, 1)
        self.v = _conv(spatial_dims, channels, channels, 1)
        self.proj_out = _conv(spatial_dims, channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, N, C) tokens, a view
        # the three 1x1 convs as one GEMM on the tokens (the same weights, concatenated)
        w = torch.cat([m.weight.reshape(c, c) for m in (self.q, self.k, self.v)])
        qkv = F.linear(h, w, torch.cat([self.q.bias, self.k.bias, self.v.bias]))
        a = F.scaled_dot_product_attention(*qkv.split(c, dim=-1))  # softmax(q k^T / sqrt(c)) v
        out = F.linear(a, self.proj_out.weight.reshape(c, c), self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(x.shape)


class Downsample(nn.Module):
    """With conv: zero-pad the far side of every spatial axis by one, then 3x3 stride 2, padding 0
    (the official (0, 1, 0, 1) pad in 2D). Without: 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool, spatial_dims: int) -> None:
        super().__init__()
        self.with_conv, self.spatial_dims = with_conv, spatial_dims
        if with_conv:
            self.conv = _conv(spatial_dims, channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1) * self.spatial_dims))
        return (F.avg_pool2d, F.avg_pool3d)[self.spatial_dims - 2](x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (when ``with_conv``)."""

    def __init__(self, channels: int, with_conv: bool, spatial_dims: int) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = _conv(spatial_dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


def _check_int(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return v


def _ints(name: str, v, low: int) -> tuple:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ValueError(f"{name} must be a sequence of ints, got {v!r}")
    return tuple(_check_int(f"{name}[{i}]", x, low) for i, x in enumerate(v))


class FastDDPMUNet(nn.Module):
    """The Fast-DDPM UNet (the official ``Model``), 2D or 3D; see the module docstring.

    Args:
        ch: base width (a multiple of 32: every GroupNorm has 32 groups); the time embedding is 4ch.
        out_ch: output channels (1: the predicted noise of a single-channel image).
        ch_mult: width multiplier per level.
        num_res_blocks: ResnetBlocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (counted from ``image_size``, halved per level) with
            attention after each ResnetBlock.
        dropout: inside each ResnetBlock, before ``conv2``.
        in_channels: input channels (conditioning + the noisy image; see :func:`sg_input`).
        image_size: the input must be exactly image_size on every spatial axis (official).
        resamp_with_conv: convs in the up/down sampling (else average pooling / plain nearest).
        spatial_dims: 2 (official) or 3 (no official weights exist).
        backend: the backend of every fused group-norm op ("auto", "cpu", "reference", ...).

    forward(x, t): x (B, in_channels, S, S[, S]) with S = image_size, t (B,) timesteps (any real
    dtype, used as float; a number or 0-d tensor is broadcast); returns (B, out_ch, S, S[, S]).
    """

    def __init__(self, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float, in_channels: int, image_size: int,
                 resamp_with_conv: bool = True, spatial_dims: int = 2, backend: str = "auto") -> None:
        super().__init__()
        _check_int("ch", ch)
        if ch % _GROUPS:
            raise ValueError(f"ch must be a multiple of {_GROUPS} (GroupNorm groups), got {ch}")
        ch_mult = _ints("ch_mult", ch_mult, 1)
        if not ch_mult:
            raise ValueError("ch_mult must have at least one level, got ()")
        attn_resolutions = _ints("attn_resolutions", attn_resolutions, 1)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        image_size = _check_int("image_size", image_size)
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size must be divisible by 2**(len(ch_mult) - 1) = {2 ** (len(ch_mult) - 1)}, "
                             f"got {image_size}")
        self.ch, self.out_ch, self.ch_mult = ch, _check_int("out_ch", out_ch), ch_mult
        self.num_res_blocks = _check_int("num_res_blocks", num_res_blocks)
        self.attn_resolutions, self.dropout_p = attn_resolutions, float(dropout)
        self.in_channels, self.resolution = _check_int("in_channels", in_channels), image_size
        self.resamp_with_conv, self.spatial_dims = bool(resamp_with_conv), spatial_dims
        self.temb_ch = 4 * ch
        self.num_resolutions = len(ch_mult)
        sd, nrb = spatial_dims, num_res_blocks

        def res(c_in, c_out):
            return ResnetBlock(c_in, c_out, self.temb_ch, dropout, sd, backend)

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = _conv(sd, in_channels, ch, 3, padding=1)

        in_mult = (1,) + ch_mult
        cur = image_size
        self.down = nn.ModuleList()
        c = ch
        for i in range(self.num_resolutions):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            c, c_out = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(nrb):
                level.block.append(res(c, c_out))
                c = c_out
                if cur in attn_resolutions:
                    level.attn.append(AttnBlock(c, sd, backend))
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(c, resamp_with_conv, sd)
                cur //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = res(c, c)
        self.mid.attn_1 = AttnBlock(c, sd, backend)
        self.mid.block_2 = res(c, c)

        ups = []
        for i in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            c_out = ch * ch_mult[i]
            for j in range(nrb + 1):
                skip = ch * (in_mult[i] if j == nrb else ch_mult[i])
                level.block.append(res(c + skip, c_out))
                c = c_out
                if cur in attn_resolutions:
                    level.attn.append(AttnBlock(c, sd, backend))
            if i != 0:
                level.upsample = Upsample(c, resamp_with_conv, sd)
                cur *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)

        self.norm_out = _norm(c, "silu", backend)
        self.conv_out = _conv(sd, c, out_ch, 3, padding=1)
        self.backend = backend
        self.config_name: Optional[str] = None  # set by from_config, with the official model type
        self.conditioning: Optional[str] = None

    @classmethod
    def from_config(cls, name: str, **overrides) -> FastDDPMUNet:
        """A network of :data:`FAST_DDPM_CONFIGS` (``"ldfd_linear"``, ``"brats_linear"``,
        ``"pmub_linear"``: the official yml files; ``"tiny"``: CPU tests), any constructor argument
        overridden (``spatial_dims=3``, ``backend=...``, ``image_size=...``)."""
        if name not in FAST_DDPM_CONFIGS:
            raise ValueError(f"name must be one of {sorted(FAST_DDPM_CONFIGS)}, got {name!r}")
        model = cls(**{**FAST_DDPM_CONFIGS[name], **overrides})
        model.config_name, model.conditioning = name, FAST_DDPM_CONDITIONING[name]
        return model

    def set_backend(self, backend: str) -> FastDDPMUNet:
        """Switch every fused op to ``backend``; returns self."""
        for m in self.modules():
            if isinstance(m, GroupNormAct):
                m.backend = backend
        self.backend = backend
        return self

    def _check_inputs(self, x, t) -> torch.Tensor:
        nd = 2 + self.spatial_dims
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        want = (self.in_channels,) + (self.resolution,) * self.spatial_dims
        if x.dim() != nd or tuple(x.shape[1:]) != want:
            shape = "x".join(str(self.resolution) for _ in range(self.spatial_dims))
            raise ValueError(f"x must be (B, {self.in_channels}, {shape}) (in_channels, image_size={self.resolution} "
                             f"on every spatial axis), got shape {tuple(x.shape)}")
        if not isinstance(t, torch.Tensor):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError(f"t must be a tensor of timesteps (B,) or a number, got {type(t).__name__}")
            t = torch.tensor(float(t), device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.dim() != 1 or t.shape[0] != x.shape[0] or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must be real timesteps of shape ({x.shape[0]},) (one per sample of x), "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"t is on {t.device} but x is on {x.device}: move them to one device")
        return t

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = self._check_inputs(x, t)
        dense = self.temb.dense
        pdtype = dense[0].weight.dtype
        emb = timestep_embedding(t, self.ch, torch.float64 if pdtype == torch.float64 else torch.float32)
        temb = dense[1](F.silu(dense[0](emb.to(pdtype))))
        temb = F.silu(temb)  # every block's temb_proj takes swish(temb): computed once here

        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if i != self.num_resolutions - 1:
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for i in reversed(range(self.num_resolutions)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(self.norm_out(h))


# --- conditioning ---------------------------------------------------------------------------
def _check_images(**tensors) -> None:
    ref_name, ref = next(iter(tensors.items()))
    for name, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if v.dim() < 3 or v.shape[0] != ref.shape[0] or v.shape[2:] != ref.shape[2:]:
            raise ValueError(f"{name} must be (B, C, *spatial) matching {ref_name} {tuple(ref.shape)} except in "
                             f"channels, got shape {tuple(v.shape)}")


def sg_input(condition: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The network input of the official type ``sg`` (ldfd denoising, brats translation):
    ``cat([condition, x_t], 1)``, the noisy image last."""
    _check_images(x_t=x_t, condition=condition)
    return torch.cat([condition, x_t], dim=1)


def sr_condition(x_bw: torch.Tensor, x_fw: torch.Tensor) -> torch.Tensor:
    """``cat([x_bw, x_fw], 1)``: the ``cond`` to give :class:`FastDDPMSampler` for type ``sr``
    (it concatenates ``cat([cond, x_t])``, so the model sees the official order)."""
    _check_images(x_bw=x_bw, x_fw=x_fw)
    return torch.cat([x_bw, x_fw], dim=1)


def sr_input(x_bw: torch.Tensor, x_fw: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The network input of the official type ``sr`` (pmub super-resolution):
    ``cat([x_bw, x_fw, x_t], 1)``, the previous and next slices, then the noisy image."""
    _check_images(x_t=x_t, x_bw=x_bw, x_fw=x_fw)
    return torch.cat([x_bw, x_fw, x_t], dim=1)


# --- checkpoints ----------------------------------------------------------------------------
def _strip_module(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    keys = list(sd)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _is_state_dict(v) -> bool:
    return isinstance(v, Mapping) and len(v) > 0 and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def load_fast_ddpm_checkpoint(model: nn.Module, ckpt, ema: bool = True, strict: bool = True):
    """Load an official Fast-DDPM checkpoint (or a plain state dict) into ``model``.

    Args:
        model: a :class:`FastDDPMUNet` (or any module with the official keys).
        ckpt: a path (``torch.load``-ed on the CPU with ``weights_only=True``) or the loaded object:
            the official list ``[model_state_dict ("module."-prefixed: DataParallel), optimizer
            state, epoch, step, ema_shadow]`` (``ema_shadow`` only when the config has
            ``model.ema``: bare keys, parameters only), or a plain state dict (a ``module.`` prefix on
            every key is stripped).
        ema: with the list form, load the EMA shadow (what the official sampler uses) instead of
            the raw weights. Ignored for a plain state dict.
        strict: as ``nn.Module.load_state_dict``.

    Returns:
        ``load_state_dict``'s result (missing and unexpected keys).
    """
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(ckpt, (list, tuple)):
        if len(ckpt) not in (4, 5) or not _is_state_dict(ckpt[0]):
            raise ValueError("ckpt must be the official list [model state dict, optimizer state, epoch, step"
                             f"(, ema shadow)] or a state dict, got a {type(ckpt).__name__} of {len(ckpt)} items"
                             + ("" if ckpt and _is_state_dict(ckpt[0]) else " whose first is not a state dict"))
        if ema:
            if len(ckpt) != 5:
                raise ValueError("ckpt has no EMA shadow (a 4-item list: the config had model.ema False); "
                                 "pass ema=False to load the raw weights")
            shadow = ckpt[4]
            if not _is_state_dict(shadow):
                raise ValueError(f"ckpt[4] (the EMA shadow) must be a dict of parameter tensors, got "
                                 f"{type(shadow).__name__}")
            sd = _strip_module(shadow)
        else:
            sd = _strip_module(ckpt[0])
    elif _is_state_dict(ckpt):
        sd = _strip_module(ckpt)
    else:
        got = type(ckpt).__name__
        if isinstance(ckpt, Mapping):
            odd = [f"{k!r}: {type(v).__name__}" for k, v in ckpt.items() if not isinstance(v, torch.Tensor)][:3]
            got = f"a {got} with non-tensor entries ({', '.join(odd)})" if odd else f"an empty {got}"
        raise ValueError("ckpt must be a path, the official checkpoint list [model state dict, optimizer state, "
                         f"epoch, step(, ema shadow)] or a state dict (str -> Tensor), got {got}")
    if "logvar" in sd and not hasattr(model, "logvar"):
        raise ValueError("ckpt holds 'logvar' (official model type 'bayesian'), which FastDDPMUNet does not build")
    return model.load_state_dict(sd, strict=strict)
