"""NIfTI volumes in and out: ``load_volume`` -> (tensor, meta) -> model -> ``save_volume``.

nibabel is imported inside the functions only, so ``import medkernels`` never needs it.

``load_volume`` reorients to RAS (``nibabel.as_closest_canonical``), optionally resamples
(trilinear, to a voxel ``spacing`` in mm or a ``shape``), applies an HU window and/or min-max
scaling, then crops/pads (centred) to ``crop_or_pad``. The tensor is (1, D, H, W) float32 with
D, H, W the volume's first, second and third array axes after reorientation (RAS: x, y, z). The
returned :class:`VolumeMeta` keeps the affine of every step, so ``save_volume`` writes an output of
the same grid (a mask, a denoised volume) aligned with the original scan.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_EXTENSIONS = (".nii", ".nii.gz")


class VolumeError(ValueError):
    """A file that is not a readable 3D NIfTI volume."""


@dataclass
class VolumeMeta:
    """Where the returned tensor's voxels sit: ``affine`` (4x4, voxel index -> RAS mm) of the
    tensor's grid, the original file's affine and shape, and the steps applied."""

    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    steps: list = field(default_factory=list)


def _nibabel():
    try:
        import nibabel
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError("reading and writing NIfTI needs nibabel: pip install nibabel") from e
    return nibabel


def _check_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"volume file not found: {path}")
    if os.path.isdir(path):
        raise VolumeError(f"expected a NIfTI file (.nii or .nii.gz), got a directory: {path}")
    if not path.lower().endswith(_EXTENSIONS):
        raise VolumeError(f"expected a NIfTI file (.nii or .nii.gz), got {os.path.basename(path)!r}")
    return path


def _spacing(affine: np.ndarray) -> Tuple[float, float, float]:
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def load_volume(path, *, spacing: Optional[Sequence[float]] = None, shape: Optional[Sequence[int]] = None,
                hu_window: Optional[Tuple[float, float]] = None, minmax: bool = False,
                crop_or_pad: Optional[Sequence[int]] = None, dtype: torch.dtype = torch.float32):
    """Read a 3D NIfTI file into a (1, D, H, W) tensor and its :class:`VolumeMeta`.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        spacing: resample to this voxel size (mm per axis), trilinear. Not with ``shape``.
        shape: resample to this (D, H, W), trilinear: three positive ints. Not with ``spacing``.
            An axis of one voxel resampled to n voxels gets spacing 1/n of the old one, centred
            on it (the grid stays invertible).
        hu_window: (low, high): clip to the window and scale it to [0, 1] (e.g. (-1000, 1000)).
        minmax: scale the volume's own min..max to [0, 1] (after ``hu_window`` if both). NaN-aware:
            the min and max are those of the finite voxels, NaN voxels stay NaN (and +-inf stay
            +-inf) so a bad voxel is visible instead of zeroing the volume; a constant volume gives
            zeros.
        crop_or_pad: centre-crop / zero-pad to this (D, H, W) last (the model's input size).
        dtype: of the returned tensor.

    Raises FileNotFoundError, or :class:`VolumeError` (a ValueError) for a non-NIfTI path, a
    corrupt or truncated file, or an image that is not 3D (2D, 4D with more than one frame).
    """
    if spacing is not None and shape is not None:
        raise ValueError("give spacing= or shape=, not both")
    if shape is not None:
        shape = _size3("shape", shape)
    if crop_or_pad is not None:
        crop_or_pad = _size3("crop_or_pad", crop_or_pad)
    if spacing is not None:
        spacing = _spacing3(spacing)
    nib = _nibabel()
    path = _check_path(path)
    try:
        img = nib.load(path)
    except Exception as e:
        raise VolumeError(f"cannot read {path!r} as NIfTI: {e}") from e
    dims = tuple(int(s) for s in img.shape)
    if len(dims) == 4 and dims[3] == 1:
        dims = dims[:3]
    if len(dims) != 3:
        raise VolumeError(f"expected a 3D volume, got a {len(img.shape)}D image of shape {tuple(img.shape)} "
                          f"in {path!r}")
    original_affine = np.asarray(img.affine, dtype=np.float64)
    try:
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    except Exception as e:  # truncated or corrupt payload
        raise VolumeError(f"cannot read the voxel data of {path!r} (corrupt or truncated file?): {e}") from e
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = VolumeMeta(affine=affine.copy(), original_affine=original_affine,
                      original_shape=dims, spacing=_spacing(affine), steps=["ras"])
    x = torch.from_numpy(np.ascontiguousarray(data))[None]
    if spacing is not None or shape is not None:
        old = np.array(x.shape[1:], dtype=np.float64)
        if spacing is not None:
            new = np.maximum(1, np.round(old * np.array(meta.spacing) / np.array(spacing, dtype=np.float64)))
        else:
            new = np.array(shape, dtype=np.float64)
        new_shape = tuple(int(v) for v in new)
        x = F.interpolate(x[None], size=new_shape, mode="trilinear", align_corners=True)[0]
        meta.affine = meta.affine @ _resample_affine(old, new)
        meta.spacing = _spacing(meta.affine)
        meta.steps.append(f"resample{new_shape}")
    if hu_window is not None:
        lo, hi = (float(v) for v in hu_window)
        if not hi > lo:
            raise ValueError(f"hu_window must be (low, high) with high > low, got {hu_window}")
        x = (x.clamp(lo, hi) - lo) / (hi - lo)
        meta.steps.append(f"hu_window({lo:g},{hi:g})")
    if minmax:
        x = _minmax(x)
        meta.steps.append("minmax")
    if crop_or_pad is not None:
        x, offset = _crop_or_pad(x, crop_or_pad)
        shift = np.eye(4)
        shift[:3, 3] = offset  # new index i is old index i + offset
        meta.affine = meta.affine @ shift
        meta.steps.append(f"crop_or_pad{tuple(crop_or_pad)}")
    return x.to(dtype), meta


def _size3(name: str, size) -> Tuple[int, int, int]:
    """Three positive ints (numpy ints and 0-d integer tensors welcome; 4.5 or True refused)."""
    try:
        vals = [operator.index(v) for v in size if not isinstance(v, (bool, np.bool_))]
    except TypeError:
        vals = []
    if len(vals) != 3 or len(list(size)) != 3 or min(vals) < 1:
        raise ValueError(f"{name} must be 3 positive ints (D, H, W), got {size!r}")
    return tuple(vals)


def _spacing3(spacing) -> Tuple[float, float, float]:
    try:
        vals = [float(v) for v in spacing]
    except (TypeError, ValueError):
        vals = None
    if vals is None or len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"spacing must be 3 finite positive numbers (mm), got {spacing!r}")
    return tuple(vals)


def _resample_affine(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """New voxel index -> old voxel index of the align_corners=True resampling, as a 4x4.

    Corner voxel centres stay put, so i -> i (old-1)/(new-1). An axis of one voxel has no corners
    to keep: its n copies get spacing 1/n of the old voxel, centred on it, so the affine stays
    invertible (a 0 spacing would make the saved file unreadable)."""
    m = np.eye(4)
    for a in range(3):
        if new[a] > 1 and old[a] > 1:
            m[a, a] = (old[a] - 1) / (new[a] - 1)
        elif new[a] > 1:
            m[a, a] = 1.0 / new[a]
            m[a, 3] = -(new[a] - 1) / (2.0 * new[a])
    return m


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) over the finite voxels; non-finite voxels keep their value's sign."""
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return x.clone()
    lo, hi = finite.min(), finite.max()
    if not hi > lo:
        return torch.where(torch.isfinite(x), torch.zeros_like(x), x)
    return (x - lo) / (hi - lo)


def _crop_or_pad(x: torch.Tensor, size: Sequence[int]):
    size = _size3("crop_or_pad", size)
    offset = []
    for axis, n in enumerate(size):
        cur = x.shape[1 + axis]
        start = (cur - n) // 2  # > 0 crops, < 0 pads
        offset.append(start)
        if start >= 0:
            x = x.narrow(1 + axis, start, n)
        else:
            pad = [0, 0] * 3
            before = -start
            pad[2 * (2 - axis)] = before
            pad[2 * (2 - axis) + 1] = n - cur - before
            x = F.pad(x, pad)
    return x.contiguous(), np.array(offset, dtype=np.float64)


def save_volume(tensor: torch.Tensor, meta, path) -> None:
    """Write a (D, H, W) or (1, D, H, W) tensor on ``meta``'s grid (a :class:`VolumeMeta` or a
    4x4 affine) as NIfTI, keeping its dtype: uint8, int8, int16, int32, int64, uint16, uint32,
    uint64, float32 and float64 are stored as they are (a 40000 label stays 40000, a float64 map
    stays float64); bool is stored as uint8, float16/bfloat16 as float32 (NIfTI-1 has no 16-bit
    float; the widening is exact). Raises ValueError for a singular or non-finite affine (nibabel
    cannot write one) and TypeError for a dtype NIfTI cannot hold (complex)."""
    nib = _nibabel()
    path = os.fspath(path)
    if not path.lower().endswith(_EXTENSIONS):
        raise VolumeError(f"output must end in .nii or .nii.gz, got {os.path.basename(path)!r}")
    t = tensor.detach().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"tensor must be (D, H, W) or (1, D, H, W), got shape {tuple(tensor.shape)}")
    affine = meta.affine if isinstance(meta, VolumeMeta) else np.asarray(meta, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"meta must be a VolumeMeta or a 4x4 affine, got shape {affine.shape}")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"meta's affine must be finite and invertible (a voxel spacing of 0 cannot be written), "
                         f"got\n{affine}")
    if t.is_complex():
        raise TypeError(f"tensor must be real (NIfTI holds no complex {t.dtype}), got {t.dtype}")
    if t.dtype == torch.bool:
        arr = t.numpy().astype(np.uint8)
    elif t.dtype in (torch.float16, torch.bfloat16):
        arr = t.float().numpy()
    else:
        arr = t.numpy()
    # an explicit dtype: nibabel otherwise refuses int64 and may narrow what it stores
    nib.save(nib.Nifti1Image(arr, affine, dtype=arr.dtype), path)


