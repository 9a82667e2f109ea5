"""LDM-Morph (medkernels.models.ldm_morph) against a plain-PyTorch re-creation of the official
``TransModels/`` modules written here from the official code's logic (pad to a multiple of the
window with no clamping, cyclic shift even of a single window, -100 region masks, queries from
the second LWCA argument, keys/values/residual from the first), same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medkernels.models import ldm_morph as lm
from medkernels.testing import rel_err


# --- the official modules, plain PyTorch ------------------------------------------------------------
def _partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws[0], ws[0], w // ws[1], ws[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws[0] * ws[1], c)


def _reverse(win, ws, h, w):
    b = win.shape[0] // ((h // ws[0]) * (w // ws[1]))
    x = win.view(b, h // ws[0], w // ws[1], ws[0], ws[1], -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def _shift_mask(h, w, ws, s):
    hp, wp = math.ceil(h / ws[0]) * ws[0], math.ceil(w / ws[1]) * ws[1]
    img = torch.zeros(1, hp, wp, 1)
    cnt = 0
    for hs in (slice(0, -ws[0]), slice(-ws[0], -s[0]), slice(-s[0], None)):
        for wsl in (slice(0, -ws[1]), slice(-ws[1], -s[1]), slice(-s[1], None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _partition(img, ws)[..., 0]
    diff = mw.unsqueeze(1) - mw.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class RefAttention(nn.Module):
    def __init__(self, dim, ws, heads, qkv_bias):
        super().__init__()
        self.ws, self.heads, self.scale = ws, heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws[0] - 1) * (2 * ws[1] - 1), heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(ws[0]), torch.arange(ws[1]), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws[0] - 1
        rel[:, :, 1] += ws[1] - 1
        rel[:, :, 0] *= 2 * ws[1] - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, y, mask):
        bw, n, c = x.shape
        qkv_x = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        qkv_y = self.qkv(y).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (qkv_y[0] * self.scale) @ qkv_x[1].transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(-1)
        return self.proj((attn @ qkv_x[2]).transpose(1, 2).reshape(bw, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    """Official SwinTransformerBlock; cross (LWCA) when y is given: q from y, k/v/residual from x."""

    def __init__(self, dim, heads, ws, shift, mlp_ratio, qkv_bias):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefAttention(dim, ws, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))

    def forward(self, x, y, h, w, mask):
        b, _, c = x.shape
        shortcut = x
        xs = self.norm1(x).view(b, h, w, c)
        ys = self.norm1(y).view(b, h, w, c) if y is not None else xs
        pad_r, pad_b = (self.ws[1] - w % self.ws[1]) % self.ws[1], (self.ws[0] - h % self.ws[0]) % self.ws[0]
        xs, ys = F.pad(xs, (0, 0, 0, pad_r, 0, pad_b)), F.pad(ys, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = xs.shape[1:3]
        if min(self.shift) > 0:
            xs = torch.roll(xs, (-self.shift[0], -self.shift[1]), (1, 2))
            ys = torch.roll(ys, (-self.shift[0], -self.shift[1]), (1, 2))
        else:
            mask = None
        out = self.attn(_partition(xs, self.ws), _partition(ys, self.ws), mask)
        out = _reverse(out, self.ws, hp, wp)
        if min(self.shift) > 0:
            out = torch.roll(out, self.shift, (1, 2))
        out = out[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + out
        return x + self.mlp(self.norm2(x))


class RefMerge(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction, self.norm = nn.Linear(4 * dim, 2 * dim, bias=False), nn.LayerNorm(4 * dim)

    def forward(self, x, h, w):
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class RefLayer(nn.Module):
    def __init__(self, dim, depth, heads, ws, mlp_ratio, qkv_bias, merge):
        super().__init__()
        self.ws, self.s = ws, (ws[0] // 2, ws[1] // 2)
        self.blocks = nn.ModuleList([RefBlock(dim, heads, ws, (0, 0) if i % 2 == 0 else self.s, mlp_ratio, qkv_bias)
                                     for i in range(depth)])
        if merge:
            self.downsample = RefMerge(dim)


class RefPatchEmbed(nn.Module):
    def __init__(self, p, cin, e):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(cin, e, p, stride=p), nn.LayerNorm(e)


class RefSwin(nn.Module):
    def __init__(self, cin, e, depths, heads, ws, mlp_ratio, qkv_bias):
        super().__init__()
        self.patch_embed = RefPatchEmbed(4, cin, e)
        self.layers = nn.ModuleList([RefLayer(e * 2 ** i, d, heads[i], (ws, ws), mlp_ratio, qkv_bias, i < 3)
                                     for i, d in enumerate(depths)])
        for i in range(4):
            self.add_module(f"norm{i}", nn.LayerNorm(e * 2 ** i))

    def forward(self, x):
        x = self.patch_embed.proj(x)
        h, w = x.shape[2:]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        outs = []
        for i, layer in enumerate(self.layers):
            mask = _shift_mask(h, w, layer.ws, layer.s)
            for blk in layer.blocks:
                x = blk(x, None, h, w, mask)
            outs.append(getattr(self, f"norm{i}")(x).view(-1, h, w, x.shape[-1]).permute(0, 3, 1, 2))
            if i < 3:
                x = layer.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return outs


def conv_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout), nn.LeakyReLU())


class RefLWSA(nn.Module):
    def __init__(self, cin, e, reg_chan, **kw):
        super().__init__()
        self.transformer = RefSwin(cin, e, **kw)
        self.c1, self.c2 = conv_relu(cin, e // 2), conv_relu(cin, reg_chan)

    def forward(self, x):
        self.c1(F.avg_pool2d(x, 3, 2, 1))  # computed and discarded, as official
        self.c2(x)
        return self.transformer(x)


class RefCrossSwin(nn.Module):
    def __init__(self, dim, depth, heads, ws, mlp_ratio, qkv_bias):
        super().__init__()
        self.layers = nn.ModuleList([RefLayer(dim, depth, heads, (ws, ws), mlp_ratio, qkv_bias, False)])
        for i in range(4):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))


class RefLWCA(nn.Module):
    def __init__(self, dim, **kw):
        super().__init__()
        self.transformer = RefCrossSwin(dim, **kw)

    def forward(self, x, y):
        b, c, h, w = x.shape
        x, y = x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)
        layer = self.transformer.layers[0]
        mask = _shift_mask(h, w, layer.ws, layer.s)
        for blk in layer.blocks:
            x = blk(x, y, h, w, mask)
        return self.transformer.norm0(x).view(-1, h, w, c).permute(0, 3, 1, 2)


class RefDecoder(nn.Module):
    def __init__(self, cin, cout, skip):
        super().__init__()
        self.conv1, self.conv2 = conv_relu(cin + 2 * skip, cout), conv_relu(cout, cout)
        self.conv3 = conv_relu(cin + skip, cout)

    def forward(self, x, skip, skip2=None):
        x = torch.cat([F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False), skip], 1)
        x = self.conv3(x) if skip2 is None else self.conv1(torch.cat([x, skip2], 1))
        return self.conv2(x)


class RefLDMMorph(nn.Module):
    def __init__(self, channels, e=64, depths=(2, 2, 4, 2), heads=(4, 4, 8, 8), ws=7, mlp_ratio=4.0, reg_chan=16):
        super().__init__()
        self.ec1 = conv_relu(2, e // 2)
        self.lwsa = RefLWSA(2, e, reg_chan, depths=depths, heads=heads, ws=ws, mlp_ratio=mlp_ratio, qkv_bias=False)
        for k, c in enumerate(channels):
            self.add_module(f"c{k + 1}", nn.Sequential(nn.Conv2d(c, e * 2 ** k, 3, padding=1), nn.PReLU()))
            self.add_module(f"lwca{k + 1}", RefLWCA(e * 2 ** k, depth=depths[0], heads=heads[0], ws=ws,
                                                    mlp_ratio=mlp_ratio, qkv_bias=False))
        for k, (cin, cout) in enumerate([(8 * e, 4 * e), (4 * e, 2 * e), (2 * e, e), (e, e // 2)]):
            self.add_module(f"up{k}", RefDecoder(cin, cout, cout))
        self.reg_head = nn.Sequential(nn.Conv2d(e // 2, 2, 3, padding=1), nn.Softsign())

    def forward(self, mov, fix, s1, s2, s3, s4):
        x = torch.cat((mov, fix), 1)
        f4 = self.ec1(F.avg_pool2d(x, 3, 2, 1))
        sw = self.lwsa(x)
        cn = [getattr(self, f"c{k + 1}")(s) for k, s in enumerate((s1, s2, s3, s4))]
        m = [getattr(self, f"lwca{k + 1}")(sw[k], cn[k]) for k in range(4)]
        f = [getattr(self, f"lwca{k + 1}")(cn[k], sw[k]) for k in range(3)]
        x = self.up0(m[3], m[2], f[2])
        x = self.up1(x, m[1], f[1])
        x = self.up2(x, m[0], f[0])
        x = self.up3(x, f4)
        return self.reg_head(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))


def _randomise(model):
    """Non-trivial weights everywhere (zero-initialised and tiny heads included)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            ones = "norm" in name and name.endswith("weight")  # LayerNorm scales around 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if ones else 0.0))
    return model


