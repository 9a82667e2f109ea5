"""``medkernels.convert`` and ``medkernels.nn.GroupNormAct`` (issue 13): on MONAI's own networks
(monai is in the test extras), the converted model has the same state dict, outputs and
gradients as the original with the same weights, and reports what it replaced."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import medkernels
from medkernels import testing
from medkernels.nn import GroupNormAct
from medkernels.ops import group_norm as gn_ops

monai_unet = pytest.importorskip("monai.networks.nets.diffusion_model_unet")
monai_aekl = pytest.importorskip("monai.networks.nets.autoencoderkl")
monai_swin = pytest.importorskip("monai.networks.nets.swin_unetr")

GN_BACKENDS = [b.name for b in gn_ops._DISPATCH.backends if b.name in ("cpu", "reference") and
               not b.machine()]


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # conv2 of MONAI's ResBlocks is zero-initialised
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _compare(model: nn.Module, inputs, backend: str = "auto", tol: float = 1e-12):
    """Convert a deep copy; outputs and every parameter gradient agree with the original's."""
    conv = copy.deepcopy(model)
    report = medkernels.convert(conv, backend=backend)
    assert list(conv.state_dict()) == list(model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), conv.state_dict().values()):
        assert torch.equal(a, b), k
    outs = []
    for m in (model, conv):
        torch.manual_seed(7)  # AutoencoderKL samples its latent
        y = m(*inputs)
        y = y[0] if isinstance(y, (tuple, list)) else y
        grads = torch.autograd.grad(y, list(m.parameters()), torch.ones_like(y) / y.numel(), allow_unused=True)
        outs.append((y, grads))
    (y0, g0), (y1, g1) = outs
    assert testing.rel_err(y1, y0) <= tol
    # a gradient that is 0 in exact arithmetic (an attention key bias) is rounding noise on both
    # sides: each is judged relative to the larger of its own scale and 1e-6 of the largest one
    scale = max(g.abs().max().item() for g in g0 if g is not None)
    for (name, _), a, b in zip(model.named_parameters(), g0, g1):
        assert (a is None) == (b is None), name
        if a is not None:
            err = (b - a).abs().max().item() / max(a.abs().max().item(), 1e-6 * scale)
            assert err <= tol, f"grad {name}: {err:.2e}"
    return conv, report


@pytest.mark.parametrize("backend", GN_BACKENDS)
@pytest.mark.parametrize("up,down,c_out", [(False, False, 8), (True, False, 8), (False, True, 12)])
def test_diffusion_resnet_block(backend, up, down, c_out):
    blk = monai_unet.DiffusionUNetResnetBlock(3, 8, 16, c_out, up=up, down=down, norm_num_groups=4)
    blk = _randomise(blk.double())
    x = torch.randn(2, 8, 5, 4, 6, dtype=torch.float64)
    emb = torch.randn(2, 16, dtype=torch.float64)
    conv, report = _compare(blk, (x, emb), backend)
    assert isinstance(conv, monai_unet.DiffusionUNetResnetBlock)
    assert report.counts() == {"DiffusionUNetResnetBlock -> fused GroupNorm+SiLU (+time add)": 1}


def test_diffusion_unet_whole_network_train_mode():
    pytest.importorskip("einops")  # MONAI's mid block attention needs it
    unet = monai_unet.DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 16),
                                         attention_levels=(False, False, False), num_res_blocks=1,
                                         num_head_channels=8, norm_num_groups=4)
    unet = _randomise(unet.double()).train()
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    conv, report = _compare(unet, (x, torch.tensor([3, 700])), backend="cpu")
    counts = report.counts()
    assert counts["DiffusionUNetResnetBlock -> fused GroupNorm+SiLU (+time add)"] == 11
    assert counts["GroupNorm + SiLU -> GroupNormAct"] == 1  # the output head
    assert "replaced 12 module(s)" in str(report)


def test_controlnet():
    pytest.importorskip("einops")
    controlnet = pytest.importorskip("monai.networks.nets.controlnet")
    net = controlnet.ControlNet(spatial_dims=3, in_channels=1, channels=(8, 16, 16),
                                attention_levels=(False, False, False), num_res_blocks=1, num_head_channels=8,
                                norm_num_groups=4, conditioning_embedding_num_channels=(8,))
    net = _randomise(net.double()).eval()
    x, cond = torch.randn(2, 2, 1, 8, 8, 8, dtype=torch.float64)
    conv = copy.deepcopy(net)
    report = medkernels.convert(conv, backend="cpu")
    assert report.counts() == {"DiffusionUNetResnetBlock -> fused GroupNorm+SiLU (+time add)": 5}
    t = torch.tensor([5, 600])
    (down0, mid0), (down1, mid1) = net(x, t, cond), conv(x, t, cond)
    for a, b in zip([*down0, mid0], [*down1, mid1]):
        assert testing.rel_err(b, a) <= 1e-12


