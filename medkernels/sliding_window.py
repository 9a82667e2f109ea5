"""Sliding-window (patch) inference with overlap blending, for volumes larger than a network's crop.

``sliding_window_inference(fn, x, roi_size)`` runs ``fn`` on every (roi_size) patch of ``x``
(B, C, D, H, W), the patches overlapping by ``overlap`` of the crop, and returns the weighted
average of the patch outputs at every voxel:

    out[v] = sum_p w_p(v) fn(x[p])[v] / sum_p w_p(v)

Patch starts, per axis of size n and crop r: ``0, s, 2s, ...`` with ``s = max(1, floor(r (1 -
overlap)))``, and the last patch ends at the far border (start n - r). An axis shorter than the
crop is zero-padded at its far side to r and cropped back. A volume of exactly the crop is one
call of ``fn``, returned as it is (bit for bit the plain model).

Blending weights ``w_p`` (one per-axis profile, multiplied over the three axes):

* ``"gaussian"`` (default; nnU-Net and MONAI): ``exp(-d^2 / (2 sigma^2))`` of the distance d
  from the patch centre, ``sigma = sigma_scale * r`` (default 0.125), scaled to a maximum of 1.
* ``"linear"``: a tent, ``min(i + 1, r - i)`` for voxel i of the patch, scaled to a maximum of 1.
* ``"constant"``: 1 (a plain average of the overlapping patches).

``margin``: the outer ``margin`` voxels of a patch get weight 0 on every face that is not a
border of the volume (a patch's output there sees the patch's zero padding instead of the
neighbouring voxels). For a model with receptive-field radius <= ``margin`` whose own padding is
zeros, the blended output then equals whole-volume inference at every voxel (up to the rounding
of the weighted average); it needs ``overlap * r >= 2 margin`` so every voxel keeps a weight, and
a clear error says so otherwise.

:class:`SlidingWindow` wraps a ``model(x, t)`` (a diffusion UNet) so every call runs patch by
patch with the same ``t``: the diffusion samplers then take one fused step on the whole volume
per timestep, with the whole volume's noise, and the eps prediction is blended per step.

NaN and Inf in a patch output propagate into every voxel the patch covers with a weight > 0.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

BLENDS = ("gaussian", "linear", "constant")


def _roi(roi_size, spatial: int) -> Tuple[int, ...]:
    if isinstance(roi_size, numbers.Integral) and not isinstance(roi_size, bool):
        roi_size = (int(roi_size),) * spatial
    try:
        roi = tuple(int(v) for v in roi_size if not isinstance(v, bool) and isinstance(v, numbers.Integral))
        n = len(roi_size)
    except TypeError:
        roi, n = (), -1
    if n != spatial or len(roi) != spatial or min(roi) < 1:
        raise ValueError(f"roi_size must be a positive int or {spatial} positive ints (one per spatial axis), "
                         f"got {roi_size!r}")
    return roi


def patch_starts(size: int, roi: int, overlap: float) -> List[int]:
    """The start of every patch along one axis (see the module docstring)."""
    if size <= roi:
        return [0]
    step = max(1, int(math.floor(roi * (1.0 - overlap))))
    starts = list(range(0, size - roi, step))
    starts.append(size - roi)
    return sorted(set(starts))


def _profile(r: int, blend: str, sigma_scale: float, dtype, device) -> torch.Tensor:
    i = torch.arange(r, dtype=torch.float64)
    if blend == "gaussian":
        sigma = max(sigma_scale * r, 1e-6)
        w = torch.exp(-((i - (r - 1) / 2.0) ** 2) / (2.0 * sigma * sigma))
    elif blend == "linear":
        w = torch.minimum(i + 1, r - i)
    else:
        w = torch.ones(r, dtype=torch.float64)
    return (w / w.max()).to(dtype=dtype, device=device)


def blend_weights(roi: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125, *,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """The (r_0, r_1, ...) weight map of one patch before the margin (see the module docstring)."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    w = None
    for axis, r in enumerate(roi):
        p = _profile(r, blend, sigma_scale, dtype, device)
        shape = [1] * len(roi)
        shape[axis] = r
        p = p.reshape(shape)
        w = p if w is None else w * p
    return w