def _scores(channels, size, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // (4 * 2 ** k), size // (4 * 2 ** k), generator=g)
            for k, c in enumerate(channels)]


TINY = lm.LDM_MORPH_CONFIGS["tiny"]["net"]


def _tiny_pair(dtype=torch.float64):
    ours = lm.LDMMorph.from_config("tiny").eval()
    ref = RefLDMMorph(TINY["channels"], e=TINY["embed_dim"], depths=TINY["depths"], heads=TINY["num_heads"],
                      ws=TINY["window_size"], mlp_ratio=TINY["mlp_ratio"], reg_chan=TINY["reg_head_chan"]).eval()
    _randomise(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.to(dtype), ref.to(dtype)


# --- counts and keys ------------------------------------------------------------------------------------
def test_official_key_and_parameter_counts():
    with torch.device("meta"):
        ours = lm.LDMMorph(128 * 2, 192 * 2, 320 * 2, 448 * 2)
        ref = RefLDMMorph((256, 384, 640, 896))
        unet = lm.LDMUNet(**lm.LDM_MORPH_CONFIGS["official"]["unet"])
        vq = lm.VQEncoder(**lm.LDM_MORPH_CONFIGS["official"]["vq"])
    sd = ours.state_dict()
    assert len(sd) == 316
    assert sum(p.numel() for p in ours.parameters()) == 31_510_854
    assert sum(k.endswith("relative_position_index") for k in sd) == 18
    per_child = {n: sum(p.numel() for p in getattr(ours, n).parameters()) for n in ("lwsa", "lwca4", "up0", "reg_head")}
    assert per_child == {"lwsa": 10_660_576, "lwca4": 6_307_144, "up0": 4_718_592, "reg_head": 578}
    # the official key set, with the official shapes
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == 22.41
    assert round(sum(p.numel() for p in vq.encoder.parameters()) / 1e6, 2) == 24.43


def test_relative_position_index_is_the_official_buffer():
    ours = lm.WindowAttention(8, (1, 7, 7), 2)
    ref = RefAttention(8, (7, 7), 2, False)
    assert torch.equal(ours.relative_position_index, ref.relative_position_index)
    # a model first built on the meta device must not leave a meta index in the shared cache
    with torch.device("meta"):
        lm.WindowAttention(8, (1, 6, 5), 2)
    ours = lm.WindowAttention(8, (1, 6, 5), 2)
    assert torch.equal(ours.relative_position_index, RefAttention(8, (6, 5), 2, False).relative_position_index)


# --- attention blocks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(4, 4), (7, 7), (8, 10), (14, 14), (3, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_lwca_matches_official(size):
    """Window 7 on maps below, at and above one window (the official code pads and shifts them all)."""
    dim, heads = 16, 4
    torch.manual_seed(0)
    ref = _randomise(RefLWCA(dim, depth=2, heads=heads, ws=7, mlp_ratio=4.0, qkv_bias=False)).double()
    ours = lm.LWCA(dim, spatial_dims=2, backend="auto", depth=2, num_heads=heads, window_size=7, mlp_ratio=4.0,
                   qkv_bias=False, drop_path=[0.0, 0.0], num_norms=4).double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    a = torch.randn(2, dim, *size, dtype=torch.float64)
    b = torch.randn(2, dim, *size, dtype=torch.float64)
    want_ab, want_ba = ref(a, b), ref(b, a)
    assert rel_err(ours(a, b), want_ab) < 1e-10
    got_ab, got_ba = ours.pair(a, b)
    assert rel_err(got_ab, want_ab) < 1e-10
    assert rel_err(got_ba, want_ba) < 1e-10


@pytest.mark.parametrize("size", [(4, 4), (8, 10)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_lwsa_block_matches_official(size):
    dim, heads = 16, 2
    ref = _randomise(RefBlock(dim, heads, (7, 7), (3, 3), 4.0, False)).double()
    ours = lm.SwinBlock(dim, heads, (1, 7, 7), (0, 3, 3), 4.0, False, 0.0, "auto").double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    h, w = size
    x = torch.randn(2, h * w, dim, dtype=torch.float64)
    want = ref(x, None, h, w, _shift_mask(h, w, (7, 7), (3, 3)).double())
    got = ours(x.view(2, 1, h, w, dim)).reshape(2, h * w, dim)
    assert rel_err(got, want) < 1e-10


def test_lwca_gradients_match_official():
    dim = 8
    ref = _randomise(RefLWCA(dim, depth=2, heads=2, ws=3, mlp_ratio=2.0, qkv_bias=False)).double()
    ours = lm.LWCA(dim, spatial_dims=2, backend="auto", depth=2, num_heads=2, window_size=3, mlp_ratio=2.0,
                   qkv_bias=False, drop_path=[0.0, 0.0], num_norms=4).double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    a = torch.randn(1, dim, 2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dim, 2, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, dim, 2, 5, dtype=torch.float64)
    ga = torch.autograd.grad((ref(a, b) * g).sum() + (ref(b, a) * g).sum(), [a, b] + list(ref.parameters()),
                             allow_unused=True)
    x, y = ours.pair(a, b)
    gb = torch.autograd.grad((x * g).sum() + (y * g).sum(), [a, b] + list(ours.parameters()), allow_unused=True)
    names = ["a", "b"] + [n for n, _ in ref.named_parameters()]
    for n, u, v in zip(names, ga, gb):
        if v is None or u is None:  # transformer.norm1..3: unused in the official model as in ours
            assert u is None and v is None and n.startswith("transformer.norm"), n
        else:
            assert rel_err(v, u) < 1e-9, n



@pytest.mark.parametrize("backend", ["triton"])
def test_lwca_pair_triton_matches_float64(backend):
    """The GPU path (Triton, here in the interpreter) through the single-window roll and the masked
    sub-windows: a 2x4 map with window 3 (H: one shifted window, W: padded), forward and gradients."""
    def run(be, dt):
        torch.manual_seed(0)
        m = lm.LWCA(8, spatial_dims=2, backend=be, depth=2, num_heads=2, window_size=3, mlp_ratio=2.0,
                    qkv_bias=False, drop_path=[0.0, 0.0], num_norms=4).eval().to(dt)
        g = torch.Generator().manual_seed(1)
        a, b, w = (torch.randn(1, 8, 2, 4, generator=g).to(dt) for _ in range(3))
        a.requires_grad_()
        b.requires_grad_()
        x, y = m.pair(a, b)
        params = [p for n, p in m.named_parameters() if not n.startswith(("transformer.norm1", "transformer.norm2",
                                                                          "transformer.norm3"))]
        return [x, y, *torch.autograd.grad((x * w).sum() + (y * w.flip(1)).sum(), [a, b, *params])]

    for got, want in zip(run(backend, torch.float32), run("reference", torch.float64)):
        assert rel_err(got, want) < 1e-5

# --- the whole network ----------------------------------------------------------------------------------
def test_network_matches_official_tiny():
    ours, ref = _tiny_pair()
    g = torch.Generator().manual_seed(3)
    mov, fix = (torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64) for _ in range(2))
    scores = [s.double() for s in _scores(TINY["channels"], 32, batch=2)]
    want = ref(mov, fix, *scores)
    got = ours(mov, fix, *scores)
    assert got.shape == (2, 2, 32, 32) and torch.isfinite(got).all()
    assert rel_err(got, want) < 1e-9


def test_network_matches_official_full_config_fp32():
    """The official widths, depths and window 7 at 64x64 (maps of 16, 8, 4, 2 tokens), float32."""
    torch.manual_seed(0)
    ref = RefLDMMorph((256, 384, 640, 896)).eval()
    with torch.no_grad():  # a head with visible output (official: N(0, 1e-5) weights)
        ref.reg_head[0].weight.normal_(0, 1e-2)
        for n, p in ref.named_parameters():
            if n.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
    ours = lm.LDMMorph(256, 384, 640, 896).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(4)
    mov, fix = (torch.rand(1, 1, 64, 64, generator=g) for _ in range(2))
    scores = _scores((256, 384, 640, 896), 64)
    with torch.no_grad():
        want, got = ref(mov, fix, *scores), ours(mov, fix, *scores)
    assert rel_err(got, want) < 1e-4


def test_backend_reference_equals_default():
    """Output and every parameter gradient, float64 (float32 differs by rounding only: < 1e-5 forward)."""
    ours, _ = _tiny_pair(torch.float64)
    mov, fix = torch.rand(1, 1, 32, 32, dtype=torch.float64), torch.rand(1, 1, 32, 32, dtype=torch.float64)
    scores = [s.double() for s in _scores(TINY["channels"], 32)]
    out = ours(mov, fix, *scores)
    grads = torch.autograd.grad(out.square().sum(), list(ours.parameters()), allow_unused=True)
    ours.set_backend("reference")
    out_ref = ours(mov, fix, *scores)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), list(ours.parameters()), allow_unused=True)
    assert rel_err(out, out_ref) < 1e-10
    # relative to the largest gradient: on a 1-token map a shifted window's bias-table gradient is
    # of order e^-100 (its padding keys are masked with -100), and the kernels' P (dP - sum P dP)
    # leaves rounding of eps |dP| there where the reference's formula gives ~1e-41
    scale = max(b.abs().max().item() for b in grads_ref if b is not None)
    for a, b in zip(grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max().item() <= 1e-9 * max(b.abs().max().item(), 1e-6 * scale)


def test_3d_network_shapes_and_attention_matches_3d_reference():
    torch.manual_seed(0)
    net = lm.LDMMorph.from_config("tiny3d").eval()
    mov, fix = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    scores = [torch.randn(1, c, *(32 // (4 * 2 ** k),) * 3) for k, c in enumerate(TINY["channels"])]
    flow = net(mov, fix, *scores)
    assert flow.shape == (1, 3, 32, 32, 32) and torch.isfinite(flow).all() and flow.abs().max() < 1
    # the unclamped 3D geometry: the op (with the single-window roll) vs padding + roll + masks written out
    attn = lm.WindowAttention(8, (3, 3, 3), 2).double()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 0.5)
    x = torch.randn(1, 2, 4, 5, 8, dtype=torch.float64)
    y = torch.randn(1, 2, 4, 5, 8, dtype=torch.float64)
    got = attn.attend([(y, x)], (1, 1, 1))[0]
    assert rel_err(got, _attend3d_plain(attn, x, y, (3, 3, 3), (1, 1, 1))) < 1e-10


def _attend3d_plain(attn, x, y, ws, s):
    b, d, h, w, c = x.shape
    pads = [(-n) % k for n, k in zip((d, h, w), ws)]
    xp, yp = (F.pad(t, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0])) for t in (x, y))
    xp, yp = (torch.roll(t, tuple(-i for i in s), (1, 2, 3)) for t in (xp, yp))
    dp, hp, wp = xp.shape[1:4]
    region = torch.zeros(dp, hp, wp)
    cnt = 0
    for sd in (slice(0, -ws[0]), slice(-ws[0], -s[0]), slice(-s[0], None)):
        for sh in (slice(0, -ws[1]), slice(-ws[1], -s[1]), slice(-s[1], None)):
            for sw in (slice(0, -ws[2]), slice(-ws[2], -s[2]), slice(-s[2], None)):
                region[sd, sh, sw] = cnt
                cnt += 1
    heads, e = attn.num_heads, c // attn.num_heads
    out = torch.zeros(b, dp, hp, wp, c, dtype=x.dtype)
    wq, wk, wv = attn.qkv.weight.split(c)
    table, index = attn.relative_position_bias_table, attn.relative_position_index
    for i in range(0, dp, ws[0]):
        for j in range(0, hp, ws[1]):
            for k in range(0, wp, ws[2]):
                sl = (slice(None), slice(i, i + ws[0]), slice(j, j + ws[1]), slice(k, k + ws[2]))
                q = (yp[sl].reshape(b, -1, c) @ wq.T).view(b, -1, heads, e).transpose(1, 2)
                kk = (xp[sl].reshape(b, -1, c) @ wk.T).view(b, -1, heads, e).transpose(1, 2)
                v = (xp[sl].reshape(b, -1, c) @ wv.T).view(b, -1, heads, e).transpose(1, 2)
                logits = q @ kk.transpose(-1, -2) * e ** -0.5 + table[index].permute(2, 0, 1)
                r = region[sl[1:]].reshape(-1)
                logits = logits + torch.where(r[:, None] != r[None, :], -100.0, 0.0).to(x.dtype)
                o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, *[t.stop - t.start for t in sl[1:]], c)
                out[sl] = o
    out = torch.roll(out, s, (1, 2, 3))[:, :d, :h, :w]
    return attn.proj(out)


