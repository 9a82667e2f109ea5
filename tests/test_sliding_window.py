"""Sliding-window (patch) inference with overlap blending (``medkernels.sliding_window``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medkernels.sliding_window import (
    BLENDS,
    SlidingWindow,
    blend_weights,
    patch_starts,
    sliding_window_inference,
)


def _conv(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 2, k, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(F.conv3d(x, w, b, padding=k // 2))


def test_patch_starts_cover_the_axis_and_end_at_the_border():
    assert patch_starts(8, 8, 0.5) == [0]
    assert patch_starts(5, 8, 0.5) == [0]
    assert patch_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert patch_starts(17, 8, 0.5) == [0, 4, 8, 9]
    assert patch_starts(17, 8, 0.0) == [0, 8, 9]
    assert patch_starts(10, 4, 0.9) == list(range(7))  # the step never drops below 1
    for n, r, o in [(13, 5, 0.25), (40, 16, 0.5), (9, 8, 0.75)]:
        s = patch_starts(n, r, o)
        assert s[0] == 0 and s[-1] == n - r
        assert all(b - a <= r for a, b in zip(s, s[1:]))  # no gap


@pytest.mark.parametrize("blend", BLENDS)
def test_whole_volume_equivalence_for_a_translation_equivariant_model(blend):
    """A 3x3x3 conv (zero padding, receptive radius 1): with a margin of 1 the blended patches equal
    whole-volume inference at every voxel; without a margin, at every voxel a pointwise model's."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 20, 17, 13, generator=g, dtype=torch.float64)
    fn = _conv(3)
    got = sliding_window_inference(fn, x, 8, overlap=0.5, blend=blend, margin=1)
    assert got.shape == (2, 3, 20, 17, 13)
    torch.testing.assert_close(got, fn(x), rtol=1e-12, atol=1e-12)
    # without the margin the patch borders differ from the whole volume, except away from them
    plain = sliding_window_inference(fn, x, 8, overlap=0.5, blend=blend)
    assert (plain - fn(x)).abs().max() > 1e-6
    point = _conv(1)
    torch.testing.assert_close(sliding_window_inference(point, x, (8, 6, 5), overlap=0.25, blend=blend),
                               point(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("blend", BLENDS)
def test_constant_input_gives_constant_output(blend):
    x = torch.full((1, 2, 19, 9, 6), 0.7)  # the last axis shorter than the crop: padded and cropped back
    fn = _conv(1)  # pointwise

    def fn32(p):
        return fn(p.double()).float()

    out = sliding_window_inference(fn32, x, 8, overlap=0.5, blend=blend)
    want = fn32(x[:, :, :1, :1, :1])
    assert out.shape == (1, 3, 19, 9, 6)
    assert (out - want).abs().max() <= 1e-6


def test_a_volume_of_the_crop_is_the_plain_model_bit_for_bit():
    x = torch.randn(1, 2, 8, 8, 8)
    fn = _conv(3)
    calls = []

    def f(p):
        calls.append(p.shape)
        return fn(p.double()).float()

    assert torch.equal(sliding_window_inference(f, x, 8), f(x)) and len(calls) == 2


def test_weights_and_wrapper():
    w = blend_weights((8, 8, 8), "gaussian")
    assert w.shape == (8, 8, 8) and w.max() == 1 and w.min() > 0
    assert torch.equal(blend_weights((4,), "linear"), torch.tensor([0.5, 1.0, 1.0, 0.5]))
    assert torch.equal(blend_weights((3, 2), "constant"), torch.ones(3, 2))
    seen = []

    def model(p, t):
        seen.append(t)
        return p[:, :1] * 2

    x = torch.randn(1, 2, 12, 12, 12)
    out = SlidingWindow(model, 8, overlap=0.5)(x, 7.0)
    torch.testing.assert_close(out, x[:, :1] * 2)
    assert len(seen) == 8 and all(t == 7.0 for t in seen)


def test_nan_propagates():
    x = torch.randn(1, 2, 16, 8, 8)
    x[0, 0, 3, 3, 3] = float("nan")
    out = sliding_window_inference(lambda p: p * 1, x, 8, overlap=0.5)
    assert torch.isnan(out[0, 0, 3, 3, 3]) and torch.isfinite(out[0, 0, 12]).all()


def test_bad_arguments_give_clear_errors():
    x = torch.randn(1, 2, 16, 16, 16)
    ident = lambda p: p  # noqa: E731
    with pytest.raises(ValueError, match=r"roi_size must be a positive int or 3 positive ints"):
        sliding_window_inference(ident, x, (8, 8))
    with pytest.raises(ValueError, match="roi_size must be"):
        sliding_window_inference(ident, x, 0)
    with pytest.raises(ValueError, match=r"overlap must be a number in \[0, 1\), got 1.0"):
        sliding_window_inference(ident, x, 8, overlap=1.0)
    with pytest.raises(ValueError, match="blend must be one of"):
        sliding_window_inference(ident, x, 8, blend="cosine")
    with pytest.raises(ValueError, match="margin=3 leaves voxels without a patch"):
        sliding_window_inference(ident, x, 8, overlap=0.25, margin=3)
    with pytest.raises(ValueError, match=r"fn must return \(B, C_out, 8, 8, 8\)"):
        sliding_window_inference(lambda p: p[:, :, :4], x, 8)
    with pytest.raises(ValueError, match="x must be"):
        sliding_window_inference(ident, torch.randn(4, 4), 8)
