"""Fast-DDPM's fused steps against a peer nobody here wrote: diffusers' ``DDPMScheduler`` and
``DDIMScheduler`` (``step``, ``add_noise``), on every backend and dtype the backends declare.

How Fast-DDPM (mirthAI/Fast-DDPM, ``functions/denoising.py``, ``runners/diffusion.py``) maps onto
the diffusers config:

- betas: Fast-DDPM ``linear`` (numpy ``linspace`` in float64) is diffusers' ``beta_schedule="linear"``
  (``torch.linspace`` in float32); ``cosine`` (``alpha_cosine``, s = 0.008, capped at 0.999) is
  ``"squaredcos_cap_v2"``. diffusers keeps float32 tables, so :func:`test_schedule_config_maps_onto_diffusers`
  checks the mapping to float32 rounding, and the step comparisons load our float64
  ``alphas_cumprod`` into the scheduler so that they judge the step formulas at float64.
- ``ddpm_steps`` is ``DDPMScheduler(prediction_type="epsilon", variance_type="fixed_large",
  clip_sample=True, clip_sample_range=clip, thresholding=False)``: the official sigma_t^2 is
  beta_t = 1 - abar_t / abar_next ("fixed_large"), not the posterior variance ("fixed_small",
  diffusers' default). The timesteps are ``set_timesteps(timesteps=<the Fast-DDPM list, descending>)``:
  ``previous_timestep`` is then the next entry and -1 after the last (abar = 1), Fast-DDPM's
  ``seq_next``. diffusers adds noise only for t > 0, Fast-DDPM's ``[t != 0]`` mask.
- ``generalized_steps`` is ``DDIMScheduler(clip_sample=False, set_alpha_to_one=True)`` with ``eta``.
  Its previous timestep is ``t - T // num_inference_steps``, so a pair (t, t_next) maps only when
  ``t - t_next == T // n`` for some n, or t_next = -1 and ``t < T // n``; Fast-DDPM's own lists
  have steps such as 99 -> 0 that no n gives, so DDIM is compared step by step, not as a loop.
- ``q_sample`` is ``add_noise(x0, noise, t)``.

The noise is one explicit tensor for both sides: ``variance_noise=`` for DDIM; for DDPM, which
draws it itself, diffusers' ``randn_tensor`` is replaced by one returning the given tensor (and the
test checks it was called exactly when t > 0). The oracle is diffusers in float64 on the inputs
upcast; fp16/bf16 are judged against diffusers run in that dtype (``medkernels.testing``).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

import medkernels  # noqa: E402,F401  (sets the Triton interpreter before kernels load)
from medkernels.diffusion import FastDDPMSchedule, ddim_step, ddpm_step, q_sample  # noqa: E402
from medkernels.ops.diffusion import _DISPATCH  # noqa: E402
from medkernels.testing import assert_close  # noqa: E402

SCHED = FastDDPMSchedule()
T = SCHED.num_train_timesteps
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
SHAPE_PER_SAMPLE = (2, 5, 7, 3)  # odd sizes; 210 elements per sample


def _dt(d):
    return str(d).replace("torch.", "")


def _cases(op):
    """backend x dtype from what each backend declares for CPU tensors (skipped, with the reasons, if not)."""
    out = []
    for name in ("triton", "cpu", "reference"):
        b = _DISPATCH[op]._by_name[name]
        for dtype in DTYPES:
            why = b.not_supported_reasons(torch.device("cpu"), dtype)
            marks = [pytest.mark.skip(reason="; ".join(why))] if why else []
            out.append(pytest.param(name, dtype, marks=marks, id=f"{name}-{_dt(dtype)}"))
    return out


def _inputs(B, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, e, z = (torch.randn((B,) + SHAPE_PER_SAMPLE, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    return x, e, z


def _table_in(sched, table64: torch.Tensor):
    """Our float64 abar table in the diffusers scheduler (its own is float32; see the module docstring)."""
    sched.alphas_cumprod = table64.clone()
    return sched


@contextlib.contextmanager
def _ddpm_noise(z: torch.Tensor, calls: list):
    """DDPMScheduler.step draws its noise with ``randn_tensor``: give it ``z`` instead."""
    real = scheduling_ddpm.randn_tensor

    def given(shape, generator=None, device=None, dtype=None, **kw):
        assert tuple(shape) == tuple(z.shape), (shape, z.shape)
        calls.append(dtype)
        return z.to(dtype)

    scheduling_ddpm.randn_tensor = given
    try:
        yield
    finally:
        scheduling_ddpm.randn_tensor = real


def _check(name, got, want64, want_low, dtype):
    if dtype in (torch.float16, torch.bfloat16):
        assert_close(name, got, want64, want_low, dtype)
    else:
        assert_close(name, got, want64, dtype=dtype)


# --- the config mapping ---------------------------------------------------------------------------
@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedule_config_maps_onto_diffusers(ours, theirs):
    s = FastDDPMSchedule(beta_schedule=ours)
    d = DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02)
    assert d.betas.dtype == torch.float32
    ulp = 2.0**-23
    # float32 betas: within 2 float32 ulps of ours
    assert ((d.betas.double() - s.betas).abs() <= 2 * ulp * s.betas).all()
    # float32 cumulative product of T factors: each product rounds once (<= 2^-24 relative)
    rel = ((d.alphas_cumprod.double() - s.alphas_cumprod).abs() / s.alphas_cumprod).max().item()
    assert rel <= T * 2.0**-24, rel


def test_custom_timesteps_give_fast_ddpm_seq_next():
    for sched in (FastDDPMSchedule("uniform", 10), FastDDPMSchedule("non-uniform", 10), FastDDPMSchedule("uniform", 7)):
        d = DDPMScheduler(num_train_timesteps=T)
        d.set_timesteps(timesteps=sched.timesteps.flip(0).tolist())
        got = [int(d.previous_timestep(int(t))) for t in d.timesteps]
        assert got == sched.next_timesteps().flip(0).tolist()


# --- q_sample = add_noise -----------------------------------------------------------------------
@pytest.mark.parametrize("backend, dtype", _cases("q_sample"))
def test_q_sample_matches_add_noise(backend, dtype):
    x, _, z = _inputs(5, dtype, seed=1)
    t = torch.tensor([999, 0, 500, 1, 37])
    d = _table_in(DDPMScheduler(num_train_timesteps=T), SCHED.alphas_cumprod)
    want64 = d.add_noise(x.double(), z.double(), t)
    want_low = d.add_noise(x, z, t) if dtype in (torch.float16, torch.bfloat16) else None
    got = q_sample(x, t, schedule=SCHED, noise=z, backend=backend)
    _check("q_sample", got, want64, want_low, dtype)


# --- one DDPM step, per-sample timesteps ------------------------------------------------------------
DDPM_PAIRS = [(999, 899), (499, 399), (99, 0), (0, -1), (5, 4), (700, -1)]


def _diffusers_ddpm(x, e, z, pairs, clip):
    """diffusers' DDPM step sample by sample (its timestep is one int per call)."""
    outs, x0s = [], []
    for b, (t, tn) in enumerate(pairs):
        d = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large", clip_sample=clip is not None,
                          clip_sample_range=1.0 if clip is None else clip, prediction_type="epsilon")
        _table_in(d, SCHED.alphas_cumprod)
        d.set_timesteps(timesteps=[t] + ([tn] if tn >= 0 else []))
        calls = []
        with _ddpm_noise(z[b:b + 1], calls):
            r = d.step(e[b:b + 1], t, x[b:b + 1])
        assert len(calls) == (1 if t > 0 else 0)  # noise only for t > 0, as Fast-DDPM's [t != 0]
        outs.append(r.prev_sample)
        x0s.append(r.pred_original_sample)
    return torch.cat(outs), torch.cat(x0s)


