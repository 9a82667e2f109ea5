"""Few-step diffusion (Fast-DDPM) ops: ``q_sample``, ``ddim_step``, ``ddpm_step`` and the fused
training loss ``diffusion_loss``, each one pass over the volume with the noise made in the
kernel from ``(seed, offset)`` (see the noise contract in ``medkernels.reference.diffusion``).

Backends: ``cuda`` (our CUDA kernels, when built with nvcc), ``triton`` (GPU, or the interpreter on
CPU tensors), ``cpu`` (our C++/OpenMP) and
``reference`` (the eager chain of ``medkernels.reference.diffusion``). Tensors are (B, C, H, W),
(B, C, D, H, W) or any (B, ...); t and t_next are per-sample absolute timesteps.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import _dispatch
from .._dlpack import accepts_dlpack
from .._extension import extension
from ..reference import diffusion as ref
from . import _kit
from ._common import check_same, check_tensor, cuda_stream, describe, dtype_code

OP_Q_SAMPLE, OP_DDIM, OP_DDPM, OP_LOSS, OP_NORMAL = 0, 1, 2, 3, 4
REDUCTIONS = ("sum_mean", "mean")
LOSS_BLOCK = 1024  # elements per partial sum of the loss, the same on every backend


def _cuda_auto(**inputs) -> bool:
    # auto picks the CUDA kernel only once it has beaten Triton on a GPU in our benchmarks; no
    # GPU run is recorded yet, so auto runs Triton on GPU tensors.
    return False


def _make_dispatcher(name: str) -> _dispatch.Dispatcher:
    return _dispatch.Dispatcher(
        name,
        (
            _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("diffusion_fwd_cuda"), auto=_cuda_auto),
            _dispatch.Backend(
                "triton", _dispatch.triton_devices(), machine=_dispatch.triton_machine, auto=_dispatch.triton_auto
            ),
            _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("diffusion_fwd_cpu")),
            _dispatch.Backend("reference", ("cpu", "cuda")),
        ),
    )


_DISPATCH = {op: _make_dispatcher(op) for op in ("q_sample", "ddim_step", "ddpm_step", "diffusion_loss")}


# --- backends: one entry point each, ``run(op, x, out, **kw)`` ------------------------------
def _run_triton(op, x, out, **kw):
    from ..triton.diffusion import diffusion_fwd

    return diffusion_fwd(op, x, out, **kw)


def _run_compiled(device_kind: str):
    def run(op, x, out, **kw):
        return _launch_compiled(device_kind, op, x, out, **kw)

    return run


def _launch_compiled(device_kind, op, x, out, *, eps=None, noise=None, x0_out=None, partial=None, table=None,
                     t=None, t_next=None, seed=0, offset=0, eta=0.0, clip=None, scale=0.0):
    C = extension.module
    p = C.DiffusionParams()
    p.dtype = dtype_code(x.dtype)
    p.op = op
    p.x, p.out = x.data_ptr(), out.data_ptr()
    p.eps = eps.data_ptr() if eps is not None else 0
    p.noise = noise.data_ptr() if noise is not None else 0
    p.x0_out = x0_out.data_ptr() if x0_out is not None else 0
    p.partial = partial.data_ptr() if partial is not None else 0
    p.table = table.data_ptr() if table is not None else 0
    p.num_train_timesteps = table.numel() - 1 if table is not None else 0
    p.t = t.data_ptr() if t is not None else 0
    p.t_next = t_next.data_ptr() if t_next is not None else 0
    p.batch = x.shape[0]
    p.numel = x.numel() // max(x.shape[0], 1)
    p.seed, p.offset = seed, offset
    p.eta, p.scale = float(eta), float(scale)
    p.has_clip = clip is not None
    p.clip = float(clip) if clip is not None else 0.0
    p.block = LOSS_BLOCK
    if device_kind == "cuda":
        C.diffusion_fwd_cuda(p, cuda_stream(x))
    else:
        C.diffusion_fwd_cpu(p)
    return out


def _run_reference(op, x, out, *, eps=None, noise=None, x0_out=None, partial=None, table=None, t=None, t_next=None,
                   seed=0, offset=0, eta=0.0, clip=None, scale=0.0):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = noise if noise is not None else ref.normal_ref(x.shape, seed, offset, device=x.device)
    z = z.to(acc)
    if op == OP_NORMAL:
        y = z
    elif op == OP_Q_SAMPLE:
        y = ref.q_sample_ref(x.to(acc), t, table, z, upcast=False)
    elif op == OP_DDIM:
        y, x0 = ref.ddim_step_ref(x.to(acc), eps.to(acc), t, t_next, table, eta, z, upcast=False)
    elif op == OP_DDPM:
        y, x0 = ref.ddpm_step_ref(x.to(acc), eps.to(acc), t, t_next, table, z, clip, upcast=False)
    else:  # loss
        d = x.to(acc) - z
        y = d * scale
        B = x.shape[0]
        dd = (d * d).reshape(B, -1)
        n = dd.shape[1]
        pad = partial.shape[1] * LOSS_BLOCK - n
        dd = torch.nn.functional.pad(dd, (0, pad)).view(B, -1, LOSS_BLOCK)
        partial.copy_(dd.sum(-1).to(partial.dtype))
    if x0_out is not None:
        x0_out.copy_(x0)
    return out.copy_(y)


_RUN = {"cuda": _run_compiled("cuda"), "triton": _run_triton, "cpu": _run_compiled("cpu"), "reference": _run_reference}


def _empty0(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0,))


# --- the custom ops: the one compile-safe boundary ----------------------------------------
@torch.library.custom_op("medkernels::diffusion_q_sample", mutates_args=())
def _q_sample_op(
    x0: torch.Tensor, t: torch.Tensor, table: torch.Tensor, noise: Optional[torch.Tensor], seed: int, offset: int,
    backend: str,
) -> torch.Tensor:
    out = torch.empty_like(x0)
    return _RUN[backend](OP_Q_SAMPLE, x0, out, noise=noise, table=table, t=t, seed=seed, offset=offset)


@_q_sample_op.register_fake
def _(x0, t, table, noise, seed, offset, backend):
    return torch.empty_like(x0)


def _q_sample_setup_context(ctx, inputs, output):
    x0, t, table, noise, seed, offset, backend = inputs
    ctx.save_for_backward(t, table)
    ctx.has_noise = noise is not None


def _q_sample_backward(ctx, grad):
    # d x_t / d x0 = sqrt(abar_t), d x_t / d eps = sqrt(1 - abar_t), per sample
    t, table = ctx.saved_tensors
    a = table.index_select(0, t + 1).view(-1, *([1] * (grad.dim() - 1)))
    g = grad.to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
    gx = (g * a.sqrt().to(g.dtype)).to(grad.dtype)
    gn = (g * (1 - a).sqrt().to(g.dtype)).to(grad.dtype) if ctx.has_noise else None
    return gx, None, None, gn, None, None, None


_q_sample_op.register_autograd(_q_sample_backward, setup_context=_q_sample_setup_context)


@torch.library.custom_op("medkernels::diffusion_ddim_step", mutates_args=())
def _ddim_step_op(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, table: torch.Tensor,
    noise: Optional[torch.Tensor], seed: int, offset: int, eta: float, return_x0: bool, backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(x_t)
    x0 = torch.empty_like(x_t) if return_x0 else _empty0(x_t)
    _RUN[backend](OP_DDIM, x_t, out, eps=eps, noise=noise, x0_out=x0 if return_x0 else None, table=table, t=t,
                  t_next=t_next, seed=seed, offset=offset, eta=eta)
    return out, x0


@_ddim_step_op.register_fake
def _(x_t, eps, t, t_next, table, noise, seed, offset, eta, return_x0, backend):
    return torch.empty_like(x_t), (torch.empty_like(x_t) if return_x0 else _empty0(x_t))


@torch.library.custom_op("medkernels::diffusion_ddpm_step", mutates_args=())
def _ddpm_step_op(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, table: torch.Tensor,
    noise: Optional[torch.Tensor], seed: int, offset: int, clip: Optional[float], return_x0: bool, backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(x_t)
    x0 = torch.empty_like(x_t) if return_x0 else _empty0(x_t)
    _RUN[backend](OP_DDPM, x_t, out, eps=eps, noise=noise, x0_out=x0 if return_x0 else None, table=table, t=t,
                  t_next=t_next, seed=seed, offset=offset, clip=clip)
    return out, x0


@_ddpm_step_op.register_fake
def _(x_t, eps, t, t_next, table, noise, seed, offset, clip, return_x0, backend):
    return torch.empty_like(x_t), (torch.empty_like(x_t) if return_x0 else _empty0(x_t))


def _step_setup_context(ctx, inputs, output):
    x_t, eps, t, t_next, table, noise = inputs[:6]
    ctx.save_for_backward(x_t, eps, t, t_next, table, noise)
    ctx.coef = inputs[8]  # eta (DDIM) or clip (DDPM)


def _step_backward(kind):
    def backward(ctx, grad_out, grad_x0):
        x_t, eps, t, t_next, table, noise = ctx.saved_tensors
        gx0 = grad_x0 if grad_x0 is not None and grad_x0.shape == x_t.shape else None
        coef = {"eta": ctx.coef} if kind == "ddim" else {"clip": ctx.coef}
        gx, ge, gz = ref.step_vjp_ref(kind, x_t, eps, t, t_next, table, noise, grad_out, gx0, **coef)
        return gx, ge, None, None, None, gz, None, None, None, None, None

    return backward


# the steps are linear in x_t, eps and noise: their gradients are the reference chain's (eager)
_ddim_step_op.register_autograd(_step_backward("ddim"), setup_context=_step_setup_context)
_ddpm_step_op.register_autograd(_step_backward("ddpm"), setup_context=_step_setup_context)



def _nblocks(eps_pred: torch.Tensor) -> int:
    n = eps_pred.numel() // eps_pred.shape[0]
    return (n + LOSS_BLOCK - 1) // LOSS_BLOCK


@torch.library.custom_op("medkernels::diffusion_loss", mutates_args=())
def _loss_op(
    eps_pred: torch.Tensor, noise: Optional[torch.Tensor], seed: int, offset: int, reduction: str, backend: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    B = eps_pred.shape[0]
    den = eps_pred.numel() if reduction == "mean" else B
    grad = torch.empty_like(eps_pred)
    partial = torch.empty((B, _nblocks(eps_pred)), dtype=torch.float64, device=eps_pred.device)
    _RUN[backend](OP_LOSS, eps_pred, grad, noise=noise, partial=partial, seed=seed, offset=offset, scale=2.0 / den)
    # fixed-order reduction of the per-block sums: the same bits on every run
    loss = partial.sum() / den
    return loss.to(_kit.acc_dtype(eps_pred.dtype)), grad


@_loss_op.register_fake
def _(eps_pred, noise, seed, offset, reduction, backend):
    return eps_pred.new_empty((), dtype=_kit.acc_dtype(eps_pred.dtype)), torch.empty_like(eps_pred)


def _loss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _loss_backward(ctx, grad_loss, grad_grad):
    (g,) = ctx.saved_tensors
    return g * grad_loss.to(g.dtype), None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup_context)


@torch.library.custom_op("medkernels::diffusion_normal", mutates_args=())
def _normal_op(like: torch.Tensor, seed: int, offset: int, backend: str) -> torch.Tensor:
    out = like.new_empty(like.shape)  # contiguous: the kernels fill memory order, which must be logical order
    return _RUN[backend](OP_NORMAL, out, out, seed=seed, offset=offset)


@_normal_op.register_fake
def _(like, seed, offset, backend):
    return like.new_empty(like.shape)


# --- validation -------------------------------------------------------------------------------
def _check_x(name: str, x) -> None:
    check_tensor(name, x)
    if x.dim() < 2:
        raise ValueError(f"{name} must be (B, C, ...) with at least 2 dims, got {describe(x)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got {describe(x)}")
    if x.numel() // x.shape[0] >= 2**34 or x.shape[0] > 65535:
        raise ValueError(f"{name} must have < 2^34 elements per sample and <= 65535 samples (the Philox counter and "
                         f"the launch grid), got {describe(x)}")


def _table(schedule, x: torch.Tensor) -> torch.Tensor:
    if not hasattr(schedule, "alpha_table"):
        raise TypeError(f"schedule must be a FastDDPMSchedule, got {type(schedule).__name__}")
    return schedule.alpha_table(x.device)


def _timesteps(name: str, t, x: torch.Tensor, low: int, high: int, check: bool = True) -> torch.Tensor:
    """t as a contiguous (B,) int64 tensor on x's device, checked to lie in low..high.

    CPU tensors are checked on the host (no sync to pay). CUDA tensors are checked with
    ``torch._assert_async`` (no host sync; a bad value fails the stream); under torch.compile or a
    CUDA-graph capture the range check is left out and the kernels clamp t into the table."""
    B = x.shape[0]
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int or an integer tensor of shape ({B},), got {type(t).__name__}")
    if isinstance(t, int):
        if not low <= t <= high:
            raise ValueError(f"{name} must be in {low}..{high}, got {t}")
        return torch.full((B,), t, dtype=torch.int64, device=x.device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {describe(t)}")
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.shape[0] not in (1, B):
        raise ValueError(f"{name} must have shape ({B},) (one timestep per sample of x), got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}: move them to one device")
    t = t.to(torch.int64).expand(B).contiguous()
    if not check or _skip_value_checks(t):
        return t
    if t.device.type == "cpu":
        for v in t.tolist():  # B values: cheaper than tensor reductions
            if not low <= v <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {v}")
    else:
        torch._assert_async(((t >= low) & (t <= high)).all(), f"{name} must be in {low}..{high}")
    return t


def _skip_value_checks(t: torch.Tensor) -> bool:
    """Under torch.compile or a CUDA-graph capture the range checks are left out (the kernels
    clamp t into the table); everywhere else they run."""
    if torch.compiler.is_compiling():
        return True
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_next(t: torch.Tensor, t_next: torch.Tensor) -> None:
    if _skip_value_checks(t):
        return
    if t.device.type == "cpu":
        for i, (a, n) in enumerate(zip(t.tolist(), t_next.tolist())):
            if n >= a:
                raise ValueError(f"t_next must be in -1..t-1 per sample, got t_next={n} for t={a} (sample {i})")
    else:
        torch._assert_async((t_next < t).all(), "t_next must be in -1..t-1 per sample")


def _seed_args(noise, seed, offset, x: torch.Tensor, needed: bool):
    """(noise or None, seed, offset) after checks; ``needed``: the op draws noise at all."""
    ref.check_seed("offset", offset)
    if noise is not None:
        check_tensor("noise", noise)
        if noise.shape != x.shape:
            raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {describe(noise)}")
        check_same("x", x, noise=noise)
        return noise.contiguous(), 0, offset
    if seed is None:
        if needed:
            raise ValueError("pass seed= (an int, for in-kernel Philox noise) or noise= (a tensor like x)")
        return None, 0, offset
    return None, ref.check_seed("seed", seed), offset


def _select(op: str, backend: str, x: torch.Tensor) -> str:
    return _DISPATCH[op].select(backend, x.device, x.dtype, x=x)


# --- the public functions ---------------------------------------------------------------------
@accepts_dlpack
def q_sample(x0, t, *, schedule, noise=None, seed=None, offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """Forward noising ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` in one pass.

    Args:
        x0: (B, C, ...) clean data, float32/float16/bfloat16/float64, any layout (read as contiguous).
        t: (B,) integer tensor (or an int) of absolute timesteps in 0..T-1.
        schedule: a :class:`~medkernels.diffusion.FastDDPMSchedule`.
        noise: eps as a tensor like x0, or None to make it in the kernel from ``seed``.
        seed, offset: the Philox stream (see the noise contract); the same pair gives the same
            eps on every backend, device and dtype.
        backend: "auto", "triton", "cpu" or "reference".

    Returns:
        x_t, (B, C, ...) contiguous, in x0's dtype; differentiable wrt x0 (and ``noise``).
    """
    _check_x("x0", x0)
    table = _table(schedule, x0)
    t = _timesteps("t", t, x0, 0, table.numel() - 2)
    noise, seed, offset = _seed_args(noise, seed, offset, x0, True)
    name = _select("q_sample", backend, x0)
    return _q_sample_op(x0.contiguous(), t, table, noise, seed, offset, name)


def _step_inputs(x_t, eps, t, t_next, schedule, check: bool):
    _check_x("x_t", x_t)
    check_tensor("eps", eps)
    if eps.shape != x_t.shape:
        raise ValueError(f"eps must have the shape of x_t {tuple(x_t.shape)}, got {describe(eps)}")
    check_same("x_t", x_t, eps=eps)
    table = _table(schedule, x_t)
    T = table.numel() - 1
    t = _timesteps("t", t, x_t, 0, T - 1, check)
    t_next = _timesteps("t_next", t_next, x_t, -1, T - 2, check)
    if check:
        _check_next(t, t_next)
    return table, t, t_next


@accepts_dlpack
def ddim_step(x_t, eps, t, t_next, *, schedule, eta: float = 0.0, noise=None, seed=None, offset: int = 0,
              return_x0: bool = False, backend: str = "auto", check_timesteps: bool = True):
    """One DDIM ("generalized") step from t to t_next, fused (Fast-DDPM ``generalized_steps``).

    ``x0 = (x_t - sqrt(1 - at) eps) / sqrt(at)``, ``c1 = eta sqrt((1 - at/an)(1 - an)/(1 - at))``,
    ``c2 = sqrt(1 - an - c1^2)``, ``x_next = sqrt(an) x0 + c1 z + c2 eps``.

    Args:
        x_t, eps: (B, C, ...) state and predicted noise, one dtype.
        t: (B,) absolute timesteps in 0..T-1; t_next: (B,) in -1..t-1 (-1: abar = 1, the end).
        eta: 0 is deterministic DDIM (no noise drawn); > 0 needs ``seed`` or ``noise``.
        return_x0: also return the x0 prediction.
        check_timesteps: check the ranges of t and t_next (on CUDA tensors with
            ``torch._assert_async``: no host sync, but a few small launches per call); a caller
            whose timesteps are valid by construction (the sampler) may turn it off. Without the
            check every backend clamps out-of-range tensor timesteps into the table (t to 0..T-1,
            t_next to -1..T-1) and does not refuse t_next >= t (t_next > t gives NaN).

    Returns:
        x_next, or (x_next, x0_pred) with ``return_x0``; contiguous, in x_t's dtype;
        differentiable wrt x_t, eps (and ``noise``); the backward is the reference chain's.
    """
    table, t, t_next = _step_inputs(x_t, eps, t, t_next, schedule, check_timesteps)
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    noise, seed, offset = _seed_args(noise, seed, offset, x_t, eta != 0.0)
    if noise is None and eta != 0.0 and seed is None:
        raise ValueError("eta > 0 needs seed= or noise=")
    name = _select("ddim_step", backend, x_t)
    out, x0 = _ddim_step_op(x_t.contiguous(), eps.contiguous(), t, t_next, table, noise, seed, offset, eta,
                            return_x0, name)
    return (out, x0) if return_x0 else out


@accepts_dlpack
def ddpm_step(x_t, eps, t, t_next, *, schedule, noise=None, seed=None, offset: int = 0, clip: Optional[float] = 1.0,
              return_x0: bool = False, backend: str = "auto", check_timesteps: bool = True):
    """One ancestral DDPM step from t to t_next, fused (Fast-DDPM ``ddpm_steps``).

    ``beta = 1 - at/an``; ``x0 = clamp(sqrt(1/at) x_t - sqrt(1/at - 1) eps, -clip, clip)``;
    ``x_next = (sqrt(an) beta x0 + sqrt(1 - beta)(1 - an) x_t) / (1 - at) + [t != 0] sqrt(beta) z``.
    ``clip=None`` leaves x0 unclamped. Noise from ``seed``/``offset`` or ``noise``.

    Returns:
        x_next, or (x_next, x0_pred) with ``return_x0``; differentiable wrt x_t, eps (and
        ``noise``; 0 where x0 is clipped); the backward is the reference chain's.
    """
    table, t, t_next = _step_inputs(x_t, eps, t, t_next, schedule, check_timesteps)
    if clip is not None:
        clip = float(clip)
        if not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
    noise, seed, offset = _seed_args(noise, seed, offset, x_t, True)
    name = _select("ddpm_step", backend, x_t)
    out, x0 = _ddpm_step_op(x_t.contiguous(), eps.contiguous(), t, t_next, table, noise, seed, offset, clip,
                            return_x0, name)
    return (out, x0) if return_x0 else out


@accepts_dlpack
def diffusion_loss(eps_pred, x0, t, seed: int, *, schedule, offset: int = 0, reduction: str = "sum_mean",
                   backend: str = "auto") -> torch.Tensor:
    """The Fast-DDPM training loss with eps regenerated from ``(seed, offset)`` instead of stored.

    Use the same ``(seed, offset)`` as the :func:`q_sample` that made the model's input:
    ``x_t = q_sample(x0, t, seed=s, offset=o)``, ``eps_pred = model(cat([cond, x_t], 1), t)``,
    ``loss = diffusion_loss(eps_pred, x0, t, s, offset=o)``. One pass computes the loss and its
    gradient wrt eps_pred (kept for backward). x0 and t are checked against eps_pred; the
    eps-prediction loss itself does not depend on them.

    reduction: ``"sum_mean"`` (sum over C and space, mean over the batch: the official
    ``noise_estimation_loss``) or ``"mean"`` (over every element).

    Returns:
        A 0-d loss, float32 (float64 for float64 input), differentiable wrt eps_pred.
    """
    _check_x("eps_pred", eps_pred)
    check_tensor("x0", x0)
    if x0.shape != eps_pred.shape:
        raise ValueError(f"x0 must have the shape of eps_pred {tuple(eps_pred.shape)}, got {describe(x0)}")
    table = _table(schedule, eps_pred)
    _timesteps("t", t, eps_pred, 0, table.numel() - 2)
    seed = ref.check_seed("seed", seed)
    ref.check_seed("offset", offset)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    name = _select("diffusion_loss", backend, eps_pred)
    loss, _ = _loss_op(eps_pred.contiguous(), None, seed, offset, reduction, name)
    return loss


def randn(like: torch.Tensor, seed: int, offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """The contract's standard normal noise for a tensor like ``like`` (B, ...), in its dtype.

    The noise is indexed by logical position, so a channels-last, permuted or strided ``like``
    gets the same values as a contiguous one of its shape; the result is contiguous on every
    backend."""
    _check_x("like", like)
    name = _select("q_sample", backend, like)
    return _normal_op(like, ref.check_seed("seed", seed), ref.check_seed("offset", offset), name)


def philox_bits(shape, seed: int, offset: int = 0, *, device="cpu", backend: str = "reference") -> torch.Tensor:
    """(B, ceil(N / 4), 4) int64: the Philox words behind noise of ``shape`` (B, ...) for
    ``(seed, offset)``, made by one backend ("triton", "cpu" or "reference"): for bit-exact checks."""
    seed, offset = ref.check_seed("seed", seed), ref.check_seed("offset", offset)
    shape = tuple(shape)
    B, N = shape[0], math.prod(shape[1:])
    device = torch.device(device)
    if backend == "reference":
        return ref.philox_bits_ref(shape, seed, offset, device)
    if backend == "triton":
        from ..triton.diffusion import philox_bits as triton_bits

        return triton_bits(shape, seed, offset, device)
    if backend == "cpu":
        why = _dispatch.cpu_machine("philox_fill_cpu")()
        if why:
            raise RuntimeError(f"philox_bits: backend 'cpu' is unavailable: {why}")
        groups = (N + 3) // 4
        out = torch.empty((B, groups, 4), dtype=torch.int64)
        extension.module.philox_fill_cpu(seed, offset, B, groups, out.data_ptr())
        return out.to(device)
    raise ValueError(f"backend must be 'triton', 'cpu' or 'reference', got {backend!r}")


def diffusion_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend the diffusion ops would run for x (for benchmarks and reports)."""
    return _select("ddim_step", backend, x)