# --- features, warp, loss, folding -----------------------------------------------------------------------
def test_ldm_unet_official_feature_shapes():
    unet = lm.LDMUNet(**lm.LDM_MORPH_CONFIGS["official"]["unet"])
    with torch.no_grad():
        feats = unet.encoder_features(torch.randn(1, 1, 32, 32), 1)
    assert unet.feature_indices() == [(0, 2), (3, 5), (6, 8), (9, 11)]
    chans = [feats[a].shape[1] + feats[b].shape[1] for a, b in unet.feature_indices()]
    assert [2 * c for c in chans] == [256, 384, 640, 896]
    assert [feats[a].shape[-1] for a, _ in unet.feature_indices()] == [32, 16, 8, 4]


class _LegacyAttention(nn.Module):
    """CompVis AttentionBlock + QKVAttentionLegacy, written out."""

    def __init__(self, ch, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(32, ch)
        self.qkv, self.proj_out = nn.Conv1d(ch, 3 * ch, 1), nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c = x.shape[:2]
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))
        t = qkv.shape[-1]
        q, k, v = qkv.reshape(b * self.heads, 3 * c // self.heads, t).split(c // self.heads, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c // self.heads))
        wgt = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(-1)
        a = torch.einsum("bts,bcs->bct", wgt, v).reshape(b, -1, t)
        return (x.reshape(b, c, -1) + self.proj_out(a)).reshape(x.shape)


def test_ldm_unet_attention_is_compvis_legacy():
    ref = _randomise(_LegacyAttention(64, 2)).double()
    ours = lm.AttentionBlock(64, 2, "auto").double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 64, 4, 4, dtype=torch.float64)
    assert rel_err(ours(x), ref(x)) < 1e-10