@pytest.mark.parametrize("clip", [1.0, 0.5, None], ids=["clip1", "clip0.5", "noclip"])
@pytest.mark.parametrize("backend, dtype", _cases("ddpm_step"))
def test_ddpm_step_matches_diffusers(backend, dtype, clip):
    B = len(DDPM_PAIRS)
    x, e, z = _inputs(B, dtype, seed=2)
    e = e * 3  # |x0| > clip in many places: the clamp is exercised
    t = torch.tensor([p[0] for p in DDPM_PAIRS])
    tn = torch.tensor([p[1] for p in DDPM_PAIRS])
    want, want0 = _diffusers_ddpm(x.double(), e.double(), z.double(), DDPM_PAIRS, clip)
    low = _diffusers_ddpm(x, e, z, DDPM_PAIRS, clip) if dtype in (torch.float16, torch.bfloat16) else (None, None)
    got, got0 = ddpm_step(x, e, t, tn, schedule=SCHED, noise=z, clip=clip, return_x0=True, backend=backend)
    _check("ddpm x_next", got, want, low[0], dtype)
    _check("ddpm x0", got0, want0, low[1], dtype)


# --- one DDIM step, per-sample timesteps ------------------------------------------------------------
# (t, t_next, num_inference_steps n): t_next = t - T // n, or -1 when t - T // n < 0
DDIM_PAIRS = [(999, 899, 10), (450, 350, 10), (37, -1, 10), (500, 250, 4), (1, 0, 1000), (0, -1, 10), (998, 856, 7)]


