"""The pipelines' data: NIfTI cases found by file name, loaded through :mod:`medkernels.io`,
normalised per modality, and written back on the input's own grid and affine.

Layouts (one folder, file names case-insensitive, ``.nii`` or ``.nii.gz``):

* ``segment``: ``<id>_pet``, ``<id>_ct`` and, for training or Dice, ``<id>_mask`` (HECKTOR's
  ``<id>__PT``, ``<id>__CT`` and ``<id>__gtvt`` / ``<id>_seg`` are read too). PET and CT must be
  on one grid (the same shape and affine): resample them first if they are not (HECKTOR's raw
  PET and CT are not; its resampled releases are).
* ``fast-ddpm``: ``<id>_input`` (the condition: low-dose CT, the other MR contrast...) and, for
  training, ``<id>_target``.

Volumes are reoriented to RAS (``load_volume``); nothing is resampled. Intensities:

* segment: PET SUV clipped to 0..``suv_max`` (20) and scaled to [0, 1]; CT clipped to the HU
  window -1000..1000 and scaled to [0, 1]; the mask is ``> 0.5`` in {0, 1}.
* fast-ddpm, ``--modality``: ``ct`` the HU window -1000..1000, ``pet`` SUV 0..``suv_max``,
  ``mr`` the input volume's 0.5th..99.5th percentiles; the range is mapped linearly to [-1, 1]
  (clipped), for the input and the target alike, and a sampled output is mapped back to the
  input's units with the same range.

:func:`save_like` writes a (D, H, W) result on the loaded (RAS) grid back in the input file's
orientation with its affine, so the output overlays the input voxel for voxel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..io import _EXTENSIONS, VolumeError, VolumeMeta, load_volume, save_volume

SEGMENT_ROLES: Dict[str, Tuple[str, ...]] = {"pet": ("_pet", "__pt"), "ct": ("_ct", "__ct"),
                                             "mask": ("_mask", "__gtvt", "_seg")}
DENOISE_ROLES: Dict[str, Tuple[str, ...]] = {"input": ("_input",), "target": ("_target",)}
MODALITIES = ("ct", "pet", "mr")
CT_WINDOW = (-1000.0, 1000.0)
MR_PERCENTILES = (0.5, 99.5)


@dataclass
class CaseFiles:
    """One case: its id and the file of each role found."""

    id: str
    paths: Dict[str, str] = field(default_factory=dict)


def _strip_ext(name: str) -> Optional[str]:
    low = name.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def find_cases(folder: str, roles: Dict[str, Tuple[str, ...]], required: Sequence[str]) -> List[CaseFiles]:
    """Every case in ``folder`` with a file for each ``required`` role, sorted by id.

    Raises FileNotFoundError (no folder) or ValueError (no complete case), naming what it looked for."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"data folder not found: {folder}")
    cases: Dict[str, CaseFiles] = {}
    for name in sorted(os.listdir(folder)):
        stem = _strip_ext(name)
        if stem is None:
            continue
        low = stem.lower()
        for role, suffixes in roles.items():
            hit = next((s for s in suffixes if low.endswith(s)), None)
            if hit is not None:
                cid = stem[: -len(hit)].rstrip("_")
                cases.setdefault(cid, CaseFiles(cid)).paths[role] = os.path.join(folder, name)
                break
    found = [c for _, c in sorted(cases.items()) if all(r in c.paths for r in required)]
    if not found:
        want = ", ".join(f"<id>{roles[r][0]}.nii.gz" for r in required)
        raise ValueError(f"no complete case in {folder}: each case needs {want}")
    return found


def _same_grid(a: VolumeMeta, b: VolumeMeta, x: torch.Tensor, y: torch.Tensor, pa: str, pb: str) -> None:
    if x.shape != y.shape or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise VolumeError(f"{os.path.basename(pb)} is not on the grid of {os.path.basename(pa)} (shape "
                          f"{tuple(y.shape[1:])} vs {tuple(x.shape[1:])}, affines equal: "
                          f"{np.allclose(a.affine, b.affine, atol=1e-3)}): resample it onto that grid first")


