"""Regression tests for issue 16's input/output items: layout-independent diffusion noise, schedule
and step argument checks, NIfTI dtype/affine/NaN handling, the embed command and the bench chart
notice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medkernels  # noqa: F401  (sets the Triton interpreter before kernels load)
from medkernels.diffusion import randn
from medkernels.ops.diffusion import _DISPATCH
from medkernels.reference import diffusion as ref


def _backends(op="q_sample"):
    out = []
    for name in ("triton", "cpu", "reference"):
        b = _DISPATCH[op]._by_name[name]
        why = b.not_supported_reasons(torch.device("cpu"), torch.float32)
        out.append(pytest.param(name, marks=pytest.mark.skip(reason="; ".join(why))) if why else name)
    return out + ["auto"]


# --- A: randn follows logical order whatever the layout of `like` -----------------------------
def _layouts():
    shape = (2, 3, 4, 5, 6)
    cl = torch.empty(shape).to(memory_format=torch.channels_last_3d)
    perm = torch.empty(2, 6, 5, 4, 3).permute(0, 4, 3, 2, 1)
    strided = torch.empty(2, 6, 4, 5, 6)[:, ::2]
    expanded = torch.empty(1, 1, 4, 5, 6).expand(shape)
    return shape, {"channels_last_3d": cl, "permuted": perm, "strided": strided, "expanded": expanded}


@pytest.mark.parametrize("backend", _backends())
def test_randn_same_noise_whatever_the_layout(backend):
    shape, layouts = _layouts()
    want = randn(torch.empty(shape), 7, 3, backend=backend)
    assert (want - ref.normal_ref(shape, 7, 3)).abs().max().item() <= 2e-6
    for name, like in layouts.items():
        assert like.shape == shape
        got = randn(like, 7, 3, backend=backend)
        assert got.shape == shape and got.is_contiguous(), name
        assert torch.equal(got, want), f"{backend} {name}: noise depends on the layout of like"


# --- B: NIfTI dtypes, single-slice affines, NaN-aware minmax, integer shapes -------------------
@pytest.fixture
def nib():
    return pytest.importorskip("nibabel")


def _write(nib, path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("dtype,value", [(torch.int64, 40000), (torch.int64, 2**40 + 3), (torch.int32, -70000),
                                         (torch.float64, 1.0 + 2**-40), (torch.uint8, 255), (torch.int16, -3)])
def test_save_volume_keeps_the_dtype(tmp_path, nib, dtype, value):
    from medkernels.io import save_volume

    t = torch.zeros(3, 4, 5, dtype=dtype)
    t[1, 2, 3] = value
    save_volume(t, np.eye(4), tmp_path / "lab.nii.gz")
    img = nib.load(str(tmp_path / "lab.nii.gz"))
    arr = np.asarray(img.dataobj)
    assert arr.dtype == t.numpy().dtype, f"{dtype} stored as {arr.dtype}"
    assert arr[1, 2, 3] == value and torch.equal(torch.from_numpy(arr), t)


def test_save_volume_bool_and_half(tmp_path, nib):
    from medkernels.io import save_volume

    save_volume(torch.ones(2, 2, 2, dtype=torch.bool), np.eye(4), tmp_path / "m.nii")
    assert np.asarray(nib.load(str(tmp_path / "m.nii")).dataobj).dtype == np.uint8
    h = torch.tensor([0.1, 60000.0], dtype=torch.float16).repeat(4).reshape(2, 2, 2)
    save_volume(h, np.eye(4), tmp_path / "h.nii")
    back = np.asarray(nib.load(str(tmp_path / "h.nii")).dataobj)
    assert back.dtype == np.float32 and np.array_equal(back, h.float().numpy())


def test_single_slice_volume_resampled_saves_and_stays_aligned(tmp_path, nib):
    from medkernels.io import load_volume, save_volume

    aff = np.diag([1.0, 1.2, 3.0, 1.0])
    aff[:3, 3] = [4.0, -2.0, 1.0]
    src = _write(nib, tmp_path / "slice.nii", np.arange(64, dtype=np.float32).reshape(1, 8, 8), aff)
    x, meta = load_volume(src, shape=(4, 8, 8))
    assert x.shape == (1, 4, 8, 8)
    assert abs(np.linalg.det(meta.affine[:3, :3])) > 0 and min(meta.spacing) > 0
    # the 4 copies of the one slice sit centred on it, inside its extent
    centre = (meta.affine @ np.array([1.5, 0, 0, 1.0]))[:3]
    assert np.allclose(centre, aff[:3, 3])
    save_volume(x, meta, tmp_path / "out.nii.gz")
    back = nib.load(str(tmp_path / "out.nii.gz"))
    assert np.allclose(back.affine, meta.affine, atol=1e-6)
    assert np.allclose(np.asarray(back.dataobj), x[0].numpy())
    _, meta2 = load_volume(src, spacing=(0.25, 1.2, 3.0))  # spacing= reaches the same case
    assert abs(np.linalg.det(meta2.affine[:3, :3])) > 0


def test_save_volume_refuses_a_singular_affine(tmp_path, nib):
    from medkernels.io import save_volume

    with pytest.raises(ValueError, match="affine must be finite and invertible"):
        save_volume(torch.zeros(2, 2, 2), np.diag([0.0, 1.0, 1.0, 1.0]), tmp_path / "bad.nii")


def test_minmax_is_nan_aware(tmp_path, nib):
    from medkernels.io import load_volume

    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    data[1, 1, 1] = np.nan
    src = _write(nib, tmp_path / "nan.nii", data, np.eye(4))
    x, _ = load_volume(src, minmax=True)
    x = x[0].numpy()
    assert np.isnan(x[1, 1, 1]) and np.isnan(x).sum() == 1
    assert x[0, 0, 0] == 0.0 and x[2, 2, 2] == 1.0
    assert np.allclose(x[0, 0, 1], 1 / 26)
    const = _write(nib, tmp_path / "c.nii", np.full((2, 2, 2), 5.0, np.float32), np.eye(4))
    assert float(load_volume(const, minmax=True)[0].abs().max()) == 0.0


@pytest.mark.parametrize("arg,bad", [("shape", (4.5, 4, 4)), ("shape", (4, 4)), ("shape", (True, 4, 4)),
                                     ("shape", (0, 4, 4)), ("crop_or_pad", (2.0, 2, 2)),
                                     ("spacing", (1.0, float("nan"), 1.0)), ("spacing", (1.0, 0.0, 1.0))])
def test_load_volume_refuses_non_integer_sizes(tmp_path, nib, arg, bad):
    from medkernels.io import load_volume

    src = _write(nib, tmp_path / "v.nii", np.ones((6, 6, 6), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=arg):
        load_volume(src, **{arg: bad})
    x, _ = load_volume(src, shape=(np.int64(4), 5, 3))  # numpy ints are ints
    assert x.shape == (1, 4, 5, 3)
