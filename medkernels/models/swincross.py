"""SwinCross: cross-modal Swin Transformer for PET/CT segmentation (yli192/SwinCross, the class its
``train.py`` builds, ``SwinUNETR_CrossModalityFusion_OutSum_6stageOuts`` with the config
``SwinUNETR_CMFF-hecktor-v06``), with the official state-dict keys, every window attention on the
fused :func:`medkernels.ops.cross_window_attention3d`.

Network (facts from the official code; key names are the official ones):

- Input (B, 2, D, H, W): channel 0 is PET, channel 1 is CT. Output (B, 2, D, H, W) logits.
- ``transformer.patch_embed_mod{0,1}``: per modality Conv3d(1, C, patch, stride patch) + LayerNorm;
  each stream adds ``transformer.absolute_pos_embed`` (1, C, 80, 80, 80), resampled to the patch
  grid every forward (trilinear, align_corners False). Skip 0 is PET + CT.
- Four stages. Before stage i, ``transformer.patch_merging_layers.{i}`` (shared by the streams)
  halves the grid: 8 sub-voxels in the order (0,0,0),(1,0,0),(0,1,0),(0,0,1),(1,1,0),(0,1,1),
  (1,0,1),(1,1,1) concatenated, LayerNorm(8d), Linear(8d -> 2d, no bias). Stage i runs
  ``transformer.layers.{i}.blocks.*`` at 2C * 2^i channels. Skip i + 1 is the sum of the two
  streams' outputs (only the last gets ``transformer.norm3``); each stream then becomes stage
  output + stage input.
- Every block is cross-modal with weights shared by the streams: ``norm1``, one ``attn.qkv``,
  PET's queries on CT's keys/values and CT's queries on PET's, one
  ``attn.relative_position_bias_table``, one ``attn.proj``; both streams add PET's pre-norm input
  (the official ``x_1 = shortcut + attn_1`` with PET's shortcut), then a per-stream
  ``x + mlp(norm2(x))`` (``mlp.fc1``, GELU, ``mlp.fc2``). Window 3^3, shift 1 in odd blocks with
  the -100 shift mask, stochastic depth linearly up to ``drop_path_rate`` over the 10 blocks.
  Unlike MONAI, the window is never clamped to a smaller volume: the 3^3 last stage of a 96^3
  crop still rolls and masks its one window, and a 2-voxel axis is padded to one window.
- Decoder (MONAI blocks, InstanceNorm without affine, LeakyReLU 0.01): ``encoder0`` (UnetrBasicBlock
  on the input, 2 -> C), ``encoder1..4`` and ``res_botneck`` (UnetResBlocks on the skips),
  ``decoder5`` (transposed conv k2 s2), ``decoder4..1`` (cat(decoder, skip), UnetResBlock 2c -> c,
  transposed conv k2 s2), ``decoder0`` (cat with ``encoder0``, UnetResBlock, no upsampling), ``out``
  (1x1 conv with bias, C -> 2).

Keys that the official forward never uses are kept so official checkpoints load with
``strict=True``: ``transformer.layers.{0,1,2}.downsample.*`` (computed and discarded there, not
computed here), ``transformer.norm{0,1,2}.*``, ``decoder0.transp_conv.*`` and the
``relative_position_index`` buffers (the kernels compute the same index from coordinates).

Layouts: the repository pins MONAI 0.7.0, whose ``UnetResBlock`` builds a 1x1 ``conv3`` even
when in == out channels (never used in its forward): ``layout="monai07"`` (default; 113,439,632
parameters at the official config) has those 5 ``conv3`` weights, ``layout="monai09"`` (MONAI
>= 0.9; 112,653,968) does not. :meth:`SwinCross.load_state_dict` detects the layout of the state
dict it is given and adds or drops the unused ``conv3`` modules to match, so either checkpoint
loads strictly into either model.

Crops: D, H and W must each be a multiple of 32 and at least 64 (the four 2x merges need even
grids; at 32 the 1^3 bottleneck breaks InstanceNorm). Non-cubic crops are computed correctly: the
official block pads the window remainder of D onto the W axis and that of W onto D (its
``F.pad`` pairs are in the wrong order), which is harmless only for cubic inputs; here each axis
is padded by its own remainder, as the official code intends.

Ours, beyond the fused attention: the two streams are one stacked (2, B, D, H, W, C) tensor
through every shared layer (one norm, qkv, projection and MLP call a block, not two); the skips
leave the encoder as channels-last views and the decoder runs channels-last 3D, its
InstanceNorms (no affine) as the fused ``group_norm_act`` with one channel a group (the same
statistics, biased variance, eps 1e-5), which keeps that layout where ``nn.InstanceNorm3d`` does
not. The unused ``downsample`` merges are not computed.

``backend`` is handed to every fused op (the window attention and the decoder's group norms):
``"reference"`` runs the plain PyTorch path of each, for checks.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.group_norm import group_norm_act
from ..ops.window_attention import cross_window_attention3d
from ..reference.window_attention import _triple, relative_position_index

# the sub-voxel order of the official PatchMerging, as indices into the (d, h, w)-lexicographic
# 2x2x2 neighbourhood: (0,0,0),(1,0,0),(0,1,0),(0,0,1),(1,1,0),(0,1,1),(1,0,1),(1,1,1)
_MERGE_ORDER = (0, 4, 2, 1, 6, 3, 5, 7)
LAYOUTS = ("monai07", "monai09")

SWINCROSS_CONFIGS: Dict[str, Dict[str, Any]] = {
    # configs_sw.get_3DSwinUNETR_CMFF_hecktor2021_V06_config (crop 96^3)
    "hecktor": dict(embed_dim=48, depths=(2, 4, 2, 2), num_heads=(3, 6, 12, 24), window_size=3, patch_size=2,
                    mlp_ratio=4.0, qkv_bias=False, drop_rate=0.0, drop_path_rate=0.3, ape=True, pretrain_img_size=160),
    # CPU tests: the same structure (two blocks a stage, shifted odd blocks) at 8 channels
    "tiny": dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=3, patch_size=2,
                 mlp_ratio=2.0, qkv_bias=False, drop_rate=0.0, drop_path_rate=0.1, ape=True, pretrain_img_size=64),
}


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample and stream (x is (2, B, ...)): timm's ``DropPath``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty(x.shape[:2] + (1,) * (x.dim() - 2)).bernoulli_(keep)
    return x * mask / keep


class _Mlp(nn.Module):
    """The official ``Mlp``: fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _CrossAttention(nn.Module):
    """``WindowAttention_crossModality``'s parameters; forward is the fused cross op on the two
    streams' qkv (both directions in one call), then the shared projection."""

    def __init__(self, dim: int, heads: int, window: Tuple[int, int, int], qkv_bias: bool, drop: float,
                 backend: str) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"num_heads={heads} must divide the stage's {dim} channels")
        self.dim, self.heads, self.window, self.backend = dim, heads, window, backend
        self.scale = (dim // heads) ** -0.5
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, heads))
        self.register_buffer("relative_position_index", relative_position_index(window).clone())
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, shift: Tuple[int, int, int]) -> torch.Tensor:
        """x: (2, B, D, H, W, C) normalised streams (PET, CT) -> (2, B, D, H, W, C): PET's queries
        on CT, CT's queries on PET."""
        qkv = self.qkv(x)
        # the official block pads the normalised features with zeros before the qkv projection:
        # padding tokens' keys and values are the qkv bias (zeros without one)
        pad_kv = None if self.qkv.bias is None else self.qkv.bias.view(3, self.heads, -1)[1:]
        o_a, o_b = cross_window_attention3d(qkv[0], qkv[1], self.heads, self.window, shift,
                                            self.relative_position_bias_table, -100.0, self.scale, pad_kv,
                                            backend=self.backend, clamp_window=False)
        o = torch.stack((o_a, o_b)).flatten(-2)
        return self.proj_drop(self.proj(o))


