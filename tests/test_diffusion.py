"""Few-step diffusion (Fast-DDPM): schedules, the Philox noise contract, the fused steps and the
training loss against the float64 formulas of medkernels.reference.diffusion."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import emulate
import pytest
import torch

import medkernels  # noqa: F401  (sets the Triton interpreter before kernels load)
from medkernels import _environment
from medkernels.diffusion import (
    FastDDPMSchedule,
    ddim_step,
    ddpm_step,
    diffusion_loss,
    q_sample,
    randn,
)
from medkernels.ops import _kit
from medkernels.ops import diffusion as dops
from medkernels.ops.diffusion import _DISPATCH, philox_bits
from medkernels.reference import diffusion as ref
from medkernels.testing import assert_close

SCHED = FastDDPMSchedule()
TABLE = SCHED.alpha_table()
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(2, 1, 9, 7), (1, 2, 3, 5, 7), (3, 1, 4, 4, 4)]


def _backends(op="ddim_step"):
    out = []
    for name in ("triton", "cpu", "reference"):
        b = _DISPATCH[op]._by_name[name]
        why = b.not_supported_reasons(torch.device("cpu"), torch.float32)
        out.append(pytest.param(name, marks=pytest.mark.skip(reason="; ".join(why))) if why else name)
    return out


def _sid(shape):
    return "x".join(map(str, shape))


def _timesteps_for(B, gen):
    t = torch.tensor([999, 0, 499, 99, 1][:B] + [0] * max(0, B - 5), dtype=torch.int64)
    t_next = torch.tensor([899, -1, 399, -1, 0][:B] + [-1] * max(0, B - 5), dtype=torch.int64)
    return t, t_next


# --- schedules ---------------------------------------------------------------------------------
def test_uniform_schedule_matches_official_list():
    # runners/diffusion.py: arange(-1, T, T // S) with the first set to 0 (11 indices for S = 10)
    assert FastDDPMSchedule("uniform", 10).timesteps.tolist() == [0] + list(range(99, 1000, 100))
    assert FastDDPMSchedule("uniform", 7).timesteps.tolist() == [0, 141, 283, 425, 567, 709, 851, 993]
    assert FastDDPMSchedule("uniform", 5).timesteps.tolist() == [0, 199, 399, 599, 799, 999]


def test_non_uniform_schedule_matches_official_list():
    assert FastDDPMSchedule("non-uniform", 10).timesteps.tolist() == [0, 199, 399, 599, 699, 799, 849, 899, 949, 999]
    assert FastDDPMSchedule("non-uniform", 5).timesteps.tolist() == [0, 350, 699, 849, 999]
    assert FastDDPMSchedule("non-uniform", 20).timesteps.tolist() == [
        0, 88, 175, 263, 350, 437, 525, 612, 699, 727, 754, 781, 809, 836, 863, 890, 918, 945, 972, 999]


def test_betas_and_alphas_cumprod():
    s = FastDDPMSchedule()
    assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert s.betas[0].item() == 1e-4 and s.betas[-1].item() == 0.02
    assert torch.equal(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    table = s.alpha_table()
    assert table[0].item() == 1.0 and torch.equal(table[1:], s.alphas_cumprod)
    c = FastDDPMSchedule(beta_schedule="cosine")
    assert 0 < c.betas.min() and c.betas.max() <= 0.999 and c.alphas_cumprod[-1] < 1e-6


def test_antithetic_timesteps():
    s = FastDDPMSchedule("non-uniform", 10)
    g = torch.Generator().manual_seed(0)
    n = 8
    t = s.sample_timesteps(n, generator=g)
    ts = s.timesteps.tolist()
    half = n // 2 + 1
    for i in range(n - half):
        assert ts.index(int(t[i])) + ts.index(int(t[half + i])) == len(ts) - 1
    assert t.dtype == torch.int64 and t.shape == (n,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=1001), "must be <= num_train_timesteps"),
    (dict(steps=0), "positive int"),
    (dict(kind="linear"), "kind must be one of"),
    (dict(beta_schedule="quad"), "beta_schedule must be one of"),
])
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastDDPMSchedule(**kwargs)


# --- Philox noise contract -----------------------------------------------------------------------
def test_philox_known_answers():
    # Random123 known-answer vectors for philox4x32-10
    kat = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, want in kat:
        got = ref.philox4x32_ref(tuple(torch.tensor([c]) for c in ctr), key)
        assert [int(w) for w in got] == list(want)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 1), (2**40 + 3, 2**33 + 7), (2**63 - 1, 5)],
                         ids=["s0-o0", "s1-o1", "big", "max-seed"])
def test_philox_bits_exact_across_backends(backend, seed, offset):
    shape = (3, 2, 7, 5)  # N = 70 per sample: a partial last group
    want = ref.philox_bits_ref(shape, seed, offset)
    got = philox_bits(shape, seed, offset, backend=backend)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", _backends())
def test_normal_same_on_every_backend_and_dtype(backend):
    shape = (2, 3, 5, 7)
    want = ref.normal_ref(shape, 123, 4)
    x = torch.empty(shape)
    got = randn(x, 123, 4, backend=backend)
    assert (got - want).abs().max().item() <= 2e-6  # last-ulp log/cos/sin differences only
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        z = randn(x.to(dt), 123, 4, backend=backend)
        assert z.dtype == dt
        assert (z.double() - got.to(dt).double()).abs().max().item() <= (0 if dt != torch.float64 else 2e-6) + (
            1e-2 if dt != torch.float64 else 0)


def test_scalar_normal_path_of_the_cuda_kernel():
    # detail::philox_normal4 (MK_HD, what the CUDA kernel runs) on the host, against the reference
    from medkernels._extension import extension

    if not extension.has("philox_normal_fill_cpu"):
        pytest.skip("medkernels._C without philox_normal_fill_cpu")
    shape = (3, 2, 5, 8)
    groups = 2 * 5 * 8 // 4
    out = torch.empty((3, groups, 4), dtype=torch.float32)
    extension.module.philox_normal_fill_cpu(77, 2**35 + 1, 3, groups, out.data_ptr())
    assert (out.reshape(shape) - ref.normal_ref(shape, 77, 2**35 + 1)).abs().max().item() <= 2e-6


# --- the CUDA kernel's code on the host: tests/diffusion_emulate.cpp ----------------------------
_OP_CODE = {"q_sample": 0, "ddim": 1, "ddpm": 2, "loss": 3, "normal": 4}  # DiffusionOp, medkernels/diffusion.h
_CUDA_BLOCK = 1024  # elements per CUDA block (and loss partial), as the op launches it


@pytest.fixture(scope="module")
def diffusion_emulator(tmp_path_factory):
    return emulate.build("diffusion", tmp_path_factory)


def _emulate_cuda(exe, d, op, x, seed, offset, *, eps=None, t=None, t_next=None, eta=0.0, clip=None, scale=0.0,
                  return_x0=False):
    """One launch of the CUDA kernel run thread by thread on the host: (out, x0 or None, partial
    sums of the loss or None)."""
    B, n = x.shape[0], x.numel() // x.shape[0]
    for name, v in (("x", x), ("eps", eps), ("table", TABLE if t is not None else None), ("t", t),
                    ("t_next", t_next)):
        if v is not None:
            emulate.write(d / f"{name}.bin", v.contiguous())
    emulate.run(exe, d, [emulate.DTYPE_CODE[x.dtype], _OP_CODE[op], B, n, TABLE.numel() - 1, seed, offset, float(eta),
                         float(clip or 0.0), clip is not None, float(scale), _CUDA_BLOCK, False, t_next is not None,
                         return_x0])
    out = emulate.read(d / "out.bin", x.dtype, x.shape)
    x0 = emulate.read(d / "x0.bin", x.dtype, x.shape) if return_x0 else None
    partial = emulate.read(d / "partial.bin", torch.float64, (B, -(-n // _CUDA_BLOCK))) if op == "loss" else None
    return out, x0, partial


@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=lambda d: str(d).replace("torch.", ""))
def test_cuda_kernel_emulated_on_host(diffusion_emulator, tmp_path, dtype):
    # the CUDA kernel's per-thread code (detail::diffusion_thread) and block reduction, run on the host
    exe = diffusion_emulator
    shape = (3, 1, 7, 9, 21)  # 1323 per sample: two blocks, a partial last group
    g = torch.Generator().manual_seed(12)
    x, e, _ = _inputs(shape, dtype, g)
    t, tn = torch.tensor([999, 0, 399]), torch.tensor([599, -1, 398])
    z = ref.normal_ref(shape, 21, 6)

    def check(name, got, want, low):
        # float64 state still draws the contract's fp32 normals: judge it at fp32 tolerance
        if dtype == torch.float64:
            assert_close(name, got, want, dtype=torch.float32)
        else:
            assert_close(name, got, want, low.to(dtype), dtype)

    got, _, _ = _emulate_cuda(exe, tmp_path, "q_sample", x, 21, 6, t=t)
    check("q_sample", got, ref.q_sample_ref(x, t, TABLE, z), ref.q_sample_ref(x.float(), t, TABLE, z, upcast=False))
    got, x0, _ = _emulate_cuda(exe, tmp_path, "ddim", x, 21, 6, eps=e, t=t, t_next=tn, eta=0.8, return_x0=True)
    want, want0 = ref.ddim_step_ref(x, e, t, tn, TABLE, 0.8, z)
    low, low0 = ref.ddim_step_ref(x.float(), e.float(), t, tn, TABLE, 0.8, z, upcast=False)
    check("ddim", got, want, low)
    check("ddim x0", x0, want0, low0)
    got, x0, _ = _emulate_cuda(exe, tmp_path, "ddpm", x, 21, 6, eps=e, t=t, t_next=tn, clip=1.0, return_x0=True)
    want, want0 = ref.ddpm_step_ref(x, e, t, tn, TABLE, z)
    low, low0 = ref.ddpm_step_ref(x.float(), e.float(), t, tn, TABLE, z, 1.0, upcast=False)
    check("ddpm", got, want, low)
    check("ddpm x0", x0, want0, low0)
    den = shape[0]  # reduction "sum_mean": sum over C and space, mean over the batch
    grad, _, partial = _emulate_cuda(exe, tmp_path, "loss", e, 21, 6, scale=2.0 / den)
    loss = (partial.sum() / den).to(torch.float64 if dtype == torch.float64 else torch.float32)
    want = ref.diffusion_loss_ref(e, z)
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
    gw = ref.diffusion_loss_grad_ref(e, z)
    check("loss grad", grad, gw, gw)
    got, _, _ = _emulate_cuda(exe, tmp_path, "normal", x, 21, 6)
    assert (got.double() - z.to(dtype).double()).abs().max().item() <= (2e-6 if dtype in (torch.float32, torch.float64)
                                                                        else 0.02)


def _big_draw(numel=1 << 20, seed=7, offset=0):
    x = torch.empty((4, numel // 4))
    be = "cpu" if "cpu" in [b for b in _backends() if isinstance(b, str)] else "reference"
    return randn(x, seed, offset, backend=be)


def test_normal_moments_and_ks():
    z = _big_draw().double().flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**3).mean().item()) < 5 * math.sqrt(15 / n)
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    # Kolmogorov-Smirnov against the standard normal, in torch (scipy is not a dependency):
    # the asymptotic Kolmogorov distribution gives P(sqrt(n) D > 1.95) ~= 1e-3
    zs, _ = torch.sort(z)
    cdf = 0.5 * (1 + torch.erf(zs / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert math.sqrt(n) * d < 1.95, f"KS statistic sqrt(n)*D = {math.sqrt(n) * d:.3f} (p < 1e-3)"


def test_normal_independent_across_elements_samples_and_offsets():
    n = 1 << 18
    a = _big_draw(n, seed=11, offset=0).double()
    b = _big_draw(n, seed=11, offset=1).double()
    c = _big_draw(n, seed=12, offset=0).double()
    bound = 5 / math.sqrt(n)

    def corr(u, v):
        u, v = u.flatten() - u.mean(), v.flatten() - v.mean()
        return ((u * v).mean() / (u.std() * v.std())).item()

    assert abs(corr(a, b)) < bound  # steps (offsets)
    assert abs(corr(a, c)) < bound  # seeds
    assert abs(corr(a[0], a[1])) < 5 / math.sqrt(a.shape[1])  # samples of one batch
    f = a.flatten()
    for lag in (1, 2, 3, 4):  # lanes of one Philox call and neighbouring calls
        assert abs(corr(f[:-lag], f[lag:])) < bound
    assert torch.equal(_big_draw(n, seed=11, offset=0), a.float())  # reproducible


# --- fused ops == the float64 formulas given the same noise -------------------------------------
def _inputs(shape, dtype, gen):
    x = torch.randn(shape, generator=gen).to(dtype)
    e = torch.randn(shape, generator=gen).to(dtype)
    z = torch.randn(shape, generator=gen).to(dtype)
    return x, e, z


def _low(r, dtype):
    """The low-precision reference: the formula in fp32 on the 16-bit inputs, rounded once to
    dtype (what the official fp32 code gives for these inputs, stored in dtype)."""
    if isinstance(r, tuple):
        return tuple(v.to(dtype) for v in r)
    return r.to(dtype)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
def test_q_sample_matches_formula(backend, dtype, shape):
    g = torch.Generator().manual_seed(0)
    x, _, z = _inputs(shape, dtype, g)
    t, _ = _timesteps_for(shape[0], g)
    got = q_sample(x, t, schedule=SCHED, noise=z, backend=backend)
    want = ref.q_sample_ref(x, t, TABLE, z)
    low = _low(ref.q_sample_ref(x.float(), t, TABLE, z.float(), upcast=False), dtype)
    assert_close("q_sample", got, want, low, dtype)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
def test_ddim_step_matches_formula(backend, dtype, shape, eta):
    g = torch.Generator().manual_seed(1)
    x, e, z = _inputs(shape, dtype, g)
    t, tn = _timesteps_for(shape[0], g)
    got, x0 = ddim_step(x, e, t, tn, schedule=SCHED, eta=eta, noise=z, return_x0=True, backend=backend)
    want, want0 = ref.ddim_step_ref(x, e, t, tn, TABLE, eta, z)
    low, low0 = _low(ref.ddim_step_ref(x.float(), e.float(), t, tn, TABLE, eta, z.float(), upcast=False), dtype)
    assert_close("ddim x_next", got, want, low, dtype)
    assert_close("ddim x0", x0, want0, low0, dtype)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("clip", [1.0, None], ids=["clip1", "noclip"])
def test_ddpm_step_matches_formula(backend, dtype, shape, clip):
    g = torch.Generator().manual_seed(2)
    x, e, z = _inputs(shape, dtype, g)
    t, tn = _timesteps_for(shape[0], g)
    got, x0 = ddpm_step(x, e, t, tn, schedule=SCHED, noise=z, clip=clip, return_x0=True, backend=backend)
    want, want0 = ref.ddpm_step_ref(x, e, t, tn, TABLE, z, clip)
    low, low0 = _low(ref.ddpm_step_ref(x.float(), e.float(), t, tn, TABLE, z.float(), clip, upcast=False), dtype)
    assert_close("ddpm x_next", got, want, low, dtype)
    assert_close("ddpm x0", x0, want0, low0, dtype)


@pytest.mark.parametrize("backend", _backends())
def test_seeded_steps_match_formula_with_contract_noise(backend):
    shape = (3, 1, 6, 5, 7)
    g = torch.Generator().manual_seed(3)
    x, e, _ = _inputs(shape, torch.float32, g)
    t, tn = _timesteps_for(3, g)
    z = ref.normal_ref(shape, 99, 5)
    got = q_sample(x, t, schedule=SCHED, seed=99, offset=5, backend=backend)
    assert_close("q_sample seeded", got, ref.q_sample_ref(x, t, TABLE, z))
    got = ddim_step(x, e, t, tn, schedule=SCHED, eta=0.7, seed=99, offset=5, backend=backend)
    assert_close("ddim seeded", got, ref.ddim_step_ref(x, e, t, tn, TABLE, 0.7, z)[0])
    got = ddpm_step(x, e, t, tn, schedule=SCHED, seed=99, offset=5, backend=backend)
    assert_close("ddpm seeded", got, ref.ddpm_step_ref(x, e, t, tn, TABLE, z)[0])


def test_seeded_step_same_across_backends_and_dtypes():
    shape = (2, 1, 8, 9)
    g = torch.Generator().manual_seed(4)
    x, e, _ = _inputs(shape, torch.float32, g)
    t, tn = torch.tensor([999, 599]), torch.tensor([899, 499])
    outs = {b: ddpm_step(x, e, t, tn, schedule=SCHED, seed=5, offset=2, backend=b)
            for b in _backends() if isinstance(b, str)}
    base = outs.pop("reference")
    for b, y in outs.items():
        assert (y - base).abs().max().item() < 1e-5, b
    y16 = ddpm_step(x.bfloat16(), e.bfloat16(), t, tn, schedule=SCHED, seed=5, offset=2, backend="reference")
    assert (y16.float() - base).abs().max().item() < 0.05


@pytest.mark.parametrize("backend", _backends())
def test_noncontiguous_and_channels_last(backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 4, 5, 3, generator=g).permute(0, 1, 4, 2, 3)[:, ::2]  # strided view
    e = torch.randn(2, 3, 4, 5, 3, generator=g).to(memory_format=torch.channels_last_3d)
    e = e.permute(0, 1, 4, 2, 3)
    t, tn = torch.tensor([499, 99]), torch.tensor([399, -1])
    got = ddim_step(x, e, t, tn, schedule=SCHED, eta=0.5, seed=1, backend=backend)
    z = ref.normal_ref(x.shape, 1, 0)
    assert_close("ddim strided", got, ref.ddim_step_ref(x, e, t, tn, TABLE, 0.5, z)[0])


@pytest.mark.parametrize("backend", _backends())
def test_every_output_element_written(backend):
    # every output a backend allocates starts NaN-filled (_kit.poisoned; deterministic mode does the
    # same for torch.empty*): an element a kernel skips stays NaN
    shape = (2, 3, 5, 7, 11)  # 1155 per sample: partial blocks and a partial Philox group
    g = torch.Generator().manual_seed(13)
    x, e, _ = _inputs(shape, torch.float32, g)
    t, tn = torch.tensor([700, 3]), torch.tensor([600, -1])
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with _kit.poisoned():
            outs = [q_sample(x, t, schedule=SCHED, seed=1, backend=backend),
                    *ddim_step(x, e, t, tn, schedule=SCHED, eta=1.0, seed=1, return_x0=True, backend=backend),
                    *ddpm_step(x, e, t, tn, schedule=SCHED, seed=1, return_x0=True, backend=backend),
                    randn(x, 1, backend=backend)]
            ep = e.clone().requires_grad_()
            loss = diffusion_loss(ep, x, t, 1, schedule=SCHED, backend=backend)  # from poisoned partial sums
            loss.backward()
            outs += [loss, ep.grad]
    finally:
        torch.use_deterministic_algorithms(prev)
    for i, o in enumerate(outs):
        assert torch.isfinite(o).all(), f"output {i} has unwritten (NaN) elements"


def test_ddpm_no_noise_at_t0_and_ddim_eta0_deterministic():
    x, e = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t, tn = torch.tensor([0, 0]), torch.tensor([-1, -1])
    a = ddpm_step(x, e, t, tn, schedule=SCHED, seed=1, backend="reference")
    b = ddpm_step(x, e, t, tn, schedule=SCHED, seed=2, backend="reference")
    assert torch.equal(a, b)
    t2 = torch.tensor([999, 500])
    assert torch.equal(ddim_step(x, e, t2, tn, schedule=SCHED), ddim_step(x, e, t2, tn, schedule=SCHED, seed=9))
    tn2 = torch.tensor([899, 400])  # (with t_next = -1, c1 = 0: no noise even for eta > 0)
    assert not torch.equal(ddim_step(x, e, t2, tn2, schedule=SCHED, eta=1.0, seed=1),
                           ddim_step(x, e, t2, tn2, schedule=SCHED, eta=1.0, seed=2))


def test_int_timesteps_and_other_schedule_steps():
    x, e = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    a = ddim_step(x, e, 123, 45, schedule=SCHED)  # any absolute timesteps, not only the schedule's
    b = ddim_step(x, e, torch.tensor([123, 123]), torch.tensor([45, 45]), schedule=SCHED)
    assert torch.equal(a, b)


# --- the fused training loss ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", _backends("diffusion_loss"))
@pytest.mark.parametrize("reduction", ["sum_mean", "mean"])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64),
                         ids=lambda d: str(d).replace("torch.", ""))
def test_loss_and_grad_match_autograd_of_reference(backend, reduction, dtype):
    shape = (3, 2, 5, 4, 7)  # 280 per sample; and a second case over several loss blocks below
    for shp in (shape, (2, 1, 33, 40)):
        g = torch.Generator().manual_seed(6)
        x0 = torch.randn(shp, generator=g).to(dtype)
        ep = torch.randn(shp, generator=g).to(dtype).requires_grad_()
        t = SCHED.sample_timesteps(shp[0], generator=g)
        gout = torch.rand((), generator=g) + 0.5
        loss = diffusion_loss(ep, x0, t, 42, schedule=SCHED, offset=3, reduction=reduction, backend=backend)
        (loss * gout).backward()
        ep64 = ep.detach().double().requires_grad_()
        z = ref.normal_ref(shp, 42, 3, dtype=torch.float64)
        want = ref.diffusion_loss_ref(ep64, z, reduction)
        (want * gout.double()).backward()
        tol = {torch.float64: 1e-6, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]  # noise is fp32 everywhere
        assert abs(loss.item() - want.item()) <= tol * abs(want.item())
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        gtol = {torch.float64: 1e-6, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
        assert (ep.grad.double() - ep64.grad).abs().max().item() <= gtol * ep64.grad.abs().max().item()
        grad_fn = ref.diffusion_loss_grad_ref(ep64.detach(), z, reduction) * gout.double()
        assert torch.allclose(grad_fn, ep64.grad)


@pytest.mark.parametrize("backend", _backends("diffusion_loss"))
def test_loss_gradcheck_float64(backend):
    ep = torch.randn(2, 1, 3, 5, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 1, 3, 5, dtype=torch.float64)
    t = torch.tensor([0, 999])
    assert torch.autograd.gradcheck(lambda e: diffusion_loss(e, x0, t, 1, schedule=SCHED, backend=backend), (ep,))


@pytest.mark.parametrize("backend", _backends("q_sample"))
def test_q_sample_gradcheck_float64(backend):
    x0 = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([5, 900])
    assert torch.autograd.gradcheck(lambda a, b: q_sample(a, t, schedule=SCHED, noise=b, backend=backend), (x0, z))
    x0.grad = None
    q_sample(x0, t, schedule=SCHED, seed=3, backend=backend).sum().backward()  # stride-0 grad
    assert torch.allclose(x0.grad, TABLE[t + 1].sqrt().view(-1, 1, 1, 1).expand_as(x0))


def test_loss_pairs_with_q_sample():
    # training: the loss regenerates the very eps q_sample used
    x0 = torch.randn(2, 1, 6, 6)
    t = torch.tensor([199, 899])
    x_t = q_sample(x0, t, schedule=SCHED, seed=77, offset=4)
    at = TABLE[t + 1].float().view(-1, 1, 1, 1)
    eps = (x_t - at.sqrt() * x0) / (1 - at).sqrt()
    loss = diffusion_loss(eps, x0, t, 77, schedule=SCHED, offset=4)
    assert loss.item() < 1e-6


# --- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs():
    x, e = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t, tn = torch.tensor([10, 5]), torch.tensor([5, -1])
    with pytest.raises(ValueError, match="t must be in 0..999, got 1000"):
        ddim_step(x, e, torch.tensor([1000, 5]), tn, schedule=SCHED)
    with pytest.raises(ValueError, match="t must be in 0..999, got -1"):
        q_sample(x, torch.tensor([-1, 5]), schedule=SCHED, seed=0)
    with pytest.raises(ValueError, match="t_next must be in -1..t-1"):
        ddim_step(x, e, t, torch.tensor([10, -1]), schedule=SCHED)
    with pytest.raises(ValueError, match="t_next must be in -1..998, got -2"):
        ddim_step(x, e, t, torch.tensor([-2, -1]), schedule=SCHED)
    with pytest.raises(ValueError, match="eps must have the shape of x_t"):
        ddim_step(x, e[:, :, :3], t, tn, schedule=SCHED)
    with pytest.raises(TypeError, match="eps has dtype"):
        ddim_step(x, e.double(), t, tn, schedule=SCHED)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        ddim_step(x, e, torch.tensor([10, 5, 3]), tn, schedule=SCHED)
    with pytest.raises(TypeError, match="t must be an integer tensor"):
        ddim_step(x, e, t.float(), tn, schedule=SCHED)
    with pytest.raises(ValueError, match="pass seed="):
        ddpm_step(x, e, t, tn, schedule=SCHED)
    with pytest.raises(ValueError, match="pass seed="):
        ddim_step(x, e, t, tn, schedule=SCHED, eta=1.0)
    with pytest.raises(ValueError, match="seed must be in"):
        q_sample(x, t, schedule=SCHED, seed=-1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        diffusion_loss(x, x, t, 0, schedule=SCHED, reduction="sum")
    with pytest.raises(ValueError, match="x_t must be"):
        ddim_step(x[0, 0, 0], e[0, 0, 0], t, tn, schedule=SCHED)
    with pytest.raises(TypeError, match="schedule must be a FastDDPMSchedule"):
        q_sample(x, t, schedule=None, seed=0)


# --- check_timesteps=False: one rule on every backend (issue 16) -----------------------------------
# t out of 0..T-1 and t_next out of -1..T-1 with check_timesteps=False: the reference raised an
# IndexError, the C++ kernel a ValueError and Triton clamped. Every backend now clamps into the table
# (t to 0..T-1, t_next to -1..T-1), as the CUDA/Triton kernels must (they cannot raise); the oracle
# is the reference formula at the explicitly clamped timesteps. The clamp can give t_next == t
# (samples 3 and 4 here): a finite identity step, x_next = x_t.
OOB_T = [1000, -3, 1500, 2**40, 2000, 7]
OOB_T_NEXT = [-7, -2, 500, 1200, 5000, -(2**40)]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_out_of_range_timesteps_clamp_alike_without_checks(backend, dtype, kind):
    shape = (len(OOB_T), 2, 5, 7)
    g = torch.Generator().manual_seed(16)
    x, e, z = _inputs(shape, dtype, g)
    t, tn = torch.tensor(OOB_T), torch.tensor(OOB_T_NEXT)
    tc, tnc = t.clamp(0, 999), tn.clamp(-1, 999)
    assert (tnc <= tc).all()
    # float64 with the given noise (fp64 tolerance); float32 with the in-kernel noise of (seed, offset)
    noise_kw = dict(noise=z) if dtype == torch.float64 else dict(seed=5, offset=2)
    zz = z if dtype == torch.float64 else ref.normal_ref(shape, 5, 2)
    if kind == "ddim":
        got = ddim_step(x, e, t, tn, schedule=SCHED, eta=0.6, return_x0=True, backend=backend, check_timesteps=False,
                        **noise_kw)
        want = ref.ddim_step_ref(x, e, tc, tnc, TABLE, 0.6, zz)
    else:
        got = ddpm_step(x, e, t, tn, schedule=SCHED, return_x0=True, backend=backend, check_timesteps=False,
                        **noise_kw)
        want = ref.ddpm_step_ref(x, e, tc, tnc, TABLE, zz)
    for name, a, w in zip(("x_next", "x0"), got, want):
        assert a.isfinite().all(), name
        assert_close(f"{kind} {name}", a, w, dtype=dtype)
    assert_close(f"{kind} identity steps", got[0][3:5], x[3:5].double(), dtype=dtype)
    with pytest.raises(ValueError, match="t must be in 0..999, got 1000"):  # the default still checks
        (ddim_step if kind == "ddim" else ddpm_step)(x, e, t, tn, schedule=SCHED, backend=backend, **noise_kw)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("kind, eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", None)])
def test_t_next_after_t_without_checks_is_nan_on_every_backend(backend, kind, eta):
    # t_next > t (possible with check_timesteps=False) has beta = 1 - at/an < 0: the step is NaN, as
    # the official exp(0.5 log beta) makes it, also at t = 0 where the noise mask is 0 (the C++
    # kernel's [t != 0] ? sqrt(beta) : 0 used to hide it there)
    x, e, z = _inputs((3, 1, 2, 5), torch.float32, torch.Generator().manual_seed(2))
    t, tn = torch.tensor([5, 0, 998]), torch.tensor([10, 3, 999])
    if kind == "ddim":
        got = ddim_step(x, e, t, tn, schedule=SCHED, eta=eta, noise=z, backend=backend, check_timesteps=False)
    else:
        got = ddpm_step(x, e, t, tn, schedule=SCHED, noise=z, backend=backend, check_timesteps=False)
    assert got.isnan().all(), got.isnan().flatten(1).all(1).tolist()


def test_reference_formulas_clamp_timesteps_into_the_table():
    x, e, z = _inputs((2, 1, 3, 3), torch.float64, torch.Generator().manual_seed(1))
    t, tn = torch.tensor([1000, -1]), torch.tensor([-5, -2])
    tc, tnc = torch.tensor([999, 0]), torch.tensor([-1, -1])
    for a, b in zip(ref.ddpm_step_ref(x, e, t, tn, TABLE, z), ref.ddpm_step_ref(x, e, tc, tnc, TABLE, z)):
        assert torch.equal(a, b)
    for a, b in zip(ref.ddim_step_ref(x, e, t, tn, TABLE, 1.0, z), ref.ddim_step_ref(x, e, tc, tnc, TABLE, 1.0, z)):
        assert torch.equal(a, b)
    assert torch.equal(ref.q_sample_ref(x, t, TABLE, z), ref.q_sample_ref(x, tc, TABLE, z))


# --- the custom-op boundary --------------------------------------------------------------------
@pytest.mark.parametrize("backend", _backends())
def test_opcheck(backend):
    # the kit's schema: (tensors..., option fields..., str backend) -> Tensor[]
    x, e = torch.randn(2, 1, 4, 6), torch.randn(2, 1, 4, 6)
    z = torch.randn(2, 1, 4, 6, requires_grad=True)
    t, tn = torch.tensor([999, 3]), torch.tensor([899, -1])
    xg, eg = x.clone().requires_grad_(), e.clone().requires_grad_()
    torch.library.opcheck(dops._Q_SAMPLE.custom_op, (xg, t, TABLE, None, 3, 1, backend))
    torch.library.opcheck(dops._Q_SAMPLE.custom_op, (xg, t, TABLE, z, 0, 1, backend))
    for return_x0 in (True, False):
        torch.library.opcheck(dops._DDIM.custom_op, (xg, eg, t, tn, TABLE, None, 3, 1, 0.5, return_x0, backend))
        torch.library.opcheck(dops._DDPM.custom_op, (xg, eg, t, tn, TABLE, None, 3, 1, 1.0, return_x0, backend))
    torch.library.opcheck(dops._DDPM.custom_op, (xg, eg, t, tn, TABLE, z, 0, 1, None, True, backend))
    torch.library.opcheck(dops._LOSS.custom_op, (xg, None, 3, 1, "sum_mean", backend))
    torch.library.opcheck(dops._LOSS.custom_op, (xg, None, 3, 1, "mean", backend))
    torch.library.opcheck(dops._NORMAL.custom_op, (x, 3, 1, backend))
    assert [dops._Q_SAMPLE.custom_op._qualname, dops._DDIM.custom_op._qualname, dops._DDPM.custom_op._qualname,
            dops._LOSS.custom_op._qualname, dops._NORMAL.custom_op._qualname] == [
        f"medkernels::diffusion_{n}" for n in ("q_sample", "ddim_step", "ddpm_step", "loss", "normal")]


@pytest.mark.parametrize("backend", _backends())
def test_eager_path_equals_custom_ops(backend):
    """Eager calls on plain tensors run the ops' forward and backward through the kit's
    autograd.Function: outputs and gradients equal the custom ops' bit for bit."""
    g = torch.Generator().manual_seed(14)
    x, e, z = _inputs((2, 1, 5, 7), torch.float64, g)
    t, tn = torch.tensor([999, 3]), torch.tensor([899, -1])

    def run():
        xl, el, zl = (v.clone().requires_grad_() for v in (x, e, z))
        outs = [q_sample(xl, t, schedule=SCHED, noise=zl, backend=backend),
                *ddim_step(xl, el, t, tn, schedule=SCHED, eta=0.5, noise=zl, return_x0=True, backend=backend),
                *ddpm_step(xl, el, t, tn, schedule=SCHED, seed=4, return_x0=True, backend=backend),
                ddpm_step(xl, el, t, tn, schedule=SCHED, noise=zl, clip=None, backend=backend),
                diffusion_loss(el, x, t, 6, schedule=SCHED, offset=2, backend=backend), randn(x, 3, 1, backend=backend)]
        loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)).sum()
                   for i, o in enumerate(outs))
        return (*outs, *torch.autograd.grad(loss, (xl, el, zl)))

    fast = run()
    with _kit.custom_ops_only():
        slow = run()
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert torch.equal(a, b), f"tensor {i} differs between the eager path and the custom ops"


