"""``medkernels.convert(model)``: put our fused kernels into models users already have, in place,
with the same state dict.

What it swaps (everything else is left alone):

* MONAI ``DiffusionUNetResnetBlock`` (``DiffusionModelUNet``, ``ControlNet``): norm1 + SiLU, and
  norm2 + the time-embedding add + SiLU, each one :func:`~medkernels.ops.group_norm_act`.
* MONAI ``AEKLResBlock`` (``AutoencoderKL``): norm1 + SiLU and norm2 + SiLU likewise.
* An ``nn.Sequential`` holding an ``nn.GroupNorm`` directly followed by ``nn.SiLU`` or exact
  ``nn.GELU`` (the UNets' output heads): the pair becomes :class:`~medkernels.nn.GroupNormAct`
  + ``nn.Identity`` (the same keys).
* MONAI ``SwinTransformerBlock`` with a 3D window (``SwinUNETR``): its ``attn`` becomes
  :class:`~medkernels.nn.WindowAttention3d` holding the same ``qkv``, ``proj``, bias table and
  index, and ``forward_part1`` runs norm1 then the fused pad/shift/mask/attention/unshift/crop.
  MONAI's ``forward`` (drop path, ``use_checkpoint``), ``load_from`` and norms stay. 2D blocks are
  skipped. Attention-probability dropout (``attn_drop_rate`` > 0) is not fused: such a block
  raises in train mode (eval is exact).

The MONAI blocks keep their modules and parameters: their class becomes a subclass of MONAI's
(``isinstance`` still holds) whose forward calls our ops. Norm layers keep their Parameters, so an
optimizer built before the conversion still holds the model's parameters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .nn.group_norm import GroupNormAct
from .nn.window_attention import WindowAttention3d
from .ops.group_norm import group_norm_act


@dataclass
class ConversionReport:
    """What :func:`convert` replaced (module path, what it became) and what it looked at but left
    alone (module path, why)."""

    replaced: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.replaced)

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for _, what in self.replaced:
            out[what] = out.get(what, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [f"medkernels.convert: replaced {len(self.replaced)} module(s)"]
        lines += [f"  {n} x {what}" for what, n in sorted(self.counts().items())]
        lines += [f"  skipped {path or '<root>'}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


def _norm_act(norm: nn.GroupNorm, x: torch.Tensor, backend: str, add=None) -> torch.Tensor:
    return group_norm_act(x, norm.num_groups, norm.weight, norm.bias, eps=norm.eps, add=add, activation="silu",
                          backend=backend)


# --- the fused forwards of MONAI's blocks -------------------------------------------------------
def _resnet_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """MONAI ``DiffusionUNetResnetBlock.forward`` with the two norm + SiLU pairs fused (the
    time-embedding add before norm2 is the op's ``add``)."""
    backend = self._medkernels_backend
    h = _norm_act(self.norm1, x, backend)
    if self.upsample is not None:
        x, h = self.upsample(x), self.upsample(h)
    elif self.downsample is not None:
        x, h = self.downsample(x), self.downsample(h)
    h = self.conv1(h)
    temb = self.time_emb_proj(self.nonlinearity(emb))
    h = self.conv2(_norm_act(self.norm2, h, backend, add=temb))
    return self.skip_connection(x) + h


def _aekl_forward(self, x: torch.Tensor) -> torch.Tensor:
    """MONAI ``AEKLResBlock.forward`` with the two norm + SiLU pairs fused."""
    backend = self._medkernels_backend
    h = self.conv1(_norm_act(self.norm1, x, backend))
    h = self.conv2(_norm_act(self.norm2, h, backend))
    return self.nin_shortcut(x) + h


def _swin_forward_part1(self, x: torch.Tensor, mask_matrix) -> torch.Tensor:
    """MONAI ``SwinTransformerBlock.forward_part1`` (norm1, pad, shift, partition, attention with
    the shift mask, reverse, unshift, crop) as norm1 + our fused window attention; the mask is
    recomputed in the kernel from token coordinates, so ``mask_matrix`` is not read."""
    if self.training and self._medkernels_attn_drop > 0:
        raise RuntimeError(
            f"this SwinTransformerBlock was converted by medkernels.convert and has attention dropout "
            f"p={self._medkernels_attn_drop}, which the fused kernel does not implement: train it unconverted, "
            "with attn_drop_rate=0, or call .eval()"
        )
    return self.attn(self.norm1(x))


_FORWARDS: Dict[str, Tuple[str, str, Dict[str, Callable]]] = {
    # name of our subclass: (MONAI module, MONAI class, the methods it overrides)
    "FusedDiffusionUNetResnetBlock": ("monai.networks.nets.diffusion_model_unet", "DiffusionUNetResnetBlock",
                                      {"forward": _resnet_forward}),
    "FusedAEKLResBlock": ("monai.networks.nets.autoencoderkl", "AEKLResBlock", {"forward": _aekl_forward}),
    "FusedSwinTransformerBlock": ("monai.networks.nets.swin_unetr", "SwinTransformerBlock",
                                  {"forward_part1": _swin_forward_part1}),
}
_CLASSES: Dict[str, type] = {}


def _fused_class(name: str) -> type:
    """Our subclass of a MONAI block, made once per process and reachable as
    ``medkernels._convert.<name>`` (so converted models pickle)."""
    cls = _CLASSES.get(name)
    if cls is None:
        mod, base_name, methods = _FORWARDS[name]
        import importlib

        base = getattr(importlib.import_module(mod), base_name)
        cls = _CLASSES[name] = type(name, (base,), {**methods, "__module__": __name__, "__qualname__": name,
                                                     "__doc__": f"{base_name} with medkernels' fused kernels."})
    return cls


def __getattr__(name: str):  # the fused classes, for pickle
    if name in _FORWARDS:
        return _fused_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _monai_class(name: str) -> Optional[type]:
    # only when the model's library is already imported: convert never imports MONAI itself
    mod, base_name, _ = _FORWARDS[name]
    return getattr(sys.modules.get(mod), base_name, None)


def _is_plain_group_norm(m) -> bool:
    return type(m) is nn.GroupNorm


def _swap(module: nn.Module, fused: str, backend: str) -> None:
    module.__class__ = _fused_class(fused)
    module._medkernels_backend = backend


def _convert_swin(path: str, blk, backend: str, report: ConversionReport) -> None:
    window = tuple(blk.window_size)
    if len(window) != 3:
        report.skipped.append((path, f"a {len(window)}D SwinTransformerBlock (only 3D windows are fused)"))
        return
    old = blk.attn
    new = WindowAttention3d(blk.dim, blk.num_heads, window, tuple(blk.shift_size), qkv_bias=old.qkv.bias is not None,
                            qk_scale=old.scale, backend=backend)
    new.qkv, new.proj, new.proj_drop = old.qkv, old.proj, old.proj_drop
    new.relative_position_bias_table = old.relative_position_bias_table
    new.relative_position_index = old.relative_position_index
    new.train(old.training)
    blk.attn = new
    _swap(blk, "FusedSwinTransformerBlock", backend)
    blk._medkernels_attn_drop = float(getattr(old, "attn_drop", nn.Dropout(0.0)).p)
    what = "SwinTransformerBlock -> fused window attention"
    if blk._medkernels_attn_drop > 0:
        what += f" (attn_drop={blk._medkernels_attn_drop}: raises in train mode)"
    report.replaced.append((path, what))


def _convert_sequential(path: str, seq: nn.Sequential, backend: str, report: ConversionReport) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        norm, act = seq._modules[a], seq._modules[b]
        if not _is_plain_group_norm(norm):
            continue
        if type(act) is nn.SiLU:
            activation = "silu"
        elif type(act) is nn.GELU and act.approximate == "none":
            activation = "gelu"
        else:
            continue
        seq._modules[a] = GroupNormAct.from_group_norm(norm, activation, backend)
        seq._modules[b] = nn.Identity()
        report.replaced.append((f"{path}.{a}" if path else a, f"GroupNorm + {type(act).__name__} -> GroupNormAct"))


def convert(model: nn.Module, *, backend: str = "auto") -> ConversionReport:
    """Swap, in place, the patterns our kernels cover (see the module docstring) and return a
    :class:`ConversionReport` of what was replaced. The state dict, parameters and outputs stay
    those of the unconverted model; unknown modules are left alone. ``backend`` is handed to
    every fused op (``"auto"`` picks per device and shape)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    report = ConversionReport()
    resnet, aekl, swin = (_monai_class(n) for n in _FORWARDS)
    for path, m in list(model.named_modules()):
        if type(m) in _CLASSES.values():
            report.skipped.append((path, "already converted"))
        elif resnet is not None and type(m) is resnet:
            if _is_plain_group_norm(m.norm1) and _is_plain_group_norm(m.norm2) and type(m.nonlinearity) is nn.SiLU:
                _swap(m, "FusedDiffusionUNetResnetBlock", backend)
                report.replaced.append((path, "DiffusionUNetResnetBlock -> fused GroupNorm+SiLU (+time add)"))
            else:
                report.skipped.append((path, "DiffusionUNetResnetBlock with a changed norm or activation"))
        elif aekl is not None and type(m) is aekl:
            if _is_plain_group_norm(m.norm1) and _is_plain_group_norm(m.norm2):
                _swap(m, "FusedAEKLResBlock", backend)
                report.replaced.append((path, "AEKLResBlock -> fused GroupNorm+SiLU"))
            else:
                report.skipped.append((path, "AEKLResBlock with a changed norm"))
        elif swin is not None and type(m) is swin:
            _convert_swin(path, m, backend, report)
        elif type(m) is nn.Sequential:
            _convert_sequential(path, m, backend, report)
    return report
