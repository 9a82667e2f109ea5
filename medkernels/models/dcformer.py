"""DCFormer: the decomposed-convolution 3D encoder (mirthAI/DCFormer, Med3DVLM's vision tower).

Network (facts from mirthAI/DCFormer ``models/dcformer.py``):

- input (B, C, D, H, W) is permuted to (B, C, H, W, D) first, as the official forward does;
- ``s0``, the decomposed stem: DecompConv3d k=7 stride 4, then three k=3, groups 1, each with a
  BatchNorm per branch and no activation (the official code passes ``nn.GELU()`` into the
  ``norm`` slot, which only switches the BNs on);
- ``s1``..``s4``: ConvBlocks with kernels 13, 11, 9, 7. The first block of a stage downsamples
  (max-pool 3/2/1, then a 1x1x1 conv without bias); every block runs a depthwise DecompConv3d, a
  channels-last MLP (x4, GELU), the layer scale ``gamma`` (init 1e-6) and the residual.

Fast path: the whole network runs channels-last (NDHWC memory), so the MLP's "permute to
channels-last" is a view, the 1x1x1 projection is one GEMM on that view, and every DecompConv3d
(eval: BNs folded, one fused kernel) keeps the layout. In eval the layer scale is folded into the
second MLP linear and the residual added in place.

State dicts: ours is the mirthAI/DCFormer layout (each BN under ``norm.{i}`` and ``c{i+1}.1``).
A load pre-hook fills whichever of the two copies is missing, so the Med3DVLM layout (BN only
under ``c{i}.1``) loads with ``strict=True``, and accepts ``scale`` for ``gamma``. The VQ codebook
``vq.*`` of mirthAI's ``DecompModel`` is not part of the encoder: :class:`DCFormer` sets it aside
in ``unused_state`` so that checkpoint loads strictly too.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.decomp_conv import DecompConv3d
from ..ops.decomp_conv import decomp_conv3d

# name: (blocks per stage s0..s4, channels per stage). Kernel sizes 13/11/9/7 for s1..s4.
DCFORMER_CONFIGS: Dict[str, tuple] = {
    "nano": ((1, 1, 1, 1, 1), (32, 32, 64, 128, 256)),
    "naive": ((1, 2, 2, 2, 2), (32, 64, 128, 256, 512)),
    "tiny": ((1, 2, 3, 3, 2), (64, 96, 192, 384, 768)),
    "small": ((1, 2, 3, 6, 2), (64, 96, 192, 384, 768)),
    "base": ((1, 2, 6, 6, 2), (64, 128, 256, 512, 1024)),
}
KERNEL_SIZES = (13, 11, 9, 7)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _linear_cl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A per-voxel linear map over the channels of a 5-D (B, C, ...) tensor, as one GEMM on its
    channels-last view; the result is channels-last (B, C_out, ...)."""
    y = F.linear(x.permute(0, 2, 3, 4, 1), weight.reshape(weight.shape[0], -1), bias)
    return y.permute(0, 4, 1, 2, 3)


def _cached(module: nn.Module, tag, make):
    """``make()`` (derived weights: folded BNs, layer scale) cached on ``module`` while none of its
    parameters and buffers changed (same storage, same version). Inference only: with autograd
    on (or while compiling) the weights are derived afresh so gradients flow through them."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return make()
    key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version)
                for t in (*module.parameters(), *module.buffers()))
    cache = module.__dict__.setdefault("_derived_cache", {})
    hit = cache.get(tag)
    if hit is None or hit[0] != key:
        hit = cache[tag] = (key, make())
    return hit[1]


class _MLP(nn.Module):
    """Holds the official ``mlp.mlp.{0,3}`` parameters; :class:`ConvBlock` runs them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))