def test_torch_compile_fullgraph():
    be = "cpu" if "cpu" in [b for b in _backends() if isinstance(b, str)] else "reference"

    def step(x, e, t, tn):
        y = ddim_step(x, e, t, tn, schedule=SCHED, eta=0.5, seed=3, backend=be)
        return ddpm_step(y, e, tn + 1, tn, schedule=SCHED, seed=3, offset=1, backend=be)

    x, e = torch.randn(2, 1, 4, 6), torch.randn(2, 1, 4, 6)
    t, tn = torch.tensor([999, 500]), torch.tensor([899, 100])
    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True)(x, e, t, tn)
    assert torch.equal(got, step(x, e, t, tn))

    def train(x, e):  # the custom ops' autograd under torch.compile
        return (q_sample(x, t, schedule=SCHED, seed=1, backend=be).sum()
                + diffusion_loss(e, x, t, 1, schedule=SCHED, backend=be) + step(x, e, t, tn).square().sum())

    xg, eg = x.clone().requires_grad_(), e.clone().requires_grad_()
    got = torch.autograd.grad(torch.compile(train, fullgraph=True, backend="aot_eager")(xg, eg), (xg, eg))
    for a, b in zip(got, torch.autograd.grad(train(xg, eg), (xg, eg))):
        assert_close("compiled grad", a, b.double())