class _Block(nn.Module):
    """``SwinTransformerBlock_crossModality`` on the stacked streams (2, B, D, H, W, C)."""

    def __init__(self, dim, heads, window, shift, mlp_ratio, qkv_bias, drop, drop_path, backend) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _CrossAttention(dim, heads, window, qkv_bias, drop, backend)
        self.drop_path = float(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x), self.shift)
        y = x[0] + _drop_path(a, self.drop_path, self.training)  # PET's shortcut on both streams
        return y + _drop_path(self.mlp(self.norm2(y)), self.drop_path, self.training)


class _PatchMerging(nn.Module):
    """The official ``PatchMerging`` on channels-last grids: (..., D, H, W, c) -> (..., D/2, H/2, W/2, out)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, out, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, d, h, w, c = x.shape
        x = x.reshape(-1, d // 2, 2, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(*x.shape[:4], 8, c)[..., list(_MERGE_ORDER), :].reshape(*lead, d // 2, h // 2, w // 2, 8 * c)
        return self.reduction(self.norm(x))


class _Layer(nn.Module):
    """``BasicLayer_crossModality``: the blocks (even unshifted, odd shifted by window // 2) and,
    for the state dict only, the ``downsample`` the official forward computes and discards."""

    def __init__(self, dim, depth, heads, window, mlp_ratio, qkv_bias, drop, dpr, downsample: bool,
                 backend) -> None:
        super().__init__()
        shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList(
            _Block(dim, heads, window, (0, 0, 0) if i % 2 == 0 else shift, mlp_ratio, qkv_bias, drop, dpr[i], backend)
            for i in range(depth)
        )
        self.downsample = _PatchMerging(dim, 2 * dim) if downsample else None  # unused (official keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(1, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> channels-last (B, D/p, H/p, W/p, C)."""
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class _Encoder(nn.Module):
    """``SwinTransformer_wCrossModalityFeatureTalk_OutSum_5stageOuts``: the five skips, channels-first."""

    def __init__(self, patch, embed_dim, depths, heads, window, mlp_ratio, qkv_bias, drop, drop_path_rate, ape,
                 pretrain_img_size, backend) -> None:
        super().__init__()
        c = embed_dim
        self.patch_embed_mod0 = _PatchEmbed(patch, c)
        self.patch_embed_mod1 = _PatchEmbed(patch, c)
        if ape:
            g = pretrain_img_size // patch
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, c, g, g, g))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self.patch_merging_layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.layers.append(_Layer(2 * c * 2**i, depth, heads[i], window, mlp_ratio, qkv_bias, drop,
                                      dpr[first:first + depth], i < len(depths) - 1, backend))
            self.patch_merging_layers.append(_PatchMerging(c * 2**i, 2 * c * 2**i))
        for i in range(len(depths)):  # only the last is used (official keys)
            self.add_module(f"norm{i}", nn.LayerNorm(2 * c * 2**i))
        self.num_layers = len(depths)

    def forward(self, x: torch.Tensor):
        pet = self.patch_embed_mod0(x[:, 0:1])
        ct = self.patch_embed_mod1(x[:, 1:2])
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=pet.shape[1:4], mode="trilinear", align_corners=False)
            pos = pos.permute(0, 2, 3, 4, 1)
            pet, ct = pet + pos, ct + pos
        s = self.pos_drop(torch.stack((pet, ct)))  # (2, B, D, H, W, C): PET, CT
        skips = [s[0] + s[1]]
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            s = self.patch_merging_layers[i](s)
            y = layer(s)
            skip = y[0] + y[1]
            skips.append(getattr(self, f"norm{i}")(skip) if i == last else skip)
            if i < last:
                s = y + s
        # channels-last (B, C, D, H, W) views, no copies: the decoder runs channels-last 3D
        return [t.permute(0, 4, 1, 2, 3) for t in skips]