def test_ldm_schedule_and_q_sample_at_t1():
    sa, som = lm.ldm_schedule(0.0015, 0.0195, 1000)
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1 - betas)
    assert abs(sa[1].item() - np.float32(np.sqrt(ac[1]))) == 0
    assert abs(som[1].item() - np.float32(np.sqrt(1 - ac[1]))) == 0


def test_warp_identity_border_and_shift():
    img = torch.rand(1, 1, 6, 7, dtype=torch.float64)
    assert torch.allclose(lm.warp(img, torch.zeros(1, 2, 6, 7, dtype=torch.float64)), img, atol=1e-12)
    # one pixel along W = 2 / (W - 1) normalised units (align_corners=True); the last column hits the border
    flow = torch.zeros(1, 2, 6, 7, dtype=torch.float64)
    flow[:, 1] = 2 / 6
    out = lm.warp(img, flow)
    assert torch.allclose(out[..., :-1], img[..., 1:], atol=1e-12)
    assert torch.allclose(out[..., -1], img[..., -1], atol=1e-12)
    vol = torch.rand(1, 1, 4, 5, 6, dtype=torch.float64)
    assert torch.allclose(lm.warp(vol, torch.zeros(1, 3, 4, 5, 6, dtype=torch.float64)), vol, atol=1e-12)