@pytest.mark.skipif(not _environment.EXTENDED_TESTS, reason="large shapes: MEDKERNELS_EXTENDED_TESTS=1")
@pytest.mark.parametrize("backend", _backends())
def test_large_volume(backend):
    shape = (1, 1, 33, 64, 65)
    g = torch.Generator().manual_seed(8)
    x, e, _ = _inputs(shape, torch.float32, g)
    t, tn = torch.tensor([999]), torch.tensor([899])
    got = ddim_step(x, e, t, tn, schedule=SCHED, eta=1.0, seed=4, backend=backend)
    assert_close("ddim large", got, ref.ddim_step_ref(x, e, t, tn, TABLE, 1.0, ref.normal_ref(shape, 4, 0))[0])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_nvcc_compiles_diffusion_cu(tmp_path):
    root = Path(__file__).resolve().parents[1]
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-O3", "--expt-relaxed-constexpr", f"-I{root / 'csrc' / 'include'}",
           "-c", str(root / "csrc" / "cuda" / "diffusion.cu"), "-o", str(tmp_path / "diffusion.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "warning" not in res.stderr.lower(), res.stderr[-4000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_reproduces_cpu_noise():
    x = torch.empty(2, 3, 17, 9)
    cpu = randn(x, 5, 1, backend="reference")
    gpu = randn(x.cuda(), 5, 1, backend="triton").cpu()
    assert (cpu - gpu).abs().max().item() <= 2e-6
    assert torch.equal(philox_bits(x.shape, 5, 1, device="cuda", backend="triton").cpu(),
                       ref.philox_bits_ref(x.shape, 5, 1))


# --- the S-step sampler ------------------------------------------------------------------------
class _TinyModel(torch.nn.Module):
    """A fixed conditional eps-model: conv over cat([cond, x_t]) scaled by a function of t."""

    def __init__(self, c_in: int, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
        self.conv = conv(c_in, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.zero_()
        self.seen_t = []

    def forward(self, x, t):
        self.seen_t.append(t)
        scale = (1.0 + t / 1000.0).view(-1, *([1] * (x.dim() - 1)))
        return torch.tanh(self.conv(x)) * scale


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("kind, eta, sched", [("ddim", 0.0, "uniform"), ("ddim", 1.0, "non-uniform"),
                                             ("ddpm", 0.0, "uniform")], ids=["ddim-eta0", "ddim-eta1-nonuni", "ddpm"])
def test_sampler_equals_official_loop(backend, kind, eta, sched):
    from medkernels.diffusion import FastDDPMSampler

    schedule = FastDDPMSchedule(sched, 10)
    g = torch.Generator().manual_seed(9)
    shape = (2, 1, 6, 5) if kind != "ddim" or eta == 0 else (2, 1, 3, 4, 5)
    x_T = torch.randn(shape, generator=g)
    cond = torch.randn(shape, generator=g)
    model = _TinyModel(2, len(shape) - 2)
    sampler = FastDDPMSampler(model, schedule, kind=kind, eta=eta, backend=backend, progress=False)
    x, traj = sampler(x_T, cond, seed=5, offset=2, return_trajectory=True)
    model.seen_t.clear()
    want, want_traj = ref.fast_ddpm_sample_ref(model, x_T, cond, schedule, kind, eta, seed=5, offset=2)
    assert all(t.dtype == torch.float32 for t in model.seen_t)
    assert len(traj) == len(want_traj) == schedule.timesteps.numel()
    assert (x - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    for a, b in zip(traj, want_traj):
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_sampler_official_ddpm_timesteps():
    # the official ddpm_noisy loop walks range(0, T, T // S) whatever the scheduler; "schedule"
    # (the default) walks the schedule's own indices
    from medkernels.diffusion import FastDDPMSampler

    nonuni = FastDDPMSchedule("non-uniform", 10)
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    for which, want in (("official_ddpm", list(range(0, 1000, 100))), ("schedule", nonuni.timesteps.tolist())):
        model = _TinyModel(1, 2)
        sampler = FastDDPMSampler(model, nonuni, kind="ddpm", timesteps=which, progress=False)
        assert sampler.visited() == want
        x = sampler(x_T, seed=1)
        assert torch.isfinite(x).all()
        assert [int(t[0].item()) for t in model.seen_t] == want[::-1]
    assert nonuni.timesteps.tolist() != list(range(0, 1000, 100))
    odd = FastDDPMSampler(_TinyModel(1, 2), FastDDPMSchedule("uniform", 3), timesteps="official_ddpm")
    assert odd.visited() == [0, 333, 666, 999]  # more than S indices when S does not divide T
    with pytest.raises(ValueError, match="timesteps must be one of"):
        FastDDPMSampler(lambda x, t: x, nonuni, timesteps="quad")


def test_sampler_errors_and_no_cond():
    from medkernels.diffusion import FastDDPMSampler

    with pytest.raises(ValueError, match="kind must be one of"):
        FastDDPMSampler(lambda x, t: x, SCHED, kind="euler")
    s = FastDDPMSampler(lambda x, t: 0.1 * x, FastDDPMSchedule(steps=5), progress=False)
    x = s(torch.randn(1, 1, 4, 4))
    assert x.shape == (1, 1, 4, 4) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="cond must be"):
        s(torch.randn(1, 1, 4, 4), torch.randn(2, 1, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_gpu_backends_match_formula(backend, dtype):
    reasons = _DISPATCH["ddim_step"]._by_name[backend].not_supported_reasons(torch.device("cuda"), dtype)
    if reasons:
        pytest.skip("; ".join(reasons))
    shape = (3, 1, 17, 33, 65)
    g = torch.Generator().manual_seed(10)
    x, e, _ = _inputs(shape, dtype, g)
    x, e = x.cuda(), e.cuda()
    t, tn = torch.tensor([999, 0, 499]).cuda(), torch.tensor([899, -1, 399]).cuda()
    table = SCHED.alpha_table("cuda")
    z = ref.normal_ref(shape, 8, 3, device="cuda")
    low = ref.ddim_step_ref(x.float(), e.float(), t, tn, table, 1.0, z, upcast=False)[0].to(dtype)
    got = ddim_step(x, e, t, tn, schedule=SCHED, eta=1.0, seed=8, offset=3, backend=backend)
    assert_close("ddim gpu", got, ref.ddim_step_ref(x, e, t, tn, table, 1.0, z)[0], low, dtype)
    low = ref.ddpm_step_ref(x.float(), e.float(), t, tn, table, z, 1.0, upcast=False)[0].to(dtype)
    got = ddpm_step(x, e, t, tn, schedule=SCHED, seed=8, offset=3, backend=backend)
    assert_close("ddpm gpu", got, ref.ddpm_step_ref(x, e, t, tn, table, z)[0], low, dtype)
    got = q_sample(x, t, schedule=SCHED, seed=8, offset=3, backend=backend)
    low = ref.q_sample_ref(x.float(), t, table, z, upcast=False).to(dtype)
    assert_close("q_sample gpu", got, ref.q_sample_ref(x, t, table, z), low, dtype)
    ep = e.clone().requires_grad_()
    loss = diffusion_loss(ep, x, t, 8, schedule=SCHED, offset=3, backend=backend)
    loss.backward()
    want = ref.diffusion_loss_ref(e, z)
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
    want_grad = ref.diffusion_loss_grad_ref(e, z)
    assert_close("loss grad gpu", ep.grad, want_grad, want_grad.to(dtype), dtype)