class ConvBlock(nn.Module):
    """DCFormer's ConvBlock. Input/output (B, C, H, W, D), any layout (channels-last preferred)."""

    def __init__(self, inp: int, oup: int, kernel_size: int, downsample: bool = False, backend: str = "auto",
                 layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.pool = nn.MaxPool3d(3, 2, 1)
            self.proj = nn.Conv3d(inp, oup, 1, 1, 0, bias=False)
        self.dwconv = DecompConv3d(oup, oup, kernel_size, groups=oup, backend=backend)
        self.mlp = _MLP(oup, 4 * oup)
        self.gamma = nn.Parameter(layer_scale * torch.ones(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = _linear_cl(F.max_pool3d(x, 3, 2, 1), self.proj.weight)
        shortcut = x.permute(0, 2, 3, 4, 1)
        h = run_decomp(self.dwconv, x).permute(0, 2, 3, 4, 1)
        fc1, fc2 = self.mlp.mlp[0], self.mlp.mlp[3]
        h = F.gelu(F.linear(h, fc1.weight, fc1.bias))
        if self.training or torch.is_grad_enabled():
            y = shortcut + self.gamma * F.linear(h, fc2.weight, fc2.bias)
        else:
            # eval/inference: gamma folded into the second linear, residual added in place
            w2, b2 = _cached(self, ("fc2", h.dtype), lambda: ((fc2.weight * self.gamma[:, None]).to(h.dtype),
                                                            (fc2.bias * self.gamma).to(h.dtype)))
            y = F.linear(h, w2, b2).add_(shortcut)
        return y.permute(0, 4, 1, 2, 3)


def _batch_stats(conv: DecompConv3d) -> bool:
    bn = conv.norm[0]
    return isinstance(bn, nn.BatchNorm3d) and (conv.training or not bn.track_running_stats)


def run_decomp(conv: DecompConv3d, x: torch.Tensor) -> torch.Tensor:
    """One DecompConv3d of the model. Eval (folded BN): our fused kernel. Training (batch
    statistics per branch, so three separate branch outputs are needed anyway) with
    ``backend="auto"``: the three branch convs + BNs as stock layers (oneDNN/cuDNN conv with its
    fast weight gradient); any explicit backend is honoured."""
    if _batch_stats(conv):
        return conv.c1(x) + conv.c2(x) + conv.c3(x) if conv.backend == "auto" else conv(x)
    if torch.is_grad_enabled() or conv.act is not None:
        return conv(x)
    w_d, w_h, w_w, bias = _cached(conv, ("fold", x.dtype), lambda: tuple(t.to(x.dtype) for t in conv.folded()))
    return decomp_conv3d(x, w_d, w_h, w_w, bias, stride=conv.stride, groups=conv.groups, backend=conv.backend,
                         channels_last=True)


class DecomposedStem(nn.Sequential):
    """DecompConv3d k=7 stride 4, then three k=3 (groups 1, BN, no activation). In eval on CPU
    these dense layers run our register-blocked tap kernel (``backend="auto"`` picks it for
    groups 1), each writing channels-last output."""

    def __init__(self, inp: int, oup: int, backend: str = "auto") -> None:
        super().__init__(DecompConv3d(inp, oup, 7, stride=4, groups=1, backend=backend),
                         *[DecompConv3d(oup, oup, 3, stride=1, groups=1, backend=backend) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self:
            # a no-op after our kernels (they wrote channels-last); stock convs in training may not
            x = run_decomp(conv, x).contiguous(memory_format=torch.channels_last_3d)
        return x


def decomposed_stem(inp: int, oup: int, backend: str = "auto") -> nn.Sequential:
    return DecomposedStem(inp, oup, backend)


def _fill_layouts(module: nn.Module, state_dict, prefix: str, *args) -> None:
    """Load pre-hook: the Med3DVLM layout (BN only under ``c{i}.1``, layer scale ``scale``) and
    the mirthAI layout (BN also under ``norm.{i}``) both become ours."""
    for name, sub in module.named_modules():
        base = f"{prefix}{name}." if name else prefix
        if isinstance(sub, DecompConv3d) and isinstance(sub.norm[0], nn.BatchNorm3d):
            for i in range(3):
                for key in _BN_KEYS:
                    a, b = f"{base}norm.{i}.{key}", f"{base}c{i + 1}.1.{key}"
                    if a not in state_dict and b in state_dict:
                        state_dict[a] = state_dict[b]
                    elif b not in state_dict and a in state_dict:
                        state_dict[b] = state_dict[a]
        elif isinstance(sub, ConvBlock):
            if f"{base}gamma" not in state_dict and f"{base}scale" in state_dict:
                state_dict[f"{base}gamma"] = state_dict.pop(f"{base}scale")


class DCFormerEncoder(nn.Module):
    """The DCFormer encoder (official ``Encoder``): stem ``s0`` and stages ``s1``..``s4``.

    Args:
        num_blocks: blocks of s0..s4. channels: widths of s0..s4.
        kernel_sizes: DecompConv3d kernels of s1..s4 (official 13, 11, 9, 7).
        in_channels: input channels (1 for CT).
        backend: the DecompConv3d kernel backend ("auto", "cuda", "triton", "cpu", "reference").

    ``forward(x)``: x (B, in_channels, D, H, W) -> list of the 5 stage outputs, each
    (B, C_s, H_s, W_s, D_s) in the official (permuted) axis order, channels-last memory.
    """

    def __init__(self, num_blocks: Sequence[int], channels: Sequence[int], kernel_sizes=KERNEL_SIZES,
                 in_channels: int = 1, backend: str = "auto") -> None:
        super().__init__()
        if len(num_blocks) != 5 or len(channels) != 5 or len(kernel_sizes) != 4:
            raise ValueError(f"expected 5 num_blocks, 5 channels and 4 kernel_sizes, got {tuple(num_blocks)}, "
                             f"{tuple(channels)}, {tuple(kernel_sizes)}")
        self.dims = list(channels)
        self.in_channels = in_channels
        self.s0 = nn.Sequential(*[decomposed_stem(in_channels if i == 0 else channels[0], channels[0], backend)
                                  for i in range(num_blocks[0])])
        for s in range(1, 5):
            blocks = [ConvBlock(channels[s - 1] if i == 0 else channels[s], channels[s], kernel_sizes[s - 1],
                                downsample=i == 0, backend=backend) for i in range(num_blocks[s])]
            setattr(self, f"s{s}", nn.Sequential(*blocks))
        self._register_load_state_dict_pre_hook(_fill_layouts, with_module=True)

    def set_backend(self, backend: str) -> DCFormerEncoder:
        for m in self.modules():
            if isinstance(m, DecompConv3d):
                m.backend = backend
        return self

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != self.in_channels:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DCFormerEncoder expects x of shape (B, {self.in_channels}, D, H, W), got {got}")
        # The official permute. Inference: the permuted view goes straight into the stem's first
        # layer (the kernels take strides; the reference backend copies 1-channel inputs itself),
        # which writes channels-last. Training runs stock convs on it: a copy first (NCDHW for one
        # channel: torch 2.13's CPU conv3d crashes on some 1-channel channels-last inputs).
        x = x.permute(0, 1, 3, 4, 2)
        if torch.is_grad_enabled() or self.training:
            x = x.contiguous(memory_format=torch.channels_last_3d if x.shape[1] > 1 else torch.contiguous_format)
        out = []
        for s in range(5):
            x = getattr(self, f"s{s}")(x)
            out.append(x)
        return out


def to_tokens(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W, D) -> (B, D*H*W, C): Med3DVLM's ``b d h w t -> b (t h w) d`` flattening."""
    return h.permute(0, 4, 2, 3, 1).reshape(h.shape[0], -1, h.shape[1])


def _drop_vq(module: nn.Module, state_dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}vq.")]:
        module.unused_state[key[len(prefix):]] = state_dict.pop(key)


class DCFormer(nn.Module):
    """Official ``DecompModel`` as Med3DVLM uses it: ``encoder.*`` keys; ``forward`` returns each
    stage's tokens (B, N_s, C_s). The input size is not a parameter (the network is fully
    convolutional); D, H, W should be multiples of 64 for the official token counts.
    """

    def __init__(self, num_blocks: Sequence[int], channels: Sequence[int], kernel_sizes=KERNEL_SIZES,
                 in_channels: int = 1, backend: str = "auto") -> None:
        super().__init__()
        self.channels = list(channels)
        self.encoder = DCFormerEncoder(num_blocks, channels, kernel_sizes, in_channels, backend)
        self.unused_state: Dict[str, torch.Tensor] = {}
        self._register_load_state_dict_pre_hook(_drop_vq, with_module=True)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [to_tokens(h) for h in self.encoder(x)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage, (B, C_4, H/64, W/64, D/64)."""
        return self.encoder(x)[-1]

    def load_official_state_dict(self, state_dict, strict: bool = True):
        """Load a mirthAI/DCFormer or Med3DVLM checkpoint: a ``DecompModel`` state dict
        (``encoder.*``), a bare encoder's (``s0.*``), or a CLIP one (``vision_encoder.*`` /
        ``visual_transformer.*``; other keys ignored)."""
        sd = dict(state_dict)
        for outer in ("vision_encoder.", "visual_transformer.", "module.vision_encoder.", "module."):
            if any(k.startswith(outer + "encoder.") for k in sd):
                sd = {k[len(outer):]: v for k, v in sd.items() if k.startswith(outer)}
                break
        if not any(k.startswith("encoder.") for k in sd):
            sd = {"encoder." + k: v for k, v in sd.items()}
        return self.load_state_dict(sd, strict=strict)


def _factory(name: str):
    def build(backend: str = "auto", in_channels: int = 1, **_ignored) -> DCFormer:
        blocks, channels = DCFORMER_CONFIGS[name]
        return DCFormer(blocks, channels, KERNEL_SIZES, in_channels, backend)

    build.__name__ = f"decomp_{name}"
    build.__doc__ = f"DCFormer-{name}: blocks {DCFORMER_CONFIGS[name][0]}, channels {DCFORMER_CONFIGS[name][1]}."
    return build


decomp_nano = _factory("nano")
decomp_naive = _factory("naive")
decomp_tiny = _factory("tiny")
decomp_small = _factory("small")
decomp_base = _factory("base")


def dcformer(name: str = "small", backend: str = "auto", in_channels: int = 1) -> DCFormer:
    """A DCFormer variant by name: nano, naive, tiny, small, base (``dcformer-`` prefix allowed)."""
    key = name.lower().removeprefix("dcformer-").removeprefix("decomp_")
    if key not in DCFORMER_CONFIGS:
        raise ValueError(f"model must be one of {sorted(DCFORMER_CONFIGS)}, got {name!r}")
    return _factory(key)(backend=backend, in_channels=in_channels)