def _scale(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """[lo, hi] -> [-1, 1], clipped (clamp keeps NaN)."""
    return ((x - lo) / (hi - lo) * 2 - 1).clamp(-1.0, 1.0)


def unscale(y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """[-1, 1] -> [lo, hi], the inverse of the normalisation."""
    return (y + 1) * 0.5 * (hi - lo) + lo


def intensity_range(x: torch.Tensor, modality: str, suv_max: float = 20.0) -> Tuple[float, float]:
    """The (lo, hi) a fast-ddpm input of ``modality`` is mapped from (see the module docstring)."""
    if modality == "ct":
        return CT_WINDOW
    if modality == "pet":
        return 0.0, float(suv_max)
    if modality == "mr":
        vals = x[torch.isfinite(x)].double()
        if vals.numel() == 0:
            raise VolumeError("the input volume has no finite voxel")
        step = max(1, vals.numel() // 2_000_000)
        lo, hi = np.percentile(vals[::step].numpy(), MR_PERCENTILES)
        lo, hi = float(lo), float(hi)
        return (lo, hi) if hi > lo else (lo, lo + 1.0)
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


@dataclass
class Case:
    """A loaded case: ``cond`` (C, D, H, W) float32, ``target`` (1, D, H, W) or None (a mask in
    {0, 1} for segment, the image in [-1, 1] for fast-ddpm), the grid's ``meta`` and the
    intensity range (fast-ddpm)."""

    id: str
    cond: torch.Tensor
    target: Optional[torch.Tensor]
    meta: VolumeMeta
    paths: Dict[str, str]
    range: Tuple[float, float] = (-1.0, 1.0)
    fg: Optional[torch.Tensor] = None  # (N, 3) foreground voxels of a mask (set by prepare_cases)


def load_segment_case(files: CaseFiles, suv_max: float = 20.0, need_mask: bool = False) -> Case:
    """PET, CT (and the mask if present) of one case; see the module docstring."""
    if not (math.isfinite(suv_max) and suv_max > 0):
        raise ValueError(f"suv_max must be a finite number > 0, got {suv_max!r}")
    pet, meta = load_volume(files.paths["pet"])
    ct, ct_meta = load_volume(files.paths["ct"])
    _same_grid(meta, ct_meta, pet, ct, files.paths["pet"], files.paths["ct"])
    mask = None
    if "mask" in files.paths:
        m, m_meta = load_volume(files.paths["mask"])
        _same_grid(meta, m_meta, pet, m, files.paths["pet"], files.paths["mask"])
        mask = (m > 0.5).float()
    elif need_mask:
        raise VolumeError(f"case {files.id} has no mask (<id>_mask.nii.gz) to train on")
    pet = pet.clamp(0.0, suv_max) / suv_max
    ct = (ct.clamp(*CT_WINDOW) - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0])
    return Case(files.id, torch.cat([pet, ct]), mask, meta, dict(files.paths))


def load_denoise_case(files: CaseFiles, modality: str, suv_max: float = 20.0, need_target: bool = False) -> Case:
    """The input (and the target if present) of one case, mapped to [-1, 1]."""
    x, meta = load_volume(files.paths["input"])
    lo, hi = intensity_range(x, modality, suv_max)
    target = None
    if "target" in files.paths:
        y, y_meta = load_volume(files.paths["target"])
        _same_grid(meta, y_meta, x, y, files.paths["input"], files.paths["target"])
        target = _scale(y, lo, hi)
    elif need_target:
        raise VolumeError(f"case {files.id} has no target (<id>_target.nii.gz) to train on")
    return Case(files.id, _scale(x, lo, hi), target, meta, dict(files.paths), (lo, hi))


def save_like(tensor: torch.Tensor, meta: VolumeMeta, path: str) -> None:
    """Write a (D, H, W) tensor on the RAS grid ``load_volume`` returned back in the original
    file's orientation, with its affine (``meta.original_affine``)."""
    import nibabel as nib

    t = tensor.detach().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if tuple(meta.steps[:1]) != ("ras",) or any(s.startswith(("resample", "crop_or_pad")) for s in meta.steps):
        raise ValueError(f"save_like needs a volume loaded without resampling or cropping, got steps {meta.steps}")
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(meta.affine),
                                           nib.orientations.io_orientation(meta.original_affine))
    arr = nib.orientations.apply_orientation(t.numpy(), ornt)
    if tuple(arr.shape) != tuple(meta.original_shape):
        raise ValueError(f"tensor has shape {tuple(t.shape)}, not the loaded grid of {tuple(meta.original_shape)}")
    save_volume(torch.from_numpy(np.ascontiguousarray(arr)), meta.original_affine, path)