def _diffusers_ddim(x, e, z, eta):
    outs, x0s = [], []
    for b, (t, tn, n) in enumerate(DDIM_PAIRS):
        assert t - T // n == tn or (tn == -1 and t - T // n < 0)
        d = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")
        _table_in(d, SCHED.alphas_cumprod)
        d.set_timesteps(n)
        r = d.step(e[b:b + 1], t, x[b:b + 1], eta=eta, variance_noise=z[b:b + 1] if eta > 0 else None)
        outs.append(r.prev_sample)
        x0s.append(r.pred_original_sample)
    return torch.cat(outs), torch.cat(x0s)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("backend, dtype", _cases("ddim_step"))
def test_ddim_step_matches_diffusers(backend, dtype, eta):
    B = len(DDIM_PAIRS)
    x, e, z = _inputs(B, dtype, seed=3)
    t = torch.tensor([p[0] for p in DDIM_PAIRS])
    tn = torch.tensor([p[1] for p in DDIM_PAIRS])
    want, want0 = _diffusers_ddim(x.double(), e.double(), z.double(), eta)
    low = _diffusers_ddim(x, e, z, eta) if dtype in (torch.float16, torch.bfloat16) else (None, None)
    got, got0 = ddim_step(x, e, t, tn, schedule=SCHED, eta=eta, noise=z if eta > 0 else None, return_x0=True,
                          backend=backend)
    _check("ddim x_next", got, want, low[0], dtype)
    _check("ddim x0", got0, want0, low[1], dtype)


# --- the whole Fast-DDPM DDPM loop ------------------------------------------------------------------
def _toy_eps(x, t):
    """A fixed 'model': smooth in x, different per timestep (float64 inside, cast back)."""
    return (torch.tanh(x.double()) * 0.9 + 0.05 * torch.cos(x.double() + t / 100.0)).to(x.dtype)


@pytest.mark.parametrize("kind", ["uniform", "non-uniform"])
@pytest.mark.parametrize("backend, dtype", [c for c in _cases("ddpm_step") if c.values[1] in (torch.float64,
                                                                                                 torch.float32)])
def test_fast_ddpm_loop_matches_diffusers(backend, dtype, kind):
    """The official ``ddpm_steps`` loop (10 steps, clip 1) on our fused step and on DDPMScheduler
    with the Fast-DDPM timestep list, the same model and the same per-step noise."""
    sched = FastDDPMSchedule(kind, 10)
    seq = sched.timesteps.tolist()
    g = torch.Generator().manual_seed(4)
    B = 3
    x_T = torch.randn((B,) + SHAPE_PER_SAMPLE, generator=g, dtype=torch.float64)
    noises = [torch.randn_like(x_T) for _ in seq]
    d = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large", clip_sample=True)
    _table_in(d, sched.alphas_cumprod)
    d.set_timesteps(timesteps=list(reversed(seq)))
    theirs = x_T
    for i, t in enumerate(d.timesteps.tolist()):
        with _ddpm_noise(noises[i], []):
            theirs = d.step(_toy_eps(theirs, t), t, theirs).prev_sample
    ours = x_T.to(dtype)
    for i, (t, tn) in enumerate(zip(reversed(seq), reversed(sched.next_timesteps().tolist()))):
        tt, ttn = torch.full((B,), t), torch.full((B,), tn)
        ours = ddpm_step(ours, _toy_eps(ours, t), tt, ttn, schedule=sched, noise=noises[i].to(dtype), backend=backend)
    assert_close(f"{kind} loop", ours, theirs, dtype=dtype)
