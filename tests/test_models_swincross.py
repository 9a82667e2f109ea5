"""SwinCross (medkernels.models.SwinCross) against the plain-PyTorch re-creation of the official
modules (medkernels.reference.swincross), and the unclamped window geometry it needs."""

from __future__ import annotations

import pytest
import torch

from medkernels.models.swincross import (
    LAYOUTS,
    SWINCROSS_CONFIGS,
    SwinCross,
    SwinUNETR_CrossModalityFusion_OutSum_6stageOuts,
)
from medkernels.ops import cross_window_attention3d
from medkernels.ops.window_attention import _DISPATCH
from medkernels.reference.swincross import (
    SwinCrossRef,
    WindowAttentionCross,
    _partition,
    _reverse,
    swin_shift_mask,
)


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


# --- the model ------------------------------------------------------------------------------
TINY_REF = dict(embed_dim=8, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), mlp_ratio=2.0, pretrain_img_size=64)


def _pair(drop_path_rate=0.0, layout="monai07", official_padding=True, seed=0):
    """(ours, the plain re-creation) with the same weights, tiny config."""
    torch.manual_seed(seed)
    ref = SwinCrossRef(**TINY_REF, drop_path_rate=drop_path_rate, layout=layout, official_padding=official_padding)
    with torch.no_grad():  # non-trivial biases and norms so every parameter matters
        for name, p in ref.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours = SwinCross(**{**SWINCROSS_CONFIGS["tiny"], "drop_path_rate": drop_path_rate}, layout=layout)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _x(shape=(1, 2, 64, 64, 64), dtype=torch.float32, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("layout, count", [("monai07", 113_439_632), ("monai09", 112_653_968)])
def test_parameter_counts_of_the_official_config(layout, count):
    with torch.device("meta"):
        ours = SwinCross(layout=layout)
        ref = SwinCrossRef(layout=layout)
    assert sum(p.numel() for p in ours.parameters()) == count
    assert sum(p.numel() for p in ref.parameters()) == count
    assert tuple(ours.transformer.absolute_pos_embed.shape) == (1, 48, 80, 80, 80)
    assert set(ours.state_dict()) == set(ref.state_dict())
    for key in ("transformer.layers.0.downsample.reduction.weight", "transformer.layers.2.downsample.norm.bias",
                "transformer.norm0.weight", "transformer.norm2.bias", "transformer.norm3.weight",
                "decoder0.transp_conv.conv.weight", "decoder5.transp_conv_init.conv.weight", "out.conv.conv.bias",
                "transformer.layers.3.blocks.1.attn.relative_position_index",
                "transformer.patch_merging_layers.3.reduction.weight", "encoder0.layer.conv3.conv.weight"):
        assert key in ours.state_dict(), key
    conv3 = {k for k in ours.state_dict() if "conv3" in k}
    assert len(conv3) == (11 if layout == "monai07" else 6)  # encoder0 + 5 decoder blocks change width


def test_official_alias_from_config():
    class Config:  # an official configs_sw config, read by attribute
        embed_dim, depths, num_heads, window_size, patch_size = 48, (2, 4, 2, 2), (3, 6, 12, 24), (3, 3, 3), 2
        mlp_ratio, qkv_bias, drop_rate, drop_path_rate, ape, in_chans = 4, False, 0, 0.3, True, 2

    with torch.device("meta"):
        m = SwinUNETR_CrossModalityFusion_OutSum_6stageOuts(Config())
    assert isinstance(m, SwinCross) and sum(p.numel() for p in m.parameters()) == 113_439_632


@pytest.mark.parametrize("source", LAYOUTS)
@pytest.mark.parametrize("target", LAYOUTS)
def test_strict_loading_of_either_layout(source, target):
    """Either layout's state dict loads strictly into a model built with either layout."""
    torch.manual_seed(0)
    sd = SwinCrossRef(**TINY_REF, layout=source).state_dict()
    ours = SwinCross(**SWINCROSS_CONFIGS["tiny"], layout=target)
    ours.load_state_dict(sd, strict=True)
    assert ours.layout == source and set(ours.state_dict()) == set(sd)
    for k, v in sd.items():
        assert torch.equal(ours.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict({k: v for k, v in sd.items() if "norm0" not in k})


@pytest.mark.parametrize("shape, match", [
    ((1, 1, 64, 64, 64), r"\(B, 2, D, H, W\)"),
    ((2, 64, 64, 64), r"\(B, 2, D, H, W\)"),
    ((1, 2, 48, 64, 64), "multiples of 32"),
    ((1, 2, 32, 32, 32), ">= 64"),
    ((1, 2, 64, 64, 80), r"\(64, 64, 80\)"),
])
def test_bad_input_is_a_clear_error(shape, match):
    m = SwinCross(**SWINCROSS_CONFIGS["tiny"])
    with pytest.raises(ValueError, match=match):
        m(torch.zeros(shape))
    with pytest.raises(TypeError, match="floating"):
        m(torch.zeros((1, 2, 64, 64, 64), dtype=torch.long))


@pytest.mark.parametrize("kwargs, match", [
    (dict(layout="monai08"), "layout"), (dict(depths=(2, 2, 2)), "depths"),
    (dict(num_heads=(3, 5, 12, 24)), "num_heads"), (dict(patch_size=4), "patch_size"),
    (dict(drop_path_rate=1.0), "drop_path_rate"), (dict(embed_dim=0), "embed_dim"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        SwinCross(**kwargs)


def test_equals_the_official_modules_fp32():
    """Same weights, eval and train mode (drop_path 0): ours == the plain re-creation, 64^3 (the
    last stage's 2^3 grid padded to one 3^3 window, shifted and masked)."""
    ours, ref = _pair()
    x = _x()
    for train in (False, True):
        ours.train(train)
        ref.train(train)
        with torch.no_grad():
            got, want = ours(x), ref(x)
        assert got.shape == (1, 2, 64, 64, 64) and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_encoder_equals_the_official_modules_fp64_with_gradients():
    """The encoder (where the fused op runs) in float64, train mode: the five skips and every
    parameter gradient, tight."""
    ours, ref = _pair()
    ours, ref = ours.transformer.double().train(), ref.transformer.double().train()
    x = _x((1, 2, 32, 32, 32), dtype=torch.float64)  # the encoder alone runs at 32^3: a 1^3 last stage
    weights = [torch.randn(s.shape[1:], dtype=torch.float64) for s in ref(x)]

    def run(m):
        m.zero_grad()
        outs = m(x)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        return outs, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    got, g_got = run(ours)
    want, g_want = run(ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    assert set(g_got) == set(g_want)
    for n in g_want:
        torch.testing.assert_close(g_got[n], g_want[n], atol=1e-10, rtol=1e-10, msg=n)


def test_non_cubic_crop_pads_the_right_axes():
    """64 x 64 x 96: the stage grids (4, 4, 6) and (2, 2, 3) are padded per axis. The official
    block pads D's remainder onto W and W's onto D, and fails on this crop."""
    ours, ref = _pair(official_padding=False)
    x = _x((1, 2, 64, 64, 96))
    with torch.no_grad():
        got, want = ours.transformer(x), ref.transformer(x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
        out = ours(x)
        assert out.shape == (1, 2, 64, 64, 96) and torch.isfinite(out).all()
        official = SwinCrossRef(**TINY_REF, official_padding=True)
        official.load_state_dict(ref.state_dict())
        with pytest.raises(RuntimeError):
            official.transformer(x)


def test_reference_backend_equals_default():
    """backend="reference" (the plain PyTorch attention) gives the default backend's outputs and gradients."""
    ours, _ = _pair()
    enc = ours.transformer.train()
    x = _x((1, 2, 32, 32, 32))

    def run():
        enc.zero_grad()
        outs = enc(x)
        sum(o.square().mean() for o in outs).backward()
        return outs, [p.grad.clone() for p in enc.parameters() if p.grad is not None]

    got, g_got = run()
    ours.backend = "reference"
    assert all(m.backend == "reference" for m in ours.modules() if hasattr(m, "relative_position_bias_table"))
    want, g_want = run()
    for a, b in zip(got + g_got, want + g_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the decoder's fused group norms (InstanceNorm) too, on a channels-last block input
    block = ours.decoder1.conv_block
    y = torch.randn(1, 6, 6, 6, 16).permute(0, 4, 1, 2, 3).requires_grad_()
    outs = []
    for backend in ("auto", "reference"):
        ours.backend = backend
        y.grad = None
        out = block(y)
        out.square().sum().backward()
        outs += [out, y.grad]
    torch.testing.assert_close(outs[0], outs[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1], outs[3], atol=1e-5, rtol=1e-5)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)  # narrower than tiny (the full-size convs dominate), one block a stage
    model = SwinCross(**dict(SWINCROSS_CONFIGS["tiny"], embed_dim=4, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)))
    model.train()
    x = _x()
    target = (x[:, :1] > 0.5).long()[:, 0]  # a segmentation of "bright PET"
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(torch.nn.functional.cross_entropy(model(x), target).item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("size", [(2, 2, 2), (3, 3, 3)], ids=lambda s: "x".join(map(str, s)))
def test_nn_cross_attention_module_unclamped_is_swincross(size):
    """medkernels.nn.CrossModalWindowAttention3d(clamp_window=False) is the official attention on
    grids no larger than the window (the clamped default is MONAI's geometry and differs there)."""
    from medkernels.nn import CrossModalWindowAttention3d

    torch.manual_seed(3)
    heads, dim, shift = 2, 8, (1, 1, 1)
    mod = CrossModalWindowAttention3d(dim, heads, 3, shift, qkv_bias=False, clamp_window=False).double()
    x_a, x_b = (torch.randn(2, *size, dim, dtype=torch.float64) for _ in range(2))
    o_a, o_b = mod(x_a, x_b)
    with torch.no_grad():
        want = _official_cross(mod.qkv(x_a), mod.qkv(x_b), heads, (3, 3, 3), shift, mod.relative_position_bias_table)
        want = [mod.proj(w.reshape(*w.shape[:4], dim)) for w in want]
    assert (o_a - want[0]).abs().max().item() < 1e-12 and (o_b - want[1]).abs().max().item() < 1e-12
    clamped = CrossModalWindowAttention3d(dim, heads, 3, shift, qkv_bias=False).double()
    clamped.load_state_dict(mod.state_dict())
    assert (clamped(x_a, x_b)[0] - o_a).abs().max().item() > 1e-3, "the clamped default is MONAI's other geometry"
    with pytest.raises(TypeError, match="clamp_window must be a bool"):
        CrossModalWindowAttention3d(dim, heads, 3, clamp_window="no")