def _vxm_jacobian(disp):  # utils.jacobian_determinant_vxm for a (2, H, W) numpy field in pixels
    disp = disp.transpose(1, 2, 0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in disp.shape[:-1]], indexing="ij"), -1)
    J = np.gradient(disp + grid)
    return J[0][..., 0] * J[1][..., 1] - J[1][..., 0] * J[0][..., 1]


def test_folding_percent():
    assert lm.folding_percent(torch.zeros(1, 2, 16, 16)) == 0.0
    assert lm.folding_percent(torch.zeros(1, 3, 6, 6, 6)) == 0.0
    # u = -2x along H in pixels: d(x + u)/dx = -1 everywhere -> every pixel folds
    h = 16
    flow = torch.zeros(1, 2, h, h, dtype=torch.float64)
    flow[:, 0] = (-2 * torch.arange(h, dtype=torch.float64) / (h / 2))[:, None]
    assert lm.folding_percent(flow) == 100.0
    g = torch.Generator().manual_seed(0)
    flow = torch.randn(1, 2, 12, 12, generator=g, dtype=torch.float64) * 0.2
    disp = (flow[0] * 6).numpy()
    want = _vxm_jacobian(disp)
    assert np.allclose(lm.jacobian_determinant(flow)[0].numpy(), want, atol=1e-12)
    assert lm.folding_percent(flow) == pytest.approx(100 * np.mean(want <= 0))


