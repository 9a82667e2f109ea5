"""A seeded synthetic PET/CT phantom with tumour masks, so the pipelines run end to end on a CPU
without downloading data.

:func:`make_phantom` builds one case on a (D, H, W) grid (RAS, ``spacing`` mm per voxel):

* CT in HU: air -1000 outside an ellipsoidal body of soft tissue (40 HU), a bone cylinder
  (spine, 700 HU) behind the centre, an airway (-900 HU) in front of it, tumours at 60 HU; plus
  Gaussian noise (sigma 20 HU). The tumour barely shows on CT, as in head-and-neck PET/CT.
* PET in SUV: body background 1.0, tumours 6-12 (one value per tumour), a physiological uptake
  blob of SUV 5 that is not tumour (the model must use CT and position, not PET alone), blurred
  by a separable Gaussian (the scanner's resolution) plus Gaussian noise (sigma 0.15).
* mask (uint8): the union of 1 or 2 ellipsoidal tumours inside the body.

The same seed gives the same case bit for bit. :func:`make_denoising_phantom` gives the
Fast-DDPM pair: ``input`` = the CT plus strong noise (a low-dose CT), ``target`` = the clean CT.
:func:`write_segmentation_phantoms` / :func:`write_denoising_phantoms` write N cases as NIfTI
in the layouts the ``segment`` and ``fast-ddpm`` commands read (``<id>_pet.nii.gz``,
``<id>_ct.nii.gz``, ``<id>_mask.nii.gz``; ``<id>_input.nii.gz``, ``<id>_target.nii.gz``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine of the phantom grid: ``spacing`` on the diagonal, the volume centred on 0 mm."""
    a = np.diag([float(s) for s in spacing] + [1.0])
    a[:3, 3] = [-(n - 1) * s / 2.0 for n, s in zip(shape, spacing)]
    return a


def _grid(shape):
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape]
    return torch.meshgrid(*axes, indexing="ij")


def _ellipsoid(grid, centre, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=x.dtype) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    y = x[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0] * 3
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.reshape(shape))
    return y[0, 0]


def _check_shape(shape) -> Tuple[int, int, int]:
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 8 for n in shape):
        raise ValueError(f"shape must be 3 ints >= 8 (D, H, W), got {tuple(shape)!r}")
    return tuple(shape)


def make_phantom(shape: Sequence[int] = (32, 32, 32), seed: int = 0,
                 spacing: Sequence[float] = (4.0, 4.0, 4.0)) -> Dict[str, object]:
    """One PET/CT case: ``{"pet": (D, H, W) float32 SUV, "ct": (D, H, W) float32 HU, "mask": (D, H,
    W) uint8, "affine": 4x4}``; see the module docstring."""
    shape = _check_shape(tuple(shape))
    g = torch.Generator().manual_seed(int(seed))

    def u(lo, hi, n=1):
        v = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
        return v if n > 1 else float(v)

    grid = _grid(shape)
    body = _ellipsoid(grid, (0.0, 0.0, 0.0), (u(0.8, 0.95), u(0.6, 0.8), u(0.85, 0.95)))
    spine = ((grid[0] - 0.0) / 0.12) ** 2 + ((grid[1] + 0.45) / 0.14) ** 2 <= 1.0
    airway = ((grid[0] - 0.0) / 0.07) ** 2 + ((grid[1] - 0.15) / 0.07) ** 2 <= 1.0
    ct = torch.full(shape, -1000.0, dtype=torch.float64)
    ct[body] = 40.0
    ct[body & spine] = 700.0
    ct[body & airway] = -900.0
    mask = torch.zeros(shape, dtype=torch.bool)
    pet = torch.zeros(shape, dtype=torch.float64)
    pet[body] = 1.0
    pet[body & spine] = 0.6
    for _ in range(1 + int(torch.randint(0, 2, (1,), generator=g))):
        for _try in range(20):  # a centre inside the body, away from the spine and airway
            c = (u(-0.5, 0.5), u(-0.2, 0.45), u(-0.55, 0.55))
            r = (u(0.15, 0.28), u(0.15, 0.28), u(0.15, 0.28))
            tumour = _ellipsoid(grid, c, r) & body & ~spine & ~airway
            if tumour.sum() >= 8:
                break
        mask |= tumour
        ct[tumour] = 60.0
        pet[tumour] = u(6.0, 12.0)
    blob = _ellipsoid(grid, (u(-0.1, 0.1), u(-0.55, -0.35), u(0.55, 0.7)), (0.15, 0.12, 0.15)) & body
    pet[blob & ~mask] = 5.0
    pet = _blur(pet, sigma=1.0) + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)
    ct = ct + 20.0 * torch.randn(shape, generator=g, dtype=torch.float64)
    return {"pet": pet.clamp(min=0.0).float(), "ct": ct.float(), "mask": mask.to(torch.uint8),
            "affine": phantom_affine(shape, spacing)}


def make_denoising_phantom(shape: Sequence[int] = (32, 32, 32), seed: int = 0, noise_hu: float = 150.0,
                           spacing: Sequence[float] = (4.0, 4.0, 4.0)) -> Dict[str, object]:
    """The Fast-DDPM pair: ``{"input": low-dose CT (target + N(0, noise_hu)), "target": the CT, "affine"}``."""
    case = make_phantom(shape, seed, spacing)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    noisy = case["ct"] + noise_hu * torch.randn(case["ct"].shape, generator=g)
    return {"input": noisy, "target": case["ct"], "affine": case["affine"]}


def _write(folder: str, n: int, seed: int, shape, make, roles) -> List[str]:
    from ..io import save_volume

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of cases must be an int >= 1, got {n!r}")
    os.makedirs(folder, exist_ok=True)
    ids = []
    for i in range(n):
        case = make(shape, seed + i)
        cid = f"phantom{seed + i:03d}"
        for role in roles:
            save_volume(case[role], case["affine"], os.path.join(folder, f"{cid}_{role}.nii.gz"))
        ids.append(cid)
    return ids


def write_segmentation_phantoms(folder: str, n: int = 4, seed: int = 0,
                                shape: Sequence[int] = (32, 32, 32)) -> List[str]:
    """Write n PET/CT/mask cases (seeds seed..seed+n-1) to ``folder``; returns the case ids."""
    return _write(folder, n, seed, tuple(shape), make_phantom, ("pet", "ct", "mask"))


def write_denoising_phantoms(folder: str, n: int = 4, seed: int = 0,
                             shape: Sequence[int] = (32, 32, 32)) -> List[str]:
    """Write n low-dose/full-dose CT pairs to ``folder``; returns the case ids."""
    return _write(folder, n, seed, tuple(shape), make_denoising_phantom, ("input", "target"))