def _check_args(x, overlap, blend, sigma_scale, margin):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, C, *spatial), got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"x must be (B, C, *spatial) with at least one spatial axis, got shape {tuple(x.shape)}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if isinstance(sigma_scale, bool) or not isinstance(sigma_scale, numbers.Real) or not (
            math.isfinite(sigma_scale) and sigma_scale > 0):
        raise ValueError(f"sigma_scale must be a finite number > 0, got {sigma_scale!r}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")


def sliding_window_inference(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, roi_size, *,
                             overlap: float = 0.25, blend: str = "gaussian", sigma_scale: float = 0.125,
                             margin: int = 0) -> torch.Tensor:
    """Blend ``fn`` over the overlapping patches of ``x``; see the module docstring.

    Args:
        fn: patch (B, C, *roi_size) -> (B, C_out, *roi_size).
        x: (B, C, *spatial), any number of spatial axes (3 for volumes).
        roi_size: the crop, an int (the same on every axis) or one int per spatial axis.
        overlap: fraction of the crop shared by neighbouring patches, in [0, 1).
        blend: ``"gaussian"``, ``"linear"`` or ``"constant"`` weights.
        sigma_scale: the Gaussian's sigma as a fraction of the crop.
        margin: voxels at a patch's inner faces that get weight 0.

    Returns:
        (B, C_out, *spatial) in fn's output dtype, on x's device.
    """
    _check_args(x, overlap, blend, sigma_scale, margin)
    spatial = tuple(x.shape[2:])
    roi = _roi(roi_size, len(spatial))
    if spatial == roi:
        return fn(x)
    padded = tuple(max(n, r) for n, r in zip(spatial, roi))
    if padded != spatial:
        pad: List[int] = []
        for n, p in zip(reversed(spatial), reversed(padded)):
            pad += [0, p - n]
        x = F.pad(x, pad)
    starts = [patch_starts(n, r, float(overlap)) for n, r in zip(padded, roi)]
    out = wsum = None
    base = None
    for corner in _product(starts):
        sl = tuple(slice(s, s + r) for s, r in zip(corner, roi))
        y = fn(x[(slice(None), slice(None)) + sl])
        if y.dim() != x.dim() or y.shape[0] != x.shape[0] or tuple(y.shape[2:]) != roi:
            raise ValueError(f"fn must return (B, C_out, {', '.join(map(str, roi))}) for a patch "
                             f"{tuple(x[(slice(None), slice(None)) + sl].shape)}, got {tuple(y.shape)}")
        if out is None:
            out = torch.zeros((y.shape[0], y.shape[1]) + padded, dtype=y.dtype, device=y.device)
            wsum = torch.zeros(padded, dtype=y.dtype, device=y.device)
            base = blend_weights(roi, blend, float(sigma_scale), dtype=y.dtype, device=y.device)
        w = base
        if margin:
            w = base.clone()
            for axis, (s, r, n) in enumerate(zip(corner, roi, padded)):
                m = min(margin, r)
                if s > 0:  # the near face is inside the volume
                    w.narrow(axis, 0, m).zero_()
                if s + r < n:  # the far face is inside the volume
                    w.narrow(axis, r - m, m).zero_()
        out[(slice(None), slice(None)) + sl] += y * w
        wsum[sl] += w
    if margin and not bool((wsum > 0).all()):
        raise ValueError(f"margin={margin} leaves voxels without a patch: overlap * roi_size must be >= 2 * margin "
                         f"(overlap={overlap}, roi_size={roi})")
    out = out / wsum
    if padded != spatial:
        out = out[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
    return out


def _product(starts: Sequence[Sequence[int]]):
    if not starts:
        yield ()
        return
    for s in starts[0]:
        for rest in _product(starts[1:]):
            yield (s,) + rest


class SlidingWindow:
    """``model(x, t)`` run patch by patch with the same ``t``: a drop-in model for
    :class:`medkernels.diffusion.FastDDPMSampler` on volumes larger than the network's crop.

    Args:
        model: ``model(patch, t) -> (B, C_out, *roi)``.
        roi_size, overlap, blend, sigma_scale, margin: as :func:`sliding_window_inference`.
    """

    def __init__(self, model, roi_size, *, overlap: float = 0.25, blend: str = "gaussian",
                 sigma_scale: float = 0.125, margin: int = 0) -> None:
        self.model, self.roi_size = model, roi_size
        self.kw = dict(overlap=overlap, blend=blend, sigma_scale=sigma_scale, margin=margin)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        return sliding_window_inference(lambda patch: self.model(patch, t), x, self.roi_size, **self.kw)