def _conv(cin: int, cout: int, k: int, bias: bool = False, transposed: bool = False) -> nn.Sequential:
    """MONAI's ``Convolution(conv_only=True)`` holding ``conv`` (its key prefix)."""
    conv = nn.ConvTranspose3d(cin, cout, k, k, bias=bias) if transposed else nn.Conv3d(cin, cout, k, 1, k // 2,
                                                                                       bias=bias)
    return nn.Sequential(OrderedDict(conv=conv))


class _ResBlock(nn.Module):
    """MONAI's ``UnetResBlock`` (kernel 3, stride 1, InstanceNorm without affine, LeakyReLU 0.01).
    The 1x1 ``conv3`` residual projection runs only when in != out; ``layout="monai07"`` also
    builds it (unused) when in == out, as MONAI 0.7.0 does."""

    def __init__(self, cin: int, cout: int, layout: str, backend: str = "auto") -> None:
        super().__init__()
        self.cin, self.cout, self.backend = cin, cout, backend
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 3)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)
        self.set_layout(layout)

    def set_layout(self, layout: str) -> None:
        want = self.cin != self.cout or layout == "monai07"
        has = hasattr(self, "conv3")
        if want and not has:
            w = self.conv1.conv.weight
            self.conv3 = _conv(self.cin, self.cout, 1).to(device=w.device, dtype=w.dtype)
            self.norm3 = nn.InstanceNorm3d(self.cout)
        elif has and not want:
            del self.conv3, self.norm3

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # InstanceNorm without affine is GroupNorm with one channel a group: the fused group norm,
        # which keeps the channels-last layout (nn.InstanceNorm3d is several times slower on it)
        return group_norm_act(x, self.cout, eps=self.norm1.eps, backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._norm(self.conv2(F.leaky_relu(self._norm(self.conv1(x)), 0.01)))
        res = self._norm(self.conv3(x)) if self.cin != self.cout else x
        return F.leaky_relu(out + res, 0.01)


class _BasicBlock(nn.Module):
    """MONAI's ``UnetrBasicBlock(res_block=True)``: its ``layer``."""

    def __init__(self, cin: int, cout: int, layout: str) -> None:
        super().__init__()
        self.layer = _ResBlock(cin, cout, layout)

    def forward(self, x):
        return self.layer(x)


class _UpBlock(nn.Module):
    """``SWINUnetrUpBlock``: cat(decoder, skip), UnetResBlock(2c -> c), transposed conv k2 s2;
    ``upsample=False`` is ``SWINUnetrBlock`` (its k1 transposed conv is built, never run)."""

    def __init__(self, cin: int, cout: int, layout: str, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.transp_conv = _conv(cin, cout, 2 if upsample else 1, transposed=True)
        self.conv_block = _ResBlock(2 * cin, cin, layout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(torch.cat((x, skip), 1))
        return self.transp_conv(out) if self.upsample else out


class _PrUpBlock(nn.Module):
    """MONAI's ``UnetrPrUpBlock(num_layer=0)``: one transposed conv k2 s2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv_init = _conv(cin, cout, 2, transposed=True)
        self.blocks = nn.ModuleList()

    def forward(self, x):
        return self.transp_conv_init(x)


class _OutBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, 1, bias=True)

    def forward(self, x):
        return self.conv(x)


def _layout_of(keys) -> Optional[str]:
    """"monai07" when the state dict has ``encoder1``'s unused conv3, "monai09" when it has
    ``encoder1`` without one, None when it has no ``encoder1``."""
    keys = list(keys)
    if "encoder1.layer.conv3.conv.weight" in keys:
        return "monai07"
    if "encoder1.layer.conv1.conv.weight" in keys:
        return "monai09"
    return None


def _per_stage(name: str, v) -> Tuple[int, int, int, int]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 4:
        raise ValueError(f"{name} must be 4 ints (one per stage), got {v!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in v):
        raise ValueError(f"{name} must be 4 positive ints (one per stage), got {v!r}")
    return tuple(v)  # type: ignore[return-value]


class SwinCross(nn.Module):
    """SwinCross (``SwinUNETR_CrossModalityFusion_OutSum_6stageOuts``), see the module docstring.

    Args (defaults: the official config ``SwinUNETR_CMFF-hecktor-v06``):
        embed_dim: C (48). depths: blocks per stage ((2, 4, 2, 2)). num_heads: per stage
        ((3, 6, 12, 24)); stage i runs at 2C * 2^i channels. window_size: int or 3 ints (3).
        patch_size: patch embedding size (2). mlp_ratio: 4. qkv_bias: False. drop_rate: dropout
        after the position embedding, the attention projection and the MLP (0). drop_path_rate:
        stochastic depth, linear from 0 over the blocks (0.3). ape: absolute position embedding
        (True), a (1, C, P, P, P) parameter with P = pretrain_img_size // patch_size (160 // 2).
        out_channels: classes (2). layout: "monai07" or "monai09" (see the module docstring).
        backend: the fused window attention's backend ("auto", or e.g. "reference").

    forward: (B, 2, D, H, W) PET then CT, D, H, W multiples of 32 and >= 64 -> (B, out_channels,
    D, H, W) logits.
    """

    def __init__(self, embed_dim: int = 48, depths: Sequence[int] = (2, 4, 2, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size=3, patch_size: int = 2,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.3, ape: bool = True, pretrain_img_size: int = 160,
                 out_channels: int = 2, layout: str = "monai07", backend: str = "auto") -> None:
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        depths, num_heads = _per_stage("depths", depths), _per_stage("num_heads", num_heads)
        if patch_size != 2:
            raise ValueError(f"patch_size must be 2 (the decoder's five x2 upsamplings), got {patch_size!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        window = _triple("window_size", window_size, minimum=1)
        self.embed_dim, self.out_channels, self.layout, self._backend = embed_dim, out_channels, layout, backend
        c = embed_dim
        self.transformer = _Encoder(patch_size, c, depths, num_heads, window, mlp_ratio, qkv_bias, drop_rate,
                                    drop_path_rate, ape, pretrain_img_size, backend)
        self.encoder0 = _BasicBlock(2, c, layout)
        self.encoder1 = _BasicBlock(c, c, layout)
        self.encoder2 = _ResBlock(2 * c, 2 * c, layout)
        self.encoder3 = _ResBlock(4 * c, 4 * c, layout)
        self.encoder4 = _ResBlock(8 * c, 8 * c, layout)
        self.res_botneck = _ResBlock(16 * c, 16 * c, layout)
        self.decoder5 = _PrUpBlock(16 * c, 8 * c)
        self.decoder4 = _UpBlock(8 * c, 4 * c, layout)
        self.decoder3 = _UpBlock(4 * c, 2 * c, layout)
        self.decoder2 = _UpBlock(2 * c, c, layout)
        self.decoder1 = _UpBlock(c, c, layout)
        self.decoder0 = _UpBlock(c, c, layout, upsample=False)
        self.out = _OutBlock(c, out_channels)
        self.backend = backend  # every fused op: the window attention and the decoder's group norms

    @classmethod
    def from_config(cls, config: Any, **kwargs) -> SwinCross:
        """From an official ``configs_sw`` config (read by attribute: ``embed_dim``, ``depths``,
        ``num_heads``, ``window_size``, ``patch_size``, ``mlp_ratio``, ``qkv_bias``, ``drop_rate``,
        ``drop_path_rate``, ``ape``); kwargs (layout, backend, ...) pass through."""
        names = ("embed_dim", "depths", "num_heads", "window_size", "patch_size", "mlp_ratio", "qkv_bias",
                 "drop_rate", "drop_path_rate", "ape")
        args = {n: getattr(config, n) for n in names if hasattr(config, n)}
        for n in ("depths", "num_heads", "window_size"):
            if n in args and not isinstance(args[n], int):
                args[n] = tuple(args[n])
        return cls(**{**args, **kwargs})

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        """Sets the fused ops' backend of every block."""
        self._backend = value
        for m in self.modules():
            if isinstance(m, (_CrossAttention, _ResBlock)):
                m.backend = value

    def set_layout(self, layout: str) -> None:
        """Adds ("monai07") or drops ("monai09") the unused ``conv3`` of the UnetResBlocks with in == out."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        for m in self.modules():
            if isinstance(m, _ResBlock):
                m.set_layout(layout)
        self.layout = layout

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` after matching the state dict's layout (MONAI 0.7.0 with
        the unused ``conv3`` keys, or >= 0.9 without): either official layout loads strictly."""
        found = _layout_of(state_dict.keys())
        if found is not None and found != self.layout:
            self.set_layout(found)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (B, 2, D, H, W), got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != 2:
            raise ValueError(f"x must be (B, 2, D, H, W) with channel 0 PET and 1 CT, got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % 32 or s < 64 for s in spatial):
            raise ValueError(
                f"x's crop (D, H, W) must be multiples of 32 and >= 64 on every axis (four x2 patch merges "
                f"after the x2 patch embedding; 32 leaves a 1^3 bottleneck), got {spatial}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s0, s1, s2, s3, s4 = self.transformer(x)
        dec = self.decoder5(self.res_botneck(s4))
        dec = self.decoder4(dec, self.encoder4(s3))
        dec = self.decoder3(dec, self.encoder3(s2))
        dec = self.decoder2(dec, self.encoder2(s1))
        dec = self.decoder1(dec, self.encoder1(s0))
        x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.out(self.decoder0(dec, self.encoder0(x)))


def SwinUNETR_CrossModalityFusion_OutSum_6stageOuts(config: Any, **kwargs) -> SwinCross:  # noqa: N802
    """The official class name: ``SwinCross.from_config(config)`` (an official ``configs_sw`` config)."""
    return SwinCross.from_config(config, **kwargs)
