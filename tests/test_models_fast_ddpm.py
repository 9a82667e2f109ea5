"""Models II: the Fast-DDPM UNet (``medkernels.models.fast_ddpm``).

Oracle: ``OfficialModel`` below, a plain-PyTorch re-creation of mirthAI/Fast-DDPM
``models/diffusion.py`` (``ResnetBlock``, ``AttnBlock``, ``Downsample``, ``Upsample``, ``Model``)
in stock ``nn`` layers (``nn.GroupNorm``, ``x * sigmoid(x)``, the bmm attention), built from a
config namespace as the official constructor reads it. One deviation, for the float64 runs only:
the official embedding is always float32 (so the official model cannot run in float64); here it
follows the parameters' dtype when they are float64, as ours does.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medkernels._extension import extension
from medkernels.diffusion import FastDDPMSampler, FastDDPMSchedule, diffusion_loss, q_sample
from medkernels.models import (
    FAST_DDPM_CONFIGS,
    FastDDPMUNet,
    load_fast_ddpm_checkpoint,
    sg_input,
    sr_condition,
    sr_input,
)
from medkernels.models.fast_ddpm import timestep_embedding
from medkernels.nn import GroupNormAct
from medkernels.testing import rel_err

_CPU_MISSING = extension.missing_reason("group_norm_fwd_cpu", "the C++ CPU kernels")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tiny networks run hundreds of small ops; on a shared 2-core machine every parallel
    region waits for a descheduled thread (this file: 21 s with one thread, 124 s with two at load
    5-6, same tests, same results). One thread here, restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- the official modules, re-created in plain PyTorch -----------------------------------------
def official_embedding(timesteps, dim, dtype=torch.float32):
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -scale).to(timesteps.device)
    args = timesteps.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 == 1 else emb


def swish(x):
    return x * torch.sigmoid(x)


def official_norm(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class OfficialUpsample(nn.Module):
    def __init__(self, c, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class OfficialDownsample(nn.Module):
    def __init__(self, c, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class OfficialResnetBlock(nn.Module):
    def __init__(self, *, in_channels, out_channels, dropout, temb_channels):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = official_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = official_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class OfficialAttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = official_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1, 1, 0) for _ in range(4))

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        w_ = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) * (int(c) ** (-0.5))
        w_ = torch.softmax(w_, dim=2)
        h_ = torch.bmm(v.reshape(b, c, h * w), w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class OfficialModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        m = config.model
        ch, ch_mult, nrb = m.ch, tuple(m.ch_mult), m.num_res_blocks
        self.ch, self.temb_ch, self.num_resolutions, self.num_res_blocks = ch, ch * 4, len(ch_mult), nrb
        self.resolution = config.data.image_size
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(m.in_channels, ch, 3, 1, 1)

        def res(i, o):
            return OfficialResnetBlock(in_channels=i, out_channels=o, dropout=m.dropout, temb_channels=self.temb_ch)

        curr_res, in_ch_mult = self.resolution, (1,) + ch_mult
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(nrb):
                block.append(res(block_in, block_out))
                block_in = block_out
                if curr_res in m.attn_resolutions:
                    attn.append(OfficialAttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = OfficialDownsample(block_in, m.resamp_with_conv)
                curr_res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = res(block_in, block_in)
        self.mid.attn_1 = OfficialAttnBlock(block_in)
        self.mid.block_2 = res(block_in, block_in)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = skip_in = ch * ch_mult[i_level]
            for i_block in range(nrb + 1):
                if i_block == nrb:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(res(block_in + skip_in, block_out))
                block_in = block_out
                if curr_res in m.attn_resolutions:
                    attn.append(OfficialAttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = OfficialUpsample(block_in, m.resamp_with_conv)
                curr_res *= 2
            self.up.insert(0, up)
        self.norm_out = official_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, m.out_ch, 3, 1, 1)

    def forward(self, x, t):
        assert x.shape[2] == x.shape[3] == self.resolution
        wdtype = self.temb.dense[0].weight.dtype
        temb = official_embedding(t, self.ch, torch.float64 if wdtype == torch.float64 else torch.float32)
        temb = self.temb.dense[1](swish(self.temb.dense[0](temb)))
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1], temb)
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


# --- helpers ---------------------------------------------------------------------------------
# "tiny" (two levels, attention at the second), a deeper one (two blocks per level, attention at
# the middle level only, a level whose width does not change: no nin_shortcut on the way down) and
# tiny without the resampling convs
CONFIGS = {
    "tiny": FAST_DDPM_CONFIGS["tiny"],
    "deep": dict(FAST_DDPM_CONFIGS["tiny"], ch_mult=(1, 1, 2), num_res_blocks=2, attn_resolutions=(4,)),
    "noconv": dict(FAST_DDPM_CONFIGS["tiny"], resamp_with_conv=False),  # average pooling, plain nearest
}


def official_config(cfg: dict) -> SimpleNamespace:
    model = SimpleNamespace(type="sg", **{k: v for k, v in cfg.items() if k != "image_size"})
    return SimpleNamespace(model=model, data=SimpleNamespace(image_size=cfg["image_size"]))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere (the default init leaves every GroupNorm at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(p[0].numel(), 1)))
    return model


def pair(config="tiny", backend="auto", seed=0):
    cfg = CONFIGS[config]
    ref = randomise(OfficialModel(official_config(cfg)), seed)
    ours = FastDDPMUNet(**cfg, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def inputs(cfg: dict, batch=2, dtype=torch.float32, seed=1, spatial_dims=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], *(cfg["image_size"],) * spatial_dims, generator=g, dtype=dtype)
    t = torch.tensor([0.0, 999.0, 37.0, 512.0][:batch])
    return x, t


# --- (a) equal to the official modules -------------------------------------------------------
@pytest.mark.parametrize("config", list(CONFIGS))
def test_keys_and_shapes_equal_official(config):
    ours, ref = pair(config)
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert got == want
    assert list(ours.state_dict()) == list(ref.state_dict())  # the same order too
    norms = [m for m in ours.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(isinstance(m, GroupNormAct) and m.num_groups == 32 and m.eps == 1e-6 for m in norms)


def test_timestep_embedding_is_official_bit_for_bit():
    t = torch.tensor([0.0, 1.0, 17.0, 999.0, 250.5])
    for dim in (32, 33, 128):
        assert torch.equal(timestep_embedding(t, dim), official_embedding(t, dim))
    assert timestep_embedding(t.long(), 32).dtype == torch.float32


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_equals_official_fp32(config):
    """Eval and train mode (dropout 0), float32: within fp32 tolerance."""
    ours, ref = pair(config)
    x, t = inputs(CONFIGS[config])
    for mode in (False, True):
        ours.train(mode)
        ref.train(mode)
        with torch.no_grad():
            got, want = ours(x, t), ref(x, t)
        assert got.shape == want.shape == (2, 1, 8, 8)
        assert rel_err(got, want) < 2e-5, (mode, rel_err(got, want))


def grads_close(got: dict, want: dict, rtol: float):
    """The names whose gradient differs by more than rtol * max|want| + rtol * (the largest
    gradient of the model): a floor for the gradients that are zero in exact arithmetic (a bias
    right before a GroupNorm with one channel per group, as at 32 channels)."""
    scale = max(g.abs().max().item() for g in want.values())
    return [k for k, g in got.items() if (g - want[k]).abs().max() > rtol * (want[k].abs().max() + scale)]


@pytest.mark.parametrize("config", ["tiny"])
def test_forward_and_grads_equal_official_fp64(config):
    """float64 (our embedding follows the parameters' dtype; see the module docstring): output and
    every parameter's gradient, in train mode."""
    ours, ref = pair(config)
    ours.double().train()
    ref.double().train()
    x, t = inputs(CONFIGS[config], dtype=torch.float64)
    got, want = ours(x, t), ref(x, t)
    assert rel_err(got, want) < 1e-10
    g = torch.randn_like(want)
    got.backward(g)
    want.backward(g)
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    assert not grads_close({k: p.grad for k, p in ours.named_parameters()}, ref_grads, 1e-10)


def test_16_bit_parameters_run_without_autocast():
    ours, _ = pair("tiny")
    x, t = inputs(CONFIGS["tiny"])
    want = ours(x, t).detach()
    got = ours.to(torch.bfloat16)(x.bfloat16(), t)
    assert got.dtype == torch.bfloat16 and rel_err(got, want) < 5e-2


# --- (b) the official configs ----------------------------------------------------------------
@pytest.mark.parametrize("name,count", [("ldfd_linear", 113_669_761), ("brats_linear", 113_669_761),
                                        ("pmub_linear", 113_670_913)])
def test_official_config_parameter_counts(name, count):
    with torch.device("meta"):
        model = FastDDPMUNet.from_config(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.conditioning == ("sr" if name == "pmub_linear" else "sg")
    assert model.in_channels == (3 if name == "pmub_linear" else 2) and model.resolution == 256
    # attention at resolution 16: level 4 (512 channels), 2 blocks down, 3 up, plus the middle
    assert [len(level.attn) for level in model.down] == [0, 0, 0, 0, 2, 0]
    assert [len(level.attn) for level in model.up] == [0, 0, 0, 0, 3, 0]
    assert model.down[4].attn[0].q.in_channels == 512
    with torch.device("meta"):
        official = OfficialModel(official_config(FAST_DDPM_CONFIGS[name]))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}


# --- (c) checkpoints -------------------------------------------------------------------------
def official_checkpoint(ref: nn.Module, shadow_seed: int = 7, with_ema: bool = True):
    """The list the official trainer saves: DataParallel's state dict ("module." keys), the
    optimizer's, epoch, step, and the EMA shadow (bare keys, parameters only)."""
    opt = torch.optim.Adam(ref.parameters(), lr=0.0)
    for p in ref.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # the optimizer state the official list holds (lr 0: the weights stay)
    shadow_model = randomise(OfficialModel(official_config(CONFIGS["tiny"])), shadow_seed)
    states = [{"module." + k: v for k, v in ref.state_dict().items()}, opt.state_dict(), 3, 1234]
    if with_ema:
        states.append({k: p.detach().clone() for k, p in shadow_model.named_parameters()})
    return states, shadow_model


def _same_weights(model, other):
    theirs = other.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_official_checkpoint_list_loads_raw_and_ema(tmp_path):
    _, ref = pair("tiny")
    states, shadow_model = official_checkpoint(ref)
    path = tmp_path / "ckpt.pth"
    torch.save(states, path)
    for ckpt in (states, path, str(path)):
        model = FastDDPMUNet.from_config("tiny")
        load_fast_ddpm_checkpoint(model, ckpt)  # ema=True: what the official sampler uses
        assert _same_weights(model, shadow_model)
        load_fast_ddpm_checkpoint(model, ckpt, ema=False)
        assert _same_weights(model, ref)


def test_plain_state_dicts_load():
    _, ref = pair("tiny")
    sd = ref.state_dict()
    for ckpt in (sd, {"module." + k: v for k, v in sd.items()}):
        model = FastDDPMUNet.from_config("tiny")
        load_fast_ddpm_checkpoint(model, ckpt)
        assert _same_weights(model, ref)


def test_bad_checkpoints_give_clear_errors():
    _, ref = pair("tiny")
    states, _ = official_checkpoint(ref, with_ema=False)
    model = FastDDPMUNet.from_config("tiny")
    with pytest.raises(ValueError, match="no EMA shadow.*ema=False"):
        load_fast_ddpm_checkpoint(model, states)
    load_fast_ddpm_checkpoint(model, states, ema=False)
    assert _same_weights(model, ref)
    with pytest.raises(ValueError, match="official list"):
        load_fast_ddpm_checkpoint(model, states[:3])
    with pytest.raises(ValueError, match="official list"):
        load_fast_ddpm_checkpoint(model, [states[1], states[0], 3, 4])
    with pytest.raises(ValueError, match="EMA shadow"):
        load_fast_ddpm_checkpoint(model, states + [[1, 2]])
    with pytest.raises(ValueError, match="state dict"):
        load_fast_ddpm_checkpoint(model, 42)
    with pytest.raises(ValueError, match=r"non-tensor entries \('state_dict': dict\)"):
        load_fast_ddpm_checkpoint(model, {"state_dict": dict(ref.state_dict())})
    with pytest.raises(ValueError, match="bayesian"):
        load_fast_ddpm_checkpoint(model, dict(ref.state_dict(), logvar=torch.zeros(1000)))
    with pytest.raises(RuntimeError, match="size mismatch"):  # another config's weights: load_state_dict's error
        load_fast_ddpm_checkpoint(model, FastDDPMUNet.from_config("tiny", ch=64).state_dict())


# --- (d) backends ----------------------------------------------------------------------------
def test_backends_equal_auto():
    """Forward and every gradient with every fused op on "reference" (and "cpu" when built)
    equal the auto run."""
    ours, _ = pair("tiny")
    ours.train()
    x, t = inputs(CONFIGS["tiny"])
    results = {}
    for b in ["auto", "reference"] + ([] if _CPU_MISSING else ["cpu"]):
        ours.set_backend(b)
        assert ours.backend == b and all(m.backend == b for m in ours.modules() if isinstance(m, GroupNormAct))
        ours.zero_grad()
        y = ours(x, t)
        y.square().sum().backward()
        results[b] = (y.detach(), {k: p.grad.clone() for k, p in ours.named_parameters()})
    y0, g0 = results.pop("auto")
    for b, (y1, g1) in results.items():
        assert rel_err(y1, y0) < 2e-5, b
        assert not grads_close(g1, g0, 2e-5), b
    assert all(m.backend == "reference" for m in FastDDPMUNet.from_config("tiny", backend="reference").modules()
               if isinstance(m, GroupNormAct))


# --- (e) 3D and training ---------------------------------------------------------------------
TINY_3D = dict(spatial_dims=3)


def test_3d_forward_shape_and_finite():
    model = randomise(FastDDPMUNet.from_config("tiny", **TINY_3D))
    assert isinstance(model.conv_in, nn.Conv3d) and isinstance(model.down[0].downsample.conv, nn.Conv3d)
    assert [len(level.attn) for level in model.down] == [0, 1] and len(model.up[1].attn) == 2
    x, t = inputs(dict(in_channels=2, image_size=8), spatial_dims=3)
    y = model(x, t)
    assert y.shape == (2, 1, 8, 8, 8) and torch.isfinite(y).all()
    # the downsample pads the far side of every axis: a 3x3x3 stride-2 conv on the padded input
    down = model.down[0].downsample
    h = torch.randn(1, 32, 8, 8, 8)
    want = F.conv3d(F.pad(h, (0, 1, 0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    assert torch.equal(down(h), want) and want.shape[2:] == (4, 4, 4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_training_steps_lower_the_fused_loss(spatial_dims):
    """A few Adam steps on one batch lower ``diffusion_loss`` at the same (t, seed)."""
    torch.manual_seed(0)
    over = TINY_3D if spatial_dims == 3 else {}
    model = FastDDPMUNet.from_config("tiny", **over)
    size = model.resolution
    sched = FastDDPMSchedule("uniform", steps=10)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 1, *(size,) * spatial_dims, generator=g)
    cond = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    t = torch.tensor([99, 899])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_at(seed):
        x_t = q_sample(x0, t, schedule=sched, seed=seed)
        return diffusion_loss(model(sg_input(cond, x_t), t.float()), x0, t, seed, schedule=sched)

    with torch.no_grad():
        before = loss_at(5).item()
    for _ in range(6):
        opt.zero_grad()
        loss = loss_at(5)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(5).item()
    assert math.isfinite(before) and after < 0.9 * before, (before, after)


# --- (f) sampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_sampler_runs_the_2d_model(kind):
    model = randomise(FastDDPMUNet.from_config("tiny")).eval()
    sched = FastDDPMSchedule("non-uniform", steps=4)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 1, 8, 8, generator=g)
    x_T = torch.randn(2, 1, 8, 8, generator=g)
    out = FastDDPMSampler(model, sched, kind=kind, progress=False)(x_T, cond, seed=1)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_sr_conditioning_order_reaches_the_model():
    """For type sr the sampler's cat([cond, x_t]) with cond = sr_condition(x_bw, x_fw) is the
    official cat([x_bw, x_fw, x_t])."""
    model = randomise(FastDDPMUNet.from_config("tiny", in_channels=3)).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x_bw, x_fw, x_T = (torch.full((1, 1, 8, 8), v) for v in (1.0, 2.0, 3.0))
    FastDDPMSampler(model, FastDDPMSchedule("uniform", steps=2), progress=False)(
        x_T, sr_condition(x_bw, x_fw), seed=0)
    assert torch.equal(seen[0], sr_input(x_bw, x_fw, x_T))
    assert torch.equal(sr_input(x_bw, x_fw, x_T)[:, :, 0, 0], torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(sg_input(x_bw, x_T)[:, :, 0, 0], torch.tensor([[1.0, 3.0]]))


# --- errors ----------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors():
    model = FastDDPMUNet.from_config("tiny")
    t = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"x must be \(B, 2, 8x8\).*got shape \(2, 2, 8, 6\)"):
        model(torch.randn(2, 2, 8, 6), t)
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 16, 16\)"):
        model(torch.randn(2, 2, 16, 16), t)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match=r"t must be .*\(2,\)"):
        model(torch.randn(2, 2, 8, 8), torch.ones(3))
    assert model(torch.randn(2, 2, 8, 8), 5).shape == (2, 1, 8, 8)  # a number is broadcast
    with pytest.raises(ValueError, match="t is on meta but x is on cpu"):
        model(torch.randn(2, 2, 8, 8), torch.ones(2, device="meta"))
    assert model.conditioning == "sg" and FastDDPMUNet(**CONFIGS["tiny"]).conditioning is None
    model3 = FastDDPMUNet.from_config("tiny", **TINY_3D)
    with pytest.raises(ValueError, match=r"x must be \(B, 2, 8x8x8\)"):
        model3(torch.randn(1, 2, 8, 8, 4), torch.ones(1))
    with pytest.raises(ValueError, match=r"x must be \(B, 2, 8x8x8\)"):
        model3(torch.randn(1, 2, 8, 8), torch.ones(1))
    with pytest.raises(ValueError, match="multiple of 32"):
        FastDDPMUNet.from_config("tiny", ch=48)
    with pytest.raises(ValueError, match="spatial_dims"):
        FastDDPMUNet.from_config("tiny", spatial_dims=1)
    with pytest.raises(ValueError, match="image_size must be divisible"):
        FastDDPMUNet.from_config("tiny", image_size=15)
    with pytest.raises(ValueError, match="name must be one of"):
        FastDDPMUNet.from_config("ldfd")
    with pytest.raises(ValueError, match="x_bw must be"):
        sr_input(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8), torch.randn(1, 1, 16, 16))
