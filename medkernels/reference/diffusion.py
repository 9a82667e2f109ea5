"""Few-step diffusion (Fast-DDPM) in plain PyTorch: the oracle of the tests, the eager chain of
the benchmarks and the ``backend="reference"`` implementation.

The formulas follow mirthAI/Fast-DDPM (``functions/denoising.py``, ``functions/losses.py``)
step by step; ``alpha_table`` is ``[1, abar_0, ..., abar_{T-1}]`` (float64), gathered at
``t + 1`` exactly as the official ``compute_alpha`` does, so ``t = -1`` gives 1. Timesteps are
first clamped into the table, ``t`` to 0..T-1 and ``t_next`` to -1..T-1, as every kernel does (the
CUDA and Triton kernels cannot raise): the ops validate them unless ``check_timesteps=False``,
and then every backend gives this answer.

The noise contract (the same on every backend, device and dtype)
----------------------------------------------------------------
A call with ``(seed, offset)`` fills a tensor of shape (B, ...) by its logical index (its
memory layout does not matter): element ``i`` (row-major within its sample) of sample ``b`` uses

    key     = (seed mod 2^32, seed >> 32)                            0 <= seed < 2^63
    g       = i // 4,  lane = i % 4                                  i < 2^34, b < 2^32
    counter = (g, b, offset mod 2^32, offset >> 32)                  0 <= offset < 2^63
    (x0, x1, x2, x3) = Philox-4x32-10(counter, key)                 (Salmon et al., SC'11)
    u(x)    = ((x >> 9) + 0.5) * 2^-23                              in (0, 1), exact in fp32
    pair(a, b): r = sqrt(-2 log u(a)), th = 2pi u(b) -> (r cos th, r sin th), all in fp32
    lanes 0, 1 = pair(x0, x1);  lanes 2, 3 = pair(x2, x3)

then one cast to the output dtype. The integers are the same bits everywhere; the fp32 normal
differs between backends only by a few ulps of their ``log``/``cos``/``sin`` (torch, Triton/libdevice,
libm, or the vectorised polynomials of the C++ CPU kernel): at most ~1e-6 absolute.
``offset`` is a stream index, not an element count: the sampler uses one offset per step, so
streams never overlap whatever the tensor size; a sample's noise does not depend on the batch
size or on the other samples.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_TWO_PI = 6.283185307179586


def _mulhilo32(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b, a < 2^32 a Python int, b an int64 tensor of values < 2^32.

    The product is split on 16 bits so no intermediate leaves int64."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)  # < 2^48
    s = p_hi + (p_lo >> 16)
    lo = (p_lo & 0xFFFF) | ((s & 0xFFFF) << 16)
    return s >> 16, lo


def philox4x32_ref(counter: Tuple[torch.Tensor, ...], key: Tuple[int, int], rounds: int = PHILOX_ROUNDS):
    """Philox-4x32 on int64 tensors holding 32-bit words; returns the 4 output words."""
    c0, c1, c2, c3 = (c.to(torch.int64) & _MASK32 for c in counter)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for _ in range(rounds):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def check_seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < 2**63:
        raise ValueError(f"{name} must be in 0..2^63-1, got {value}")
    return value


def philox_bits_ref(shape, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """(B, ceil(N / 4), 4) int64: the 32-bit words behind a (B, ...) tensor of N elements per sample."""
    B, N = shape[0], math.prod(shape[1:])
    groups = (N + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device).repeat(B)
    b = torch.arange(B, dtype=torch.int64, device=device).repeat_interleave(groups)
    cnt = (g, b, torch.full_like(g, offset & _MASK32), torch.full_like(g, offset >> 32))
    return torch.stack(philox4x32_ref(cnt, (seed & _MASK32, seed >> 32)), dim=1).view(B, groups, 4)


def uniform_from_bits(x: torch.Tensor) -> torch.Tensor:
    """u(x) = ((x >> 9) + 0.5) * 2^-23 in float32: never 0, never 1, exact."""
    return ((x >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def normal_ref(shape, seed: int, offset: int = 0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...) for ``(seed, offset)``: the contract's fp32 Box-Muller."""
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"shape must have a batch axis, got {shape}")
    B, N = shape[0], math.prod(shape[1:])
    u = uniform_from_bits(philox_bits_ref(shape, seed, offset, device))
    r01 = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    th01 = u[..., 1] * _TWO_PI
    r23 = torch.sqrt(-2.0 * torch.log(u[..., 2]))
    th23 = u[..., 3] * _TWO_PI
    z = torch.stack((r01 * torch.cos(th01), r01 * torch.sin(th01), r23 * torch.cos(th23), r23 * torch.sin(th23)), -1)
    return z.reshape(B, -1)[:, :N].reshape(shape).to(dtype)