def test_smoothness_is_official_smoothloss():
    f = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    dx = (f[:, :, 1:, :] - f[:, :, :-1, :]).abs() / 2 * 5
    dz = (f[:, :, :, 1:] - f[:, :, :, :-1]).abs() / 2 * 6
    assert torch.allclose(lm.smoothness(f), ((dx * dx).mean() + (dz * dz).mean()) / 2)


@pytest.fixture(scope="module")
def tiny_reg():
    torch.manual_seed(0)
    return lm.LDMMorphRegistration("tiny")


def test_latent_term_gradient_official_and_differentiable(tiny_reg):
    mov, fix, _ = lm.synthetic_pair(32, 2, seed=1)
    tiny_reg.model.eval()  # no DropPath draws: the two calls see one network
    params = [p for p in tiny_reg.model.parameters()]
    official = tiny_reg.loss(mov, fix, generator=torch.Generator().manual_seed(0))
    assert not official["latent"].requires_grad  # no_grad + detach: no gradient at all
    assert official["pixel"].requires_grad
    diff = tiny_reg.loss(mov, fix, generator=torch.Generator().manual_seed(0), latent_grad=True)
    assert rel_err(diff["latent"], official["latent"]) < 1e-5
    grads = torch.autograd.grad(diff["latent"], params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for p in tiny_reg.ldm.parameters())


