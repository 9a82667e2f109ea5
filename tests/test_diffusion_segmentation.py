"""Issue 14 item 3: 3D diffusion tumour segmentation on PET/CT
(``medkernels.models.diffusion_segmentation``), tiny configs at 8^3."""

from __future__ import annotations

import math

import pytest
import torch

from medkernels.diffusion import FastDDPMSchedule
from medkernels.models.diffusion_segmentation import (
    ConditionalDDPM,
    DiffusionSegmentation,
    dice_score,
    make_unet,
    sample_variance,
)
from medkernels.testing import rel_err


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks, hundreds of small ops: one thread on the shared 2-core machine (as
    tests/test_models_fast_ddpm.py), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _case(batch=2, size=8, seed=0):
    """PET/CT crops with a bright PET blob where the mask is."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 1, size, size, size)
    mask[:, :, 2:5, 3:6, 2:6] = 1
    pet = mask * 0.8 + 0.1 * torch.rand(mask.shape, generator=g)
    ct = 0.5 + 0.1 * torch.randn(mask.shape, generator=g)
    return torch.cat([pet, ct], dim=1), mask


def _model(**kw):
    torch.manual_seed(0)
    return DiffusionSegmentation("tiny", schedule=FastDDPMSchedule("uniform", steps=4), **kw)


def test_unet_input_is_pet_ct_then_the_noisy_mask():
    model = _model()
    assert model.unet.in_channels == 3 and model.unet.out_ch == 1 and model.unet.spatial_dims == 3
    assert model.crop == 8 and model.cond_channels == 2
    seen = []
    model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    image, mask = _case()
    t = torch.tensor([0, 0])  # abar_0 ~ 1: x_t is the mask, barely noised
    model.loss(image, mask, seed=3, t=t)
    assert torch.equal(seen[0][:, :2], image)
    assert (seen[0][:, 2:] - (2 * mask - 1)).abs().max() < 0.1


def test_training_steps_lower_the_loss():
    model = _model()
    image, mask = _case()
    t = torch.tensor([1, 499])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        before = model.loss(image, mask, seed=5, t=t).item()
    for _ in range(5):
        opt.zero_grad()
        loss = model.loss(image, mask, seed=5, t=t)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(image, mask, seed=5, t=t).item()
    assert math.isfinite(before) and after < 0.8 * before, (before, after)


def test_segment_outputs_have_the_documented_shapes():
    model = _model()
    image, mask = _case()
    res = model.segment(image, num_samples=3, seed=1, reference=mask[:, 0])
    assert res.samples.shape == (3, 2, 1, 8, 8, 8)
    assert res.mean.shape == res.uncertainty.shape == res.mask.shape == (2, 1, 8, 8, 8)
    assert res.mask.dtype == torch.bool and res.dice.shape == (2,) and res.dice.dtype == torch.float64
    for v in (res.samples, res.mean, res.uncertainty, res.dice):
        assert torch.isfinite(v).all()
    assert ((res.samples >= 0) & (res.samples <= 1)).all()
    torch.testing.assert_close(res.mean, res.samples.mean(0))
    torch.testing.assert_close(res.uncertainty, res.samples.var(0, unbiased=False), rtol=1e-5, atol=1e-7)
    assert res.uncertainty.max() > 0  # different noise per sample: they differ
    assert torch.equal(res.mask, res.mean > 0.5)
    torch.testing.assert_close(res.dice, dice_score(res.mask, mask))
    assert model.training  # restored after sampling in eval mode
    # the same seed: the same samples; sample k of case b is at batch index k B + b
    again = model.sample(image, seed=1, num_samples=3)
    assert torch.equal(((again + 1) / 2).clamp(0, 1), res.samples)
    one = model.sample(image[:1], seed=1, num_samples=1)
    assert rel_err(one[0, 0], again[0, 0]) < 1e-4  # the same noise (the batch size changes the conv sums)


def test_a_volume_larger_than_the_crop_is_sampled_by_sliding_window():
    model = _model()
    image, _ = _case(batch=1, size=12)
    res = model.segment(image, num_samples=2, seed=0, overlap=0.5)
    assert res.samples.shape == (2, 1, 1, 12, 12, 12) and torch.isfinite(res.samples).all()


def test_uncertainty_is_zero_when_samples_agree():
    s = torch.rand(1, 2, 1, 5, 5, 5).expand(4, -1, -1, -1, -1, -1)
    assert torch.equal(sample_variance(s), torch.zeros(2, 1, 5, 5, 5))
    assert torch.equal(sample_variance(torch.tensor([[0.1, 0.3]] * 3)), torch.zeros(2))
    torch.testing.assert_close(sample_variance(torch.tensor([[0.0], [1.0]])), torch.tensor([0.25]))
    # one sample per case: zero everywhere
    res = _model().segment(_case()[0], num_samples=1, seed=2)
    assert torch.equal(res.uncertainty, torch.zeros_like(res.uncertainty))
    assert torch.isnan(sample_variance(torch.tensor([[float("nan")], [1.0]]))).all()


def test_dice():
    a = torch.zeros(3, 1, 4, 4, 4, dtype=torch.bool)
    a[0, :, :2] = True
    a[1, :, 1:3] = True
    assert torch.equal(dice_score(a, a), torch.ones(3, dtype=torch.float64))  # identical (and both empty) -> 1
    b = a.clone()
    b[:2] = False
    b[0, :, 2:] = True  # disjoint from a[0]
    b[1, :, 2:] = True  # a[1]: rows 1-2, b[1]: rows 2-3 -> overlap 1 row of 2 each
    assert torch.equal(dice_score(a, b), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    p = a.float() * 0.9
    assert torch.equal(dice_score(p, a.long()), torch.ones(3, dtype=torch.float64))
    p[2, 0, 0, 0, 0] = float("nan")
    d = dice_score(p, a)
    assert torch.isnan(d[2]) and torch.equal(d[:2], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"pred and reference must have one shape, got \(3, 1, 4, 4, 4\) and"):
        dice_score(a, a[:, 0])


def test_backend_reference_gives_the_same_result():
    model = _model()
    image, mask = _case()
    t = torch.tensor([3, 700])
    out = {}
    for backend in ("auto", "reference"):
        model.set_backend(backend)
        assert model.backend == backend and model.unet.backend == backend
        model.zero_grad()
        loss = model.loss(image, mask, seed=9, t=t)
        loss.backward()
        res = model.segment(image, num_samples=2, seed=4, reference=mask)
        out[backend] = (loss.detach(), [p.grad.clone() for p in model.parameters()], res)
    (l0, g0, r0), (l1, g1, r1) = out["auto"], out["reference"]
    assert rel_err(l1, l0) < 1e-5
    # over all gradients at once: a bias before a GroupNorm (or the attention's k bias) has a zero
    # gradient in exact arithmetic, so its own relative error is rounding over rounding
    assert rel_err(torch.cat([g.flatten() for g in g1]), torch.cat([g.flatten() for g in g0])) < 1e-4
    for name in ("samples", "mean", "uncertainty"):
        assert rel_err(getattr(r1, name), getattr(r0, name)) < 1e-4, name
    assert DiffusionSegmentation("tiny", backend="reference").unet.backend == "reference"


def test_bad_inputs_give_clear_errors():
    model = _model()
    image, mask = _case()
    with pytest.raises(ValueError, match=r"cond must be \(B, 2, D, H, W\), got shape \(2, 3, 8, 8, 8\)"):
        model.loss(torch.cat([image, mask], 1), mask, seed=0)
    with pytest.raises(ValueError, match=r"training crops must be 8\^3 .* got spatial shape \(8, 8, 12\)"):
        model.loss(torch.randn(2, 2, 8, 8, 12), torch.zeros(2, 1, 8, 8, 12), seed=0)
    with pytest.raises(ValueError, match=r"x0 must be \(2, 1, 8, 8, 8\)"):
        model.loss(image, mask[:1], seed=0)
    with pytest.raises(ValueError, match="seed must be an int in 0..2\\^63-1, got -1"):
        model.loss(image, mask, seed=-1)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        model.segment(image, num_samples=0)
    with pytest.raises(ValueError, match=r"reference must be \(2, 1, 8, 8, 8\)"):
        model.segment(image, reference=mask[:, :, :4])
    with pytest.raises(ValueError, match="config must be one of"):
        DiffusionSegmentation("huge")
    with pytest.raises(ValueError, match=r"unet.in_channels must be cond_channels \+ out_ch = 3, got 2"):
        ConditionalDDPM(make_unet("tiny", 2), 2)
    with pytest.raises(TypeError, match="unet must be a 3D FastDDPMUNet"):
        ConditionalDDPM(torch.nn.Conv3d(3, 1, 1), 2)


def test_per_sample_offsets_make_the_loss_independent_of_the_batch():
    """offset=[o_0, o_1]: each sample's noise is its own stream, so a batch's loss is the mean of
    its samples' losses computed alone (what makes data-parallel training world-size independent)."""
    model = _model()
    image, mask = _case()
    t = torch.tensor([2, 501])
    with torch.no_grad():
        both = model.loss(image, mask, seed=7, t=t, offset=[10, 11])
        alone = [model.loss(image[b:b + 1], mask[b:b + 1], seed=7, t=t[b:b + 1], offset=[10 + b]) for b in range(2)]
        batched = model.loss(image, mask, seed=7, t=t, offset=10)  # one stream, batch-indexed: other noise
    assert rel_err(both, torch.stack(alone).mean()) < 1e-5
    assert rel_err(batched, both) > 1e-4
    with pytest.raises(ValueError, match=r"offset must be an int or 2 ints .* got 3"):
        model.loss(image, mask, seed=7, offset=[1, 2, 3])


def test_ddim_x0_clip():
    """clip_x0 (default 1): every DDIM step's x0 prediction is clipped to the data range, so an
    untrained network's samples stay in [-1, 1]; clip_x0=None is the official unclipped DDIM."""
    image, _ = _case()
    clipped = _model().sample(image, seed=3)
    raw = _model(clip_x0=None).sample(image, seed=3)
    assert clipped.abs().max() <= 1 + 1e-5 and raw.abs().max() > 2
    with pytest.raises(ValueError, match="clip_x0 must be a number > 0 or None, got 0"):
        _model(clip_x0=0)
