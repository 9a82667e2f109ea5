"""SwinCross (medkernels.models.SwinCross) against the plain-PyTorch re-creation of the official
modules (medkernels.reference.swincross), and the unclamped window geometry it needs."""

from __future__ import annotations

import pytest
import torch

from medkernels.ops import cross_window_attention3d
from medkernels.ops.window_attention import _DISPATCH
from medkernels.reference.swincross import WindowAttentionCross, _partition, _reverse, swin_shift_mask


def _cpu_backends():
    out = []
    for b in ("reference", "cpu", "triton"):
        try:
            _DISPATCH.select(b, torch.device("cpu"), torch.float32, head_dim=4)
            out.append(b)
        except (RuntimeError, ValueError):
            pass
    return out


def _official_cross(qkv_a, qkv_b, heads, window, shift, table):
    """The official block's attention part on projected qkv (zero padding, roll, partition, mask)."""
    b, d, h, w, c3 = qkv_a.shape
    pads = [(win - s % win) % win for s, win in zip((d, h, w), window)]
    pad = (0, 0, 0, pads[2], 0, pads[1], 0, pads[0])
    att = WindowAttentionCross(c3 // 3, window, heads, False).double()
    with torch.no_grad():
        att.relative_position_bias_table.copy_(table)
    ya, yb = (torch.nn.functional.pad(t, pad) for t in (qkv_a, qkv_b))
    padded = ya.shape[1:4]
    if min(shift) > 0:
        ya, yb = (torch.roll(t, tuple(-s for s in shift), (1, 2, 3)) for t in (ya, yb))
    mask = swin_shift_mask(padded, window, shift) if min(shift) > 0 else None
    wa, wb = _partition(ya, window), _partition(yb, window)

    def heads_of(t):
        bw, n, _ = t.shape
        return t.reshape(bw, n, 3, heads, -1).permute(2, 0, 3, 1, 4)

    qa, ka, va = heads_of(wa)
    qb, kb, vb = heads_of(wb)
    att.proj = torch.nn.Identity()
    outs = []
    for q, k, v in ((qa, kb, vb), (qb, ka, va)):
        o = _reverse(att._attend(q, k, v, mask.double() if mask is not None else None), window, b, *padded)
        if min(shift) > 0:
            o = torch.roll(o, shift, (1, 2, 3))
        outs.append(o[:, :d, :h, :w])
    return outs


@pytest.mark.parametrize("size", [(2, 2, 2), (3, 3, 3), (2, 3, 4), (5, 3, 2)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("shift", [0, 1])
def test_unclamped_window_matches_official_attention(size, shift):
    """clamp_window=False: the configured 3^3 window on axes of 2 and 3 voxels (padded to one
    window, still shifted and masked) on every backend, as the official block computes it."""
    g = torch.Generator().manual_seed(1)
    heads, e = 2, 4
    qkv_a = torch.randn(2, *size, 3 * heads * e, dtype=torch.float64, generator=g)
    qkv_b = torch.randn(2, *size, 3 * heads * e, dtype=torch.float64, generator=g)
    table = torch.randn(125, heads, dtype=torch.float64, generator=g)
    want = _official_cross(qkv_a, qkv_b, heads, (3, 3, 3), (shift,) * 3, table)
    for backend in _cpu_backends():
        dt = torch.float32 if backend == "triton" else torch.float64
        got = cross_window_attention3d(qkv_a.to(dt), qkv_b.to(dt), heads, 3, shift, table.to(dt), backend=backend,
                                       clamp_window=False)
        tol = 1e-5 if dt == torch.float32 else 1e-12
        for g_, w_ in zip(got, want):
            torch.testing.assert_close(g_.double().flatten(-2), w_, atol=tol, rtol=tol, msg=backend)
    if shift or size != (3, 3, 3):  # MONAI's clamp computes something else there
        clamped = cross_window_attention3d(qkv_a, qkv_b, heads, 3, shift, table, backend="reference")
        assert (clamped[0].flatten(-2) - want[0]).abs().max() > 1e-3


def test_clamp_window_must_be_bool():
    q = torch.randn(1, 3, 3, 3, 12)
    with pytest.raises(TypeError, match="clamp_window"):
        cross_window_attention3d(q, q, 2, 3, 1, clamp_window="no", backend="reference")