def test_training_step_lowers_loss(tiny_reg):
    reg = tiny_reg
    mov, fix, _ = lm.synthetic_pair(32, 2, seed=2, amplitude=0.1)
    state = {k: v.clone() for k, v in reg.model.state_dict().items()}
    opt = torch.optim.Adam(reg.model.parameters(), lr=1e-3)
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reg.model.train()
    torch.manual_seed(0)  # the DropPath draws
    losses = []
    for _ in range(4):
        out = reg.loss(mov, fix, noise=noise)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    reg.model.load_state_dict(state)
    assert losses[-1] < losses[0]


def test_full_pipeline_3d_tiny():
    torch.manual_seed(0)
    reg = lm.LDMMorphRegistration("tiny3d")
    mov, fix, _ = lm.synthetic_pair(32, 3, seed=0)
    out = reg.loss(mov, fix, generator=torch.Generator().manual_seed(0))
    assert out["flow"].shape == (1, 3, 32, 32, 32) and out["fixed_latent"].shape == (1, 1, 8, 8, 8)
    assert all(torch.isfinite(out[k]) for k in ("loss", "pixel", "latent", "smooth"))
    out["loss"].backward()
    assert reg.model.reg_head[0].weight.grad is not None


def test_bad_inputs_name_the_argument():
    net = lm.LDMMorph.from_config("tiny")
    scores = _scores(TINY["channels"], 32)
    with pytest.raises(ValueError, match="multiples of 8 \\* patch_size = 32"):
        net(torch.rand(1, 1, 48, 48), torch.rand(1, 1, 48, 48), *scores)
    with pytest.raises(ValueError, match="score2 must be"):
        net(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32), scores[0], scores[0], scores[2], scores[3])
    with pytest.raises(ValueError, match="fixed must have the shape"):
        net(torch.rand(1, 1, 32, 32), torch.rand(2, 1, 32, 32), *scores)
    with pytest.raises(ValueError, match="flow must be"):
        lm.warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="config must be one of"):
        lm.LDMMorphRegistration("huge")


