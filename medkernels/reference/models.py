"""Plain-PyTorch re-creations of the seed models, layer for layer as the official code builds them.

The oracle of ``tests/test_models.py`` and the baseline of ``benchmarks/bench_models.py``:
every layer is a stock ``nn`` module (``nn.Conv3d`` + ``nn.BatchNorm3d`` per branch, ``nn.Linear``
MLPs, explicit permutes), with the official state-dict keys, so the same weights load into
these and into ``medkernels.models`` unchanged.

Sources (facts matched: module tree, keys, shapes, the order of operations):
- mirthAI/DCFormer ``models/dcformer.py``: ``DecompConv3D`` keeps its three BNs in a ModuleList
  ``norm`` that is shared with ``c{1,2,3}.1`` (each BN stored twice); ``ConvBlock`` layer scale
  ``gamma``; ``DecompModel`` holds ``encoder`` (and an unused-by-us VQ codebook ``vq``).
- mirthAI/Med3DVLM ``src/model/encoder/dcformer.py``: the same network with each BN only under
  ``c{i}.1``; ``Encoder.forward`` returns every stage's output and ``DecompModel.forward``
  flattens each to tokens ``b d h w t -> b (t h w) d``.
- mirthAI/Med3DVLM ``src/model/projector/mlp.py``: ``MixerLowHighHybridMLP``.
- mirthAI/Med3DVLM ``DEC_CLIP``: mean over the last stage's tokens, linear, L2 norm; first text
  token, linear, L2 norm; sigmoid or softmax (``logit_scale`` used as is) contrastive loss.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DecompConv3dRef(nn.Module):
    """Three axis convs, each followed by its BN (or nothing), summed. ``shared_norm``: the
    mirthAI/DCFormer layout (BNs also held in ``norm``), else the Med3DVLM layout."""

    def __init__(self, in_dim: int, out_dim: int, k: int, stride: int = 1, groups: int = 1, norm: bool = True,
                 shared_norm: bool = True) -> None:
        super().__init__()
        bns = [nn.BatchNorm3d(out_dim) if norm else nn.Identity() for _ in range(3)]
        if shared_norm:
            self.norm = nn.ModuleList(bns)
        for axis in range(3):
            size, pad = [1, 1, 1], [0, 0, 0]
            size[axis], pad[axis] = k, k // 2
            conv = nn.Conv3d(in_dim, out_dim, tuple(size), stride=stride, padding=tuple(pad), groups=groups)
            setattr(self, f"c{axis + 1}", nn.Sequential(conv, bns[axis]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(x) + self.c2(x) + self.c3(x)


class MLPRef(nn.Module):
    """``mlp.{0,3}``: Linear, GELU, Dropout(0), Linear, Dropout(0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ConvBlockRef(nn.Module):
    """[max-pool 3/2/1 + 1x1x1 conv] -> depthwise DecompConv3d -> channels-last MLP x4 -> layer
    scale -> residual, with NCDHW tensors permuted back and forth as the official block does."""

    def __init__(self, inp: int, oup: int, k: int, downsample: bool, shared_norm: bool = True,
                 scale_name: str = "gamma") -> None:
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.pool = nn.MaxPool3d(3, 2, 1)
            self.proj = nn.Conv3d(inp, oup, 1, 1, 0, bias=False)
        self.dwconv = DecompConv3dRef(oup, oup, k, groups=oup, shared_norm=shared_norm)
        self.mlp = MLPRef(oup, 4 * oup)
        self.scale_name = scale_name
        setattr(self, scale_name, nn.Parameter(1e-6 * torch.ones(oup)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = self.proj(self.pool(x))
        shortcut = x
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = getattr(self, self.scale_name) * self.mlp(y)
        return shortcut + y.permute(0, 4, 1, 2, 3)


def decomposed_stem_ref(inp: int, oup: int, shared_norm: bool = True) -> nn.Sequential:
    """k=7 stride 4, then three k=3; groups 1; BN on every branch (the official code's GELU sits
    in the ``norm`` slot), no activation."""
    return nn.Sequential(DecompConv3dRef(inp, oup, 7, 4, 1, True, shared_norm),
                         *[DecompConv3dRef(oup, oup, 3, 1, 1, True, shared_norm) for _ in range(3)])


class DCFormerEncoderRef(nn.Module):
    """Stages ``s0`` (stem) .. ``s4``; ``forward`` returns each stage's (B, C, H, W, D) output."""

    def __init__(self, num_blocks: Sequence[int], channels: Sequence[int], kernel_sizes=(13, 11, 9, 7),
                 in_channels: int = 1, layout: str = "dcformer") -> None:
        super().__init__()
        shared = layout == "dcformer"
        scale_name = "gamma"
        self.dims = list(channels)
        stem = [decomposed_stem_ref(in_channels if i == 0 else channels[0], channels[0], shared)
                for i in range(num_blocks[0])]
        self.s0 = nn.Sequential(*stem)
        for s in range(1, 5):
            blocks = [ConvBlockRef(channels[s - 1] if i == 0 else channels[s], channels[s], kernel_sizes[s - 1],
                                   i == 0, shared, scale_name) for i in range(num_blocks[s])]
            setattr(self, f"s{s}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = x.permute(0, 1, 3, 4, 2)
        out = []
        for s in range(5):
            x = getattr(self, f"s{s}")(x)
            out.append(x)
        return out


def tokens_ref(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W, D) -> (B, D*H*W, C), tokens ordered (d, h, w) as Med3DVLM flattens them."""
    return h.permute(0, 4, 2, 3, 1).reshape(h.shape[0], -1, h.shape[1])


class DCFormerRef(nn.Module):
    """``DecompModel`` without the VQ: ``encoder.*`` keys; forward returns the token list."""

    def __init__(self, num_blocks, channels, kernel_sizes=(13, 11, 9, 7), in_channels: int = 1,
                 layout: str = "dcformer") -> None:
        super().__init__()
        self.channels = list(channels)
        self.encoder = DCFormerEncoderRef(num_blocks, channels, kernel_sizes, in_channels, layout)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [tokens_ref(h) for h in self.encoder(x)]


# --- Med3DVLM projector --------------------------------------------------------------------
class _ProjectorRef(nn.Module):
    """``mm_projector``: Linear, then (GELU, Linear) x (depth - 1)."""

    def __init__(self, n_in: int, n_out: int, depth: int) -> None:
        super().__init__()
        self.mm_projector = nn.Sequential(nn.Linear(n_in, n_out),
                                          *[nn.Sequential(nn.GELU(), nn.Linear(n_out, n_out))
                                            for _ in range(depth - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(x)


class MixerLayerRef(nn.Module):
    """LayerNorm -> token-mixing MLP (over the transposed tokens) -> LayerNorm -> channel MLP."""

    def __init__(self, input_size, output_size, mlp_depth: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(input_size[1])
        self.ln2 = nn.LayerNorm(input_size[1])
        self.mlp1 = _ProjectorRef(input_size[0], output_size[0], mlp_depth)
        self.mlp2 = _ProjectorRef(input_size[1], output_size[1], mlp_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp1(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return self.mlp2(self.ln2(x))


class MixerLowHighHybridMLPRef(nn.Module):
    """Two mixer stacks (stage-3 tokens, stage-4 tokens); widths double to ``output_dim``; the
    two streams' tokens concatenated."""

    def __init__(self, low_input_size=(256, 384), low_output_size=(192, 128), high_input_size=(32, 768),
                 high_output_size=(64, 128), output_dim: int = 3584, depth: int = 2, mlp_depth: int = 2) -> None:
        super().__init__()

        def stack(inp, outs):
            layers = []
            for i in range(depth):
                size_in = inp if i == 0 else (outs[i - 1], output_dim // 2 ** (depth - i))
                layers.append(MixerLayerRef(size_in, (outs[i], output_dim // 2 ** (depth - i - 1)), mlp_depth))
            return nn.ModuleList(layers)

        self.low_mixer = stack(low_input_size, low_output_size)
        self.high_mixer = stack(high_input_size, high_output_size)

    def forward(self, x):
        low, high = x
        for lo, hi in zip(self.low_mixer, self.high_mixer):
            low, high = lo(low), hi(high)
        return torch.cat([low, high], dim=1)


# --- CLIP losses ------------------------------------------------------------------------------
def med3dvlm_sigmoid_loss_ref(img: torch.Tensor, txt: torch.Tensor, t_prime, bias) -> torch.Tensor:
    """Med3DVLM's sigmoid loss (its distributed branch's definition, one rank): symmetrised
    logits exp(t') * img @ txt.T + b, +1 on the diagonal, -1 elsewhere, summed / N."""
    n = img.shape[0]
    logits = (img @ txt.T) * torch.as_tensor(t_prime).exp() + bias
    logits = (logits + logits.T) / 2
    z = 2 * torch.eye(n, dtype=logits.dtype, device=logits.device) - 1
    return -F.logsigmoid(z * logits).sum() / n


def clip_softmax_loss_ref(img: torch.Tensor, txt: torch.Tensor, logit_scale) -> torch.Tensor:
    """The softmax CLIP loss as Med3DVLM's DEC_CLIP computes it (``logit_scale`` multiplies the
    cosine logits as is), mean of the image->text and text->image cross-entropies."""
    logits = logit_scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