# --- intensity normalisation per modality (the embed command's preprocessing) ------------------
MODALITIES = ("ct", "mr", "pet")
CT_WINDOW = (-1000.0, 1000.0)
MR_PERCENTILES = (0.5, 99.5)
SUV_MAX = 20.0


def _percentiles(x: torch.Tensor, qs) -> list:
    """NaN-ignoring percentiles of a volume, from at most ~2M evenly strided voxels."""
    flat = x.detach().reshape(-1).float()
    step = max(1, flat.numel() // 2_000_000)
    vals = flat[::step].cpu().numpy()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(vals, qs)]


def modality_warning(x: torch.Tensor, modality: str, suv_factor: float = 1.0) -> Optional[str]:
    """A sentence when raw intensities do not look like ``modality`` (None when they do).

    CT should be in HU, with air near -1000: warned when the 1st percentile is above -500 HU or
    the 99th above 4000 HU. MR has arbitrary non-negative units: warned when the 1st percentile is
    below -500 (CT-like HU). PET (times ``suv_factor``) should be SUV: warned when the 1st
    percentile is below -100 or the 99.9th above 100."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    p1, p99, p999 = _percentiles(x, (1, 99, 99.9))
    if not math.isfinite(p1):
        return "the volume has no finite voxel"
    if modality == "ct":
        if p1 > -500:
            return (f"intensities do not look like CT in HU: the 1st percentile is {p1:.4g} (CT air is about "
                    f"-1000 HU); if this is MR or PET pass --modality mr or --modality pet")
        if p99 > 4000:
            return f"intensities do not look like CT in HU: the 99th percentile is {p99:.4g} HU (bone is < 3000 HU)"
    elif modality == "mr":
        if p1 < -500:
            return (f"intensities do not look like MR: the 1st percentile is {p1:.4g}, negative like CT in HU; "
                    f"if this is CT pass --modality ct")
    else:
        p1, p999 = p1 * suv_factor, p999 * suv_factor
        if p1 < -100:
            return (f"intensities do not look like PET SUV: the 1st percentile is {p1:.4g}, negative like CT in HU; "
                    f"if this is CT pass --modality ct")
        if p999 > 100:
            return (f"intensities do not look like PET SUV: the 99.9th percentile is {p999:.4g} (SUV rarely "
                    f"exceeds 50); for a volume in Bq/mL give the patient weight and injected dose")
    return None


def normalize_intensity(x: torch.Tensor, modality: str, *, suv_factor: float = 1.0,
                        suv_max: float = SUV_MAX) -> Tuple[torch.Tensor, str]:
    """Scale a raw volume's intensities for the model; returns (tensor, a description of the step).

    * ``ct``: clip to the HU window -1000..1000 and scale it to [0, 1] (Med3DVLM's CT input).
    * ``mr``: clip to the volume's own 0.5th..99.5th percentiles (of its finite voxels), then
      z-score: subtract the mean and divide by the standard deviation of the clipped volume.
    * ``pet``: SUV = value * ``suv_factor`` (1: the volume is already SUV; for Bq/mL use
      weight [g] / injected dose [Bq], decay-corrected), clip to 0..``suv_max`` and scale to [0, 1].

    NaN voxels stay NaN (they are left out of the percentiles and moments)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if modality == "ct":
        lo, hi = CT_WINDOW
        return (x.clamp(lo, hi) - lo) / (hi - lo), f"ct_window({lo:g},{hi:g})"
    if modality == "mr":
        lo, hi = _percentiles(x, MR_PERCENTILES)
        if not math.isfinite(lo):
            return x.clone(), "mr_zscore(no finite voxel)"
        y = x.clamp(lo, hi)
        finite = y[torch.isfinite(y)].double()
        mean, std = float(finite.mean()), float(finite.std(unbiased=False))
        y = (y - mean) / std if std > 0 else y - mean
        return y, f"mr_clip_p{MR_PERCENTILES[0]:g}-p{MR_PERCENTILES[1]:g}({lo:.4g},{hi:.4g})_zscore"
    if not (math.isfinite(suv_factor) and suv_factor > 0):
        raise ValueError(f"suv_factor must be a finite number > 0, got {suv_factor!r}")
    if not (math.isfinite(suv_max) and suv_max > 0):
        raise ValueError(f"suv_max must be a finite number > 0, got {suv_max!r}")
    return (x * suv_factor).clamp(0.0, suv_max) / suv_max, f"pet_suv(x{suv_factor:.4g},0..{suv_max:g})"