def test_load_ldm_state_dict_from_a_latent_diffusion_checkpoint():
    torch.manual_seed(0)
    cfg = lm.LDM_MORPH_CONFIGS["tiny"]
    src = lm.LDMFeatureExtractor(cfg["unet"], cfg["vq"], cfg["schedule"])
    ckpt = {f"model.diffusion_model.{k}": v for k, v in src.unet.state_dict().items()}
    ckpt.update({f"model_ema.diffusion_model{k.replace('.', '')}": v + 1 for k, v in src.unet.state_dict().items()})
    ckpt.update({f"first_stage_model.{k}": v for k, v in src.first_stage.state_dict().items()})
    ckpt["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # parts LDM-Morph does not use
    ckpt["betas"] = torch.zeros(1000)
    dst = lm.LDMFeatureExtractor(cfg["unet"], cfg["vq"], cfg["schedule"])
    lm.load_ldm_state_dict(dst, {"state_dict": ckpt})
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    lm.load_ldm_state_dict(dst, ckpt, ema=True)
    k = "input_blocks.0.0.weight"
    assert torch.equal(dst.unet.state_dict()[k], src.unet.state_dict()[k] + 1)
    reg = lm.LDMMorphRegistration("tiny").set_backend("reference")
    assert all(m.backend == "reference" for m in reg.modules() if hasattr(m, "backend"))

# --- the CompVis UNet and the taming encoder, plain ------------------------------------------------------
class _PlainRes(nn.Module):
    def __init__(self, ch, emb, out):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, out))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out else nn.Conv2d(ch, out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class _PlainSeq(nn.Sequential):
    def forward(self, x, emb):
        for m in self:
            x = m(x, emb) if isinstance(m, _PlainRes) else m(x)
        return x


class _PlainUp(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _PlainDown(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class _PlainUNet(nn.Module):
    """openaimodel.UNetModel (unconditional, legacy attention, num_head_channels), plain."""

    def __init__(self, mc, mult, r, attn_res, head_ch):
        super().__init__()
        self.mc, emb = mc, 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([_PlainSeq(nn.Conv2d(1, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for lvl, m in enumerate(mult):
            for _ in range(r):
                layers = [_PlainRes(ch, emb, m * mc)]
                ch = m * mc
                if ds in attn_res:
                    layers.append(_LegacyAttention(ch, ch // head_ch))
                self.input_blocks.append(_PlainSeq(*layers))
                chans.append(ch)
            if lvl != len(mult) - 1:
                self.input_blocks.append(_PlainSeq(_PlainDown(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = _PlainSeq(_PlainRes(ch, emb, ch), _LegacyAttention(ch, ch // head_ch),
                                      _PlainRes(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for lvl, m in list(enumerate(mult))[::-1]:
            for i in range(r + 1):
                layers = [_PlainRes(ch + chans.pop(), emb, mc * m)]
                ch = mc * m
                if ds in attn_res:
                    layers.append(_LegacyAttention(ch, ch // head_ch))
                if lvl and i == r:
                    layers.append(_PlainUp(ch))
                    ds //= 2
                self.output_blocks.append(_PlainSeq(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, 1, 3, padding=1))

    def forward(self, x, t):
        half = self.mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], -1).to(x.dtype))
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        feats = list(hs)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], 1), emb)
        return self.out(h), feats


def test_ldm_unet_matches_plain_compvis_unet():
    c = lm.LDM_MORPH_CONFIGS["tiny"]["unet"]
    ref = _randomise(_PlainUNet(c["model_channels"], c["channel_mult"], c["num_res_blocks"],
                                c["attention_resolutions"], c["num_head_channels"])).double().eval()
    ours = lm.LDMUNet(**c).double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 1])
    want, want_feats = ref(x, t)
    assert rel_err(ours(x, t), want) < 1e-10
    feats = ours.encoder_features(x, 1)
    assert len(feats) == len(want_feats) == 12
    for a, b in zip(feats, want_feats):
        assert rel_err(a, b) < 1e-10


class _PlainEncRes(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(32, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _PlainEncAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, c, h * w) for m in (self.q, self.k, self.v))
        wgt = (torch.bmm(q.permute(0, 2, 1), k) * c ** -0.5).softmax(2)
        return x + self.proj_out(torch.bmm(v, wgt.permute(0, 2, 1)).reshape(b, c, h, w))


def test_vq_encoder_matches_plain_taming_encoder():
    c = lm.LDM_MORPH_CONFIGS["tiny"]["vq"]
    ref = nn.Module()
    enc = ref.encoder = nn.Module()
    enc.conv_in = nn.Conv2d(1, c["ch"], 3, padding=1)
    enc.down, cur, cin = nn.ModuleList(), c["resolution"], c["ch"]
    for i, m in enumerate(c["ch_mult"]):
        level = nn.Module()
        level.block, level.attn = nn.ModuleList(), nn.ModuleList()
        for _ in range(c["num_res_blocks"]):
            level.block.append(_PlainEncRes(cin, c["ch"] * m))
            cin = c["ch"] * m
            if cur in c["attn_resolutions"]:
                level.attn.append(_PlainEncAttn(cin))
        if i != len(c["ch_mult"]) - 1:
            level.downsample = nn.Module()
            level.downsample.conv = nn.Conv2d(cin, cin, 3, stride=2)
            cur //= 2
        enc.down.append(level)
    enc.mid = nn.Module()
    enc.mid.block_1, enc.mid.attn_1 = _PlainEncRes(cin, cin), _PlainEncAttn(cin)
    enc.mid.block_2 = _PlainEncRes(cin, cin)
    enc.norm_out, enc.conv_out = nn.GroupNorm(32, cin, eps=1e-6), nn.Conv2d(cin, 1, 3, padding=1)
    ref.quant_conv = nn.Conv2d(1, 1, 1)
    _randomise(ref).double()

    def plain(x):
        h = enc.conv_in(x)
        for level in enc.down:
            for j, blk in enumerate(level.block):
                h = blk(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        h = enc.mid.block_2(enc.mid.attn_1(enc.mid.block_1(h)))
        return ref.quant_conv(enc.conv_out(F.silu(enc.norm_out(h))))

    ours = lm.VQEncoder(**c).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    got = ours(x)
    assert got.shape == (2, 1, 8, 8)
    assert rel_err(got, plain(x)) < 1e-10