def test_autoencoder_kl():
    ae = monai_aekl.AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16), latent_channels=4,
                                  attention_levels=(False, False), num_res_blocks=(1, 1), norm_num_groups=4,
                                  with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
    ae = _randomise(ae.double()).eval()
    _, report = _compare(ae, (torch.randn(1, 1, 8, 8, 8, dtype=torch.float64),), backend="cpu")
    assert report.counts()["AEKLResBlock -> fused GroupNorm+SiLU"] == 4


def _swin(attn_drop: float = 0.0, spatial_dims: int = 3, **kw):
    w = (4,) * spatial_dims
    return monai_swin.SwinTransformer(in_chans=1, embed_dim=12, window_size=w, patch_size=(2,) * spatial_dims,
                                      depths=(2, 2, 2, 2), num_heads=(3, 3, 3, 3), attn_drop_rate=attn_drop,
                                      spatial_dims=spatial_dims, **kw)


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_swin_transformer_blocks(use_checkpoint):
    # 40^3: 20^3, 10^3, 5^3, 3^3 tokens per stage: the shifted blocks' mask, padding to the window
    # (10 and 5 by 4) and MONAI's window clamp (3 <= 4: window 3, shift 0)
    swin = _randomise(_swin(use_checkpoint=use_checkpoint).double()).eval()
    x = torch.randn(1, 1, 40, 40, 40, dtype=torch.float64)
    conv, report = _compare(swin, (x,))
    assert report.counts() == {"SwinTransformerBlock -> fused window attention": 8}
    blk = conv.layers1[0].blocks[1]
    assert isinstance(blk, monai_swin.SwinTransformerBlock) and blk.use_checkpoint == use_checkpoint
    assert type(blk.attn).__name__ == "WindowAttention3d"


def test_swin_attention_dropout_raises_in_train_mode_and_2d_blocks_are_skipped():
    swin = _swin(attn_drop=0.1).double()
    report = medkernels.convert(swin)
    assert all("raises in train mode" in what for _, what in report.replaced)
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="attention dropout p=0.1"):
        swin.train()(x)
    swin.eval()(x)  # eval is exact: dropout is off
    flat = _swin(spatial_dims=2)
    report = medkernels.convert(flat)
    assert not report.replaced and len(report.skipped) == 8
    assert all("2D SwinTransformerBlock" in why for _, why in report.skipped)


def test_sequential_pairs_unknown_modules_and_idempotence():
    gn = nn.GroupNorm(2, 6)
    seq = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), gn, nn.SiLU(), nn.GroupNorm(3, 6), nn.GELU("tanh"),
                        nn.GroupNorm(3, 6), nn.GELU(), nn.ReLU()).double()
    _randomise(seq)
    params_before = list(seq.parameters())
    conv, report = _compare(seq, (torch.randn(2, 3, 4, 5, 3, dtype=torch.float64),))
    # GroupNorm + SiLU and GroupNorm + exact GELU; the tanh GELU and the ReLU are left alone
    assert [p for p, _ in report.replaced] == ["1", "5"]
    assert isinstance(conv[1], GroupNormAct) and isinstance(conv[2], nn.Identity)
    assert type(conv[3]) is nn.GroupNorm and type(conv[4]) is nn.GELU
    medkernels.convert(seq)
    assert [p for p in seq.parameters()] == params_before, "an optimizer's parameters stay the model's"
    again = medkernels.convert(conv)
    assert not again.replaced


def test_converted_model_pickles():
    blk = monai_unet.DiffusionUNetResnetBlock(3, 8, 16, 8, norm_num_groups=4).double()
    medkernels.convert(blk)
    buf = io.BytesIO()
    torch.save(blk, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert type(back) is type(blk)
    x, emb = torch.randn(1, 8, 3, 3, 3, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)
    assert torch.equal(back(x, emb), blk(x, emb))


def test_convert_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be an nn.Module, got int"):
        medkernels.convert(3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_norm_act_module(dtype):
    norm = nn.GroupNorm(3, 6, eps=1e-4).to(dtype)
    _randomise(norm)
    fused = GroupNormAct.from_group_norm(norm, "silu")
    assert fused.weight is norm.weight and fused.bias is norm.bias
    assert list(fused.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 6, 5, 4, 3, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert testing.rel_err(fused(x), nn.functional.silu(norm(x))) <= tol
    temb = torch.randn(2, 6, dtype=dtype)
    assert testing.rel_err(fused(x, add=temb), nn.functional.silu(norm(x + temb[..., None, None, None]))) <= tol
    fresh = GroupNormAct(3, 6, eps=1e-4, activation=None).to(dtype)
    fresh.load_state_dict(norm.state_dict())
    assert testing.rel_err(fresh(x), norm(x)) <= tol
    with pytest.raises(ValueError, match="activation must be one of"):
        GroupNormAct(3, 6, activation="relu")
    with pytest.raises(ValueError, match=r"x must be \(N, C=6, \*spatial\), got shape \(2, 5, 4\)"):
        fused(torch.randn(2, 5, 4, dtype=dtype))
