"""Plain-PyTorch re-creation of SwinCross, module for module as the official code builds it.

The oracle of ``tests/test_models_swincross.py`` and the baseline of ``benchmarks/bench_models.py``
(``medkernels.models.SwinCross`` is checked against it with the same weights). Every layer is a
stock ``nn`` module; attention is written out on partitioned windows (pad, roll, partition,
``q @ k^T``, bias, mask, softmax, ``@ v``, reverse), tokens are (B, L, C) as in the official code.

Source (facts matched, not code): yli192/SwinCross_CrossModalSwinTransformer_for_Medical_Image_Segmentation,
``networks/SwinTransModels.py``: ``SwinUNETR_CrossModalityFusion_OutSum_6stageOuts`` with
``configs_sw.get_3DSwinUNETR_CMFF_hecktor2021_V06_config`` (the model ``train.py`` builds), its
encoder ``SwinTransformer_wCrossModalityFeatureTalk_OutSum_5stageOuts``, ``BasicLayer_crossModality``,
``SwinTransformerBlock_crossModality``, ``WindowAttention_crossModality``, ``PatchMerging``,
``PatchEmbed``, ``SWINUnetrUpBlock``, ``SWINUnetrBlock``, and MONAI's ``UnetResBlock`` /
``UnetrBasicBlock`` / ``UnetrPrUpBlock`` / ``UnetOutBlock`` (0.7.0 as pinned, or >= 0.9).

``official_padding=True`` reproduces the official block's window padding, which puts the D pad
on the W axis and the W pad on the D axis (harmless for cubic inputs only); ``False`` pads each
axis by its own amount.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# the sub-voxel order of the official PatchMerging: offsets (d, h, w)
MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's ``DropPath``): zero a sample's branch with probability p,
    scale the kept ones by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)


def _partition(x: torch.Tensor, w: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * nW, N, C), windows ordered (b, d, h, w)."""
    b, d, h, ww, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], ww // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def _reverse(xw: torch.Tensor, w: Sequence[int], b: int, d: int, h: int, ww: int) -> torch.Tensor:
    x = xw.view(b, d // w[0], h // w[1], ww // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, ww, -1)


def swin_shift_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int], device=None) -> torch.Tensor:
    """The official layer's shift mask on the padded grid: (nW, N, N), -100 between regions."""
    img = torch.zeros((1, *padded, 1), device=device)
    cnt = 0
    slices = [(slice(0, -w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
    for sd in slices[0]:
        for sh in slices[1]:
            for sw in slices[2]:
                img[:, sd, sh, sw, :] = cnt
                cnt += 1
    win = _partition(img, window)[..., 0]  # nW, N
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([w - 1 for w in window])
    return rel[..., 0] * (2 * window[1] - 1) * (2 * window[2] - 1) + rel[..., 1] * (2 * window[2] - 1) + rel[..., 2]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttentionCross(nn.Module):
    """One qkv, one bias table and one proj for both modalities: a's queries on b's keys/values
    and b's queries on a's. Inputs are partitioned windows (B * nW, N, C)."""

    def __init__(self, dim: int, window: Sequence[int], heads: int, qkv_bias: bool, drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.window, self.heads = dim, tuple(window), heads
        self.scale = (dim // heads) ** -0.5
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        bw, n, c = x.shape
        return self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    def _attend(self, q, k, v, mask) -> torch.Tensor:
        bw, _, n, _ = q.shape
        logits = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        logits = logits + bias.reshape(n, n, -1).permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        p = self.attn_drop(logits.softmax(-1))
        return self.proj_drop(self.proj((p @ v).transpose(1, 2).reshape(bw, n, -1)))

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor, mask=None) -> Tuple[torch.Tensor, torch.Tensor]:
        qa, ka, va = self._heads(x_a)
        qb, kb, vb = self._heads(x_b)
        return self._attend(qa, kb, vb, mask), self._attend(qb, ka, va, mask)


class CrossBlock(nn.Module):
    """The official cross-modal block: both streams add stream a's (PET's) pre-norm input after
    attention; the MLP residual is per stream."""

    def __init__(self, dim, heads, window, shift, mlp_ratio, qkv_bias, drop_path_p, drop=0.0,
                 official_padding=True) -> None:
        super().__init__()
        self.window, self.shift, self.official_padding = tuple(window), tuple(shift), official_padding
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttentionCross(dim, window, heads, qkv_bias, drop)
        self.drop_path = DropPath(drop_path_p) if drop_path_p > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _pads(self, size):
        pads = [(w - s % w) % w for s, w in zip(size, self.window)]  # per axis d, h, w
        if self.official_padding:  # F.pad pairs from the last axis: the official order swaps D and W
            return (0, 0, 0, pads[0], 0, pads[1], 0, pads[2])
        return (0, 0, 0, pads[2], 0, pads[1], 0, pads[0])

    def forward(self, x_a, x_b, size, mask):
        b, length, c = x_a.shape
        d, h, w = size
        shortcut = x_a
        ya = F.pad(self.norm1(x_a).view(b, d, h, w, c), self._pads(size))
        yb = F.pad(self.norm1(x_b).view(b, d, h, w, c), self._pads(size))
        dp, hp, wp = ya.shape[1:4]
        shifted = min(self.shift) > 0
        if shifted:
            ya = torch.roll(ya, tuple(-s for s in self.shift), (1, 2, 3))
            yb = torch.roll(yb, tuple(-s for s in self.shift), (1, 2, 3))
        oa, ob = self.attn(_partition(ya, self.window), _partition(yb, self.window), mask if shifted else None)
        oa, ob = _reverse(oa, self.window, b, dp, hp, wp), _reverse(ob, self.window, b, dp, hp, wp)
        if shifted:
            oa = torch.roll(oa, self.shift, (1, 2, 3))
            ob = torch.roll(ob, self.shift, (1, 2, 3))
        oa = oa[:, :d, :h, :w].reshape(b, length, c)
        ob = ob[:, :d, :h, :w].reshape(b, length, c)
        za = shortcut + self.drop_path(oa)
        zb = shortcut + self.drop_path(ob)
        return za + self.drop_path(self.mlp(self.norm2(za))), zb + self.drop_path(self.mlp(self.norm2(zb)))


class PatchMerging(nn.Module):
    """LayerNorm(8 dim) and Linear(8 dim -> out) over the 8 sub-voxels in :data:`MERGE_ORDER`."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, out, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, *size, c)
        parts = [x[:, i::2, j::2, k::2] for i, j, k in MERGE_ORDER]
        return self.reduction(self.norm(torch.cat(parts, -1).reshape(b, -1, 8 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim, depth, heads, window, mlp_ratio, qkv_bias, dpr, downsample: bool, drop=0.0,
                 official_padding=True) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList(
            CrossBlock(dim, heads, window, (0, 0, 0) if i % 2 == 0 else self.shift, mlp_ratio, qkv_bias, dpr[i], drop,
                       official_padding)
            for i in range(depth)
        )
        # computed by the official forward, then discarded: kept for the state dict only
        self.downsample = PatchMerging(dim, 2 * dim) if downsample else None

    def forward(self, x_a, x_b, size):
        padded = [-(-s // w) * w for s, w in zip(size, self.window)]
        mask = swin_shift_mask(padded, self.window, self.shift, x_a.device)
        for blk in self.blocks:
            x_a, x_b = blk(x_a, x_b, size, mask)
        return x_a, x_b


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(1, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        b, c, d, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(b, c, d, h, w)


class SwinCrossEncoderRef(nn.Module):
    """``SwinTransformer_wCrossModalityFeatureTalk_OutSum_5stageOuts``: returns the 5 skips."""

    def __init__(self, patch=2, embed_dim=48, depths=(2, 4, 2, 2), heads=(3, 6, 12, 24), window=(3, 3, 3),
                 mlp_ratio=4.0, qkv_bias=False, drop_path_rate=0.3, pretrain_img_size=160, drop_rate=0.0,
                 official_padding=True) -> None:
        super().__init__()
        c = embed_dim
        self.embed_dim, self.patch = c, patch
        self.patch_embed_mod0 = PatchEmbed(patch, c)
        self.patch_embed_mod1 = PatchEmbed(patch, c)
        g = pretrain_img_size // patch
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, c, g, g, g))
        nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self.patch_merging_layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            dim = 2 * c * 2**i
            self.layers.append(BasicLayer(dim, depth, heads[i], window, mlp_ratio, qkv_bias,
                                          dpr[sum(depths[:i]):sum(depths[:i + 1])], i < len(depths) - 1, drop_rate,
                                          official_padding))
            self.patch_merging_layers.append(PatchMerging(c * 2**i, 2 * c * 2**i))
        for i in range(len(depths)):
            self.add_module(f"norm{i}", nn.LayerNorm(2 * c * 2**i))

    def _embed(self, pe: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        x = pe(x)
        size = tuple(x.shape[2:])
        pos = F.interpolate(self.absolute_pos_embed, size=size, mode="trilinear", align_corners=False)
        return self.pos_drop((x + pos).flatten(2).transpose(1, 2)), size

    @staticmethod
    def _grid(x: torch.Tensor, size, c: int) -> torch.Tensor:
        return x.view(-1, *size, c).permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        xa, size = self._embed(self.patch_embed_mod0, x[:, 0:1])
        xb, _ = self._embed(self.patch_embed_mod1, x[:, 1:2])
        outs = [self._grid(xa + xb, size, self.embed_dim)]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            xa = self.patch_merging_layers[i](xa, size)
            xb = self.patch_merging_layers[i](xb, size)
            size = tuple(s // 2 for s in size)
            ya, yb = layer(xa, xb, size)
            skip = ya + yb
            if i == last:
                skip = getattr(self, f"norm{i}")(skip)
            outs.append(self._grid(skip, size, skip.shape[-1]))
            xa, xb = ya + xa, yb + xb
        return outs


def _conv(cin: int, cout: int, k: int, bias: bool = False, transposed: bool = False) -> nn.Sequential:
    """MONAI's ``Convolution(conv_only=True)``: a Sequential holding ``conv``."""
    if transposed:
        return nn.Sequential(OrderedDict(conv=nn.ConvTranspose3d(cin, cout, k, k, bias=bias)))
    return nn.Sequential(OrderedDict(conv=nn.Conv3d(cin, cout, k, 1, k // 2, bias=bias)))


class UnetResBlock(nn.Module):
    """MONAI's ``UnetResBlock`` (kernel 3, stride 1, instance norm, LeakyReLU 0.01). ``layout``
    "monai07" builds ``conv3`` even when in == out (unused there), as MONAI 0.7.0 does."""

    def __init__(self, cin: int, cout: int, layout: str = "monai07") -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 3)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)
        self.downsample = cin != cout
        if self.downsample or layout == "monai07":
            self.conv3 = _conv(cin, cout, 1)
            self.norm3 = nn.InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        res = self.norm3(self.conv3(x)) if self.downsample else x
        return self.lrelu(out + res)


class UnetrBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layout: str) -> None:
        super().__init__()
        self.layer = UnetResBlock(cin, cout, layout)

    def forward(self, x):
        return self.layer(x)


class UpBlock(nn.Module):
    """``SWINUnetrUpBlock`` (cat, res block 2c -> c, transposed conv k2 s2) or, with
    ``upsample=False``, ``SWINUnetrBlock`` (its k1 transposed conv is built, never used)."""

    def __init__(self, cin: int, cout: int, layout: str, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.transp_conv = _conv(cin, cout, 2 if upsample else 1, transposed=True)
        self.conv_block = UnetResBlock(2 * cin, cin, layout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(torch.cat((x, skip), 1))
        return self.transp_conv(out) if self.upsample else out


class PrUpBlock(nn.Module):
    """MONAI's ``UnetrPrUpBlock`` with ``num_layer=0``: one transposed conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv_init = _conv(cin, cout, 2, transposed=True)
        self.blocks = nn.ModuleList()

    def forward(self, x):
        return self.transp_conv_init(x)


class OutBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, 1, bias=True)

    def forward(self, x):
        return self.conv(x)


class SwinCrossRef(nn.Module):
    """``SwinUNETR_CrossModalityFusion_OutSum_6stageOuts`` in plain PyTorch. Input (B, 2, D, H, W)
    (PET, CT); output (B, 2, D, H, W) logits."""

    def __init__(self, embed_dim=48, depths=(2, 4, 2, 2), heads=(3, 6, 12, 24), window=(3, 3, 3), patch=2,
                 mlp_ratio=4.0, qkv_bias=False, drop_path_rate=0.3, pretrain_img_size=160, layout="monai07",
                 official_padding=True) -> None:
        super().__init__()
        c = embed_dim
        self.transformer = SwinCrossEncoderRef(patch, c, depths, heads, window, mlp_ratio, qkv_bias, drop_path_rate,
                                               pretrain_img_size, official_padding=official_padding)
        self.encoder0 = UnetrBasicBlock(2, c, layout)
        self.encoder1 = UnetrBasicBlock(c, c, layout)
        self.encoder2 = UnetResBlock(2 * c, 2 * c, layout)
        self.encoder3 = UnetResBlock(4 * c, 4 * c, layout)
        self.encoder4 = UnetResBlock(8 * c, 8 * c, layout)
        self.res_botneck = UnetResBlock(16 * c, 16 * c, layout)
        self.decoder5 = PrUpBlock(16 * c, 8 * c)
        self.decoder4 = UpBlock(8 * c, 4 * c, layout)
        self.decoder3 = UpBlock(4 * c, 2 * c, layout)
        self.decoder2 = UpBlock(2 * c, c, layout)
        self.decoder1 = UpBlock(c, c, layout)
        self.decoder0 = UpBlock(c, c, layout, upsample=False)
        self.out = OutBlock(c, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0, s1, s2, s3, s4 = self.transformer(x)
        dec = self.decoder5(self.res_botneck(s4))
        dec = self.decoder4(dec, self.encoder4(s3))
        dec = self.decoder3(dec, self.encoder3(s2))
        dec = self.decoder2(dec, self.encoder2(s1))
        dec = self.decoder1(dec, self.encoder1(s0))
        return self.out(self.decoder0(dec, self.encoder0(x)))