# --- the per-step formulas -------------------------------------------------------------------
def clamp_timesteps(t: torch.Tensor, alpha_table: torch.Tensor, low: int, device) -> torch.Tensor:
    """t as int64 on ``device``, clamped into low..T-1 (``low``: 0 for t, -1 for t_next), the
    kernels' rule for timesteps outside the table."""
    return t.to(device).long().clamp(low, alpha_table.numel() - 2)


def _abar(alpha_table: torch.Tensor, t: torch.Tensor, like: torch.Tensor, dtype) -> torch.Tensor:
    """abar_t per sample, shaped (B, 1, ..., 1) to broadcast over ``like``; t = -1 gives 1."""
    a = alpha_table.to(like.device).index_select(0, t.to(like.device).long() + 1).to(dtype)
    return a.view(-1, *([1] * (like.dim() - 1)))


def _compute_dtype(x: torch.Tensor, upcast: bool):
    return torch.float64 if upcast else x.dtype


# The per-sample coefficients are formed in float64 from the float64 table whatever the element
# dtype, then cast (``c(v)``): 1 - abar is ~1e-4 near t = 0, and forming it from a float32 abar
# loses ~3 digits (2.6e-5 relative on a DDPM step at t = 5). The kernels do the same, so
# ``upcast=False`` (the reference backend, the eager chain) is as careful as they are.
def q_sample_ref(x0, t, alpha_table, noise, upcast: bool = True) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (``noise_estimation_loss``'s x)."""
    dt = _compute_dtype(x0, upcast)
    a = _abar(alpha_table, clamp_timesteps(t, alpha_table, 0, x0.device), x0, torch.float64)
    return x0.to(dt) * a.sqrt().to(dt) + noise.to(dt) * (1.0 - a).sqrt().to(dt)


def ddim_step_ref(x_t, eps, t, t_next, alpha_table, eta: float = 0.0, noise=None, upcast: bool = True):
    """One ``generalized_steps`` update; returns (x_next, x0_pred).

    x0 = (x_t - sqrt(1 - at) eps) / sqrt(at);  c1 = eta sqrt((1 - at/an)(1 - an)/(1 - at));
    c2 = sqrt(1 - an - c1^2);  x_next = sqrt(an) x0 + c1 z + c2 eps.
    """
    dt = _compute_dtype(x_t, upcast)
    t = clamp_timesteps(t, alpha_table, 0, x_t.device)
    t_next = clamp_timesteps(t_next, alpha_table, -1, x_t.device)
    at = _abar(alpha_table, t, x_t, torch.float64)
    an = _abar(alpha_table, t_next, x_t, torch.float64)
    x, e = x_t.to(dt), eps.to(dt)

    def c(v):
        return v.to(dt)

    x0 = (x - e * c((1 - at).sqrt())) / c(at.sqrt())
    c1 = eta * ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
    c2 = ((1 - an) - c1**2).sqrt()
    out = c(an.sqrt()) * x0 + c(c2) * e
    if eta != 0.0:
        out = out + c(c1) * noise.to(dt)
    return out, x0


def ddpm_step_ref(x_t, eps, t, t_next, alpha_table, noise=None, clip: Optional[float] = 1.0, upcast: bool = True):
    """One ``ddpm_steps`` update; returns (x_next, x0_pred).

    beta = 1 - at/an; x0 = sqrt(1/at) x_t - sqrt(1/at - 1) eps, clamped to [-clip, clip];
    mean = (sqrt(an) beta x0 + sqrt(1 - beta)(1 - an) x_t) / (1 - at);
    x_next = mean + [t != 0] sqrt(beta) z  (the official exp(0.5 log beta)).
    """
    dt = _compute_dtype(x_t, upcast)
    t = clamp_timesteps(t, alpha_table, 0, x_t.device)
    t_next = clamp_timesteps(t_next, alpha_table, -1, x_t.device)
    at = _abar(alpha_table, t, x_t, torch.float64)
    an = _abar(alpha_table, t_next, x_t, torch.float64)
    beta = 1 - at / an
    x, e = x_t.to(dt), eps.to(dt)

    def c(v):
        return v.to(dt)

    x0 = c((1.0 / at).sqrt()) * x - c((1.0 / at - 1).sqrt()) * e
    if clip is not None:
        x0 = torch.clamp(x0, -clip, clip)
    mean = (c(an.sqrt() * beta) * x0 + c((1 - beta).sqrt() * (1 - an)) * x) / c(1.0 - at)
    mask = (t != 0).to(torch.float64).view(-1, *([1] * (x_t.dim() - 1)))  # of the clamped t, as the kernels
    return mean + c(mask * beta.sqrt()) * noise.to(dt), x0


def diffusion_loss_ref(eps_pred, noise, reduction: str = "sum_mean", upcast: bool = True) -> torch.Tensor:
    """||eps - eps_pred||^2 summed over all but the batch axis, then the mean over the batch
    (``sum_mean``, the official reduction) or the mean over every element (``mean``)."""
    dt = _compute_dtype(eps_pred, upcast)
    sq = (noise.to(dt) - eps_pred.to(dt)).square()
    if reduction == "mean":
        return sq.mean()
    return sq.sum(dim=tuple(range(1, eps_pred.dim()))).mean(dim=0)


def diffusion_loss_grad_ref(eps_pred, noise, reduction: str = "sum_mean", upcast: bool = True) -> torch.Tensor:
    """d loss / d eps_pred without autograd: 2 (eps_pred - eps) / B (sum_mean) or / numel (mean)."""
    dt = _compute_dtype(eps_pred, upcast)
    den = eps_pred.numel() if reduction == "mean" else eps_pred.shape[0]
    return (eps_pred.to(dt) - noise.to(dt)) * (2.0 / den)


def step_vjp_ref(kind: str, x_t, eps, t, t_next, alpha_table, noise, grad_out, grad_x0=None, *, eta: float = 0.0,
                 clip: Optional[float] = 1.0):
    """Gradients of one DDIM (``kind="ddim"``) or DDPM step wrt (x_t, eps, noise), by autograd
    through :func:`ddim_step_ref` / :func:`ddpm_step_ref` in float32 (float64 for float64 input).

    ``grad_out`` is the gradient of x_next, ``grad_x0`` that of the x0 prediction (either may be
    None, not both). The step is linear in x_t, eps and noise (DDPM: up to the clamp of x0, whose
    gradient is 0 outside [-clip, clip]), so seeded noise (``noise=None``) does not enter the
    gradients. Returns
    (grad_x_t, grad_eps, grad_noise or None), each in its input's dtype."""
    acc = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    x = x_t.detach().to(acc).requires_grad_()
    e = eps.detach().to(acc).requires_grad_()
    z = noise.detach().to(acc).requires_grad_() if noise is not None else x.new_zeros(())
    with torch.enable_grad():
        if kind == "ddim":
            out, x0 = ddim_step_ref(x, e, t, t_next, alpha_table, eta, z, upcast=False)
        else:
            out, x0 = ddpm_step_ref(x, e, t, t_next, alpha_table, z, clip, upcast=False)
        outs, grads = ([out], [grad_out.to(acc)]) if grad_out is not None else ([], [])
        if grad_x0 is not None:
            outs.append(x0)
            grads.append(grad_x0.to(acc))
        inputs = [x, e] + ([z] if noise is not None else [])
        g = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
    g = [torch.zeros_like(v) if gi is None else gi for gi, v in zip(g, inputs)]
    gz = g[2].to(noise.dtype) if noise is not None else None
    return g[0].to(x_t.dtype), g[1].to(eps.dtype), gz


def fast_ddpm_sample_ref(model, x_T, cond, schedule, kind: str = "ddim", eta: float = 0.0, seed: int = 0,
                         offset: int = 0, clip: Optional[float] = 1.0, upcast: bool = False, noise_fn=None):
    """The official sampling loop (``sg_generalized_steps`` / ``sg_ddpm_steps``) with the
    contract's noise: step i (0 = the first, at the largest t) draws ``(seed, offset + i)``;
    ``noise_fn(x)`` (e.g. ``torch.randn_like``, as the official code) replaces it when given.

    Returns (x_0, list of x0 predictions)."""
    seq = schedule.timesteps.tolist()
    seq_next = [-1] + seq[:-1]
    table = schedule.alpha_table(x_T.device)
    n = x_T.shape[0]
    x, x0s = x_T, []
    with torch.no_grad():
        for i, (tc, tn) in enumerate(zip(reversed(seq), reversed(seq_next))):
            t = torch.full((n,), tc, dtype=torch.int64, device=x.device)
            t_next = torch.full((n,), tn, dtype=torch.int64, device=x.device)
            inp = x if cond is None else torch.cat([cond, x], dim=1)
            e = model(inp, t.float())  # the official loops pass t as a float tensor
            z = noise_fn(x) if noise_fn is not None else normal_ref(x.shape, seed, offset + i, device=x.device)
            if kind == "ddim":
                x, x0 = ddim_step_ref(x, e, t, t_next, table, eta, z, upcast=upcast)
            else:
                x, x0 = ddpm_step_ref(x, e, t, t_next, table, z, clip, upcast=upcast)
            x, x0 = x.to(x_T.dtype), x0.to(x_T.dtype)  # the state is stored in x_T's dtype each step
            x0s.append(x0)
    return x, x0s
