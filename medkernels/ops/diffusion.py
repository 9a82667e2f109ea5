"""Few-step diffusion (Fast-DDPM) ops: ``q_sample``, ``ddim_step``, ``ddpm_step`` and the fused
training loss ``diffusion_loss``, each one pass over the volume with the noise made in the
kernel from ``(seed, offset)`` (see the noise contract in ``medkernels.reference.diffusion``),
written on :mod:`medkernels.ops._kit`.

Backends: ``cuda`` (our CUDA kernels, when built with nvcc), ``triton`` (GPU, or the interpreter on
CPU tensors), ``cpu`` (our C++/OpenMP) and
``reference`` (the eager chain of ``medkernels.reference.diffusion``). Tensors are (B, C, H, W),
(B, C, D, H, W) or any (B, ...); t and t_next are per-sample absolute timesteps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _dispatch
from .._extension import extension
from ..reference import diffusion as ref
from . import _kit
from ._common import check_same, check_tensor, describe

REDUCTIONS = ("sum_mean", "mean")
LOSS_BLOCK = 1024  # elements per partial sum of the loss, the same on every backend


@_kit.options
class NoiseOptions:  # q_sample and the noise itself
    seed: int
    offset: int


@_kit.options
class DdimOptions:
    seed: int
    offset: int
    eta: float
    return_x0: bool


@_kit.options
class DdpmOptions:
    seed: int
    offset: int
    clip: Optional[float]  # None: x0 unclamped
    return_x0: bool


@_kit.options
class LossOptions:
    seed: int
    offset: int
    reduction: str  # one of REDUCTIONS


# --- backends: one method per op, each filling the outputs it is given (contiguous (B, ...)):
# --- q_sample(o, x0, t, table, noise, out); ddim_step / ddpm_step(o, x_t, eps, t, t_next, table,
# --- noise, out, x0_out or None); loss(o, eps_pred, noise, scale, grad, partial) with partial
# --- (B, cdiv(N, LOSS_BLOCK)) float64 sums of d^2; normal(o, out); philox_bits(shape, seed, offset,
# --- device) -> (B, ceil(N / 4), 4) int64, where ``has_philox_bits``
class _Fused:
    """The backends that run every op as one kernel with an op code, ``_fused(op, x, out, **kw)``
    (op one of the kernels' ``DiffusionOp`` names)."""

    def q_sample(self, o, x0, t, table, noise, out):
        self._fused("q_sample", x0, out, noise=noise, table=table, t=t, seed=o.seed, offset=o.offset)

    def ddim_step(self, o, x_t, eps, t, t_next, table, noise, out, x0_out):
        self._fused("ddim", x_t, out, eps=eps, noise=noise, x0_out=x0_out, table=table, t=t, t_next=t_next,
                    seed=o.seed, offset=o.offset, eta=o.eta)

    def ddpm_step(self, o, x_t, eps, t, t_next, table, noise, out, x0_out):
        self._fused("ddpm", x_t, out, eps=eps, noise=noise, x0_out=x0_out, table=table, t=t, t_next=t_next,
                    seed=o.seed, offset=o.offset, clip=o.clip)

    def loss(self, o, eps_pred, noise, scale, grad, partial):
        self._fused("loss", eps_pred, grad, noise=noise, partial=partial, seed=o.seed, offset=o.offset, scale=scale)

    def normal(self, o, out):
        self._fused("normal", out, out, seed=o.seed, offset=o.offset)


class _Compiled(_Fused, _kit.Compiled):
    @property
    def has_philox_bits(self) -> bool:
        return "philox_bits" in self.symbols

    def _fused(self, op, x, out, *, eps=None, noise=None, x0_out=None, partial=None, table=None, t=None,
               t_next=None, seed=0, offset=0, eta=0.0, clip=None, scale=0.0):
        p = self.C.DiffusionParams()
        p.dtype = self.dtype(x.dtype)
        p.op = getattr(self.C.DiffusionOp, op).value
        p.x, p.out, p.eps, p.noise, p.x0_out = (_kit.ptr(a) for a in (x, out, eps, noise, x0_out))
        p.partial, p.table, p.t, p.t_next = (_kit.ptr(a) for a in (partial, table, t, t_next))
        p.num_train_timesteps = table.numel() - 1 if table is not None else 0
        p.batch = x.shape[0]
        p.numel = x.numel() // max(x.shape[0], 1)
        p.seed, p.offset = seed, offset
        p.eta, p.scale = float(eta), float(scale)
        p.has_clip = clip is not None
        p.clip = float(clip) if clip is not None else 0.0
        p.block = LOSS_BLOCK
        self.launch("fwd", p, x)

    def philox_bits(self, shape, seed, offset, device):
        why = extension.missing_reason(self.symbols["philox_bits"], self.kind.device)
        if why:
            raise RuntimeError(f"philox_bits: backend {self.kind.device!r} is unavailable: {why}")
        B, groups = shape[0], (math.prod(shape[1:]) + 3) // 4
        out = torch.empty((B, groups, 4), dtype=torch.int64)
        getattr(self.C, self.symbols["philox_bits"])(seed, offset, B, groups, out.data_ptr())  # a host loop
        return out.to(device)


class _Triton(_Fused):
    has_philox_bits = True

    def _fused(self, op, x, out, **kw):
        from ..triton import diffusion as tri

        tri.diffusion_fwd(getattr(tri, "OP_" + op.upper()), x, out, **kw)

    def philox_bits(self, shape, seed, offset, device):
        from ..triton.diffusion import philox_bits

        return philox_bits(shape, seed, offset, device)


class _Reference:
    """The float64-capable eager chain: the formulas in the accumulation dtype, noise from
    ``normal_ref`` (or the given tensor)."""

    has_philox_bits = True

    def _z(self, o, x, noise):
        z = noise if noise is not None else ref.normal_ref(x.shape, o.seed, o.offset, device=x.device)
        return z.to(_kit.acc_dtype(x.dtype))

    def q_sample(self, o, x0, t, table, noise, out):
        acc = _kit.acc_dtype(x0.dtype)
        out.copy_(ref.q_sample_ref(x0.to(acc), t, table, self._z(o, x0, noise), upcast=False))

    def _step(self, y, x0, out, x0_out):
        out.copy_(y)
        if x0_out is not None:
            x0_out.copy_(x0)

    def ddim_step(self, o, x_t, eps, t, t_next, table, noise, out, x0_out):
        acc = _kit.acc_dtype(x_t.dtype)
        self._step(*ref.ddim_step_ref(x_t.to(acc), eps.to(acc), t, t_next, table, o.eta, self._z(o, x_t, noise),
                                      upcast=False), out, x0_out)

    def ddpm_step(self, o, x_t, eps, t, t_next, table, noise, out, x0_out):
        acc = _kit.acc_dtype(x_t.dtype)
        self._step(*ref.ddpm_step_ref(x_t.to(acc), eps.to(acc), t, t_next, table, self._z(o, x_t, noise), o.clip,
                                      upcast=False), out, x0_out)

    def loss(self, o, eps_pred, noise, scale, grad, partial):
        d = eps_pred.to(_kit.acc_dtype(eps_pred.dtype)) - self._z(o, eps_pred, noise)
        grad.copy_(d * scale)
        B = eps_pred.shape[0]
        dd = (d * d).reshape(B, -1)
        dd = torch.nn.functional.pad(dd, (0, partial.shape[1] * LOSS_BLOCK - dd.shape[1])).view(B, -1, LOSS_BLOCK)
        partial.copy_(dd.sum(-1).to(partial.dtype))

    def normal(self, o, out):
        out.copy_(self._z(o, out, None))

    def philox_bits(self, shape, seed, offset, device):
        return ref.philox_bits_ref(shape, seed, offset, device)


_BACKENDS = (
    # auto picks the CUDA kernel only once it has beaten Triton on a GPU in our benchmarks; no GPU
    # run is recorded yet, so auto runs Triton on GPU tensors
    _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("diffusion_fwd_cuda"), auto=lambda **_: False,
                      impl=_Compiled(_kit.CUDA, {"fwd": "diffusion_fwd_cuda"})),
    _dispatch.Backend("triton", _dispatch.triton_devices(), machine=_dispatch.triton_machine,
                      auto=_dispatch.triton_auto, impl=_Triton()),
    _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("diffusion_fwd_cpu"),
                      impl=_Compiled(_kit.CPU, {"fwd": "diffusion_fwd_cpu", "philox_bits": "philox_fill_cpu"})),
    _dispatch.Backend("reference", ("cpu", "cuda"), impl=_Reference()),
)
_DISPATCH = {op: _dispatch.Dispatcher(op, _BACKENDS) for op in ("q_sample", "ddim_step", "ddpm_step", "diffusion_loss")}
_BITS = {b.name: b.impl for b in _BACKENDS if b.impl.has_philox_bits}  # the backends philox_bits runs


# --- the ops: the one compile-safe boundary (custom ops medkernels::diffusion_*) -------------------
def _new(x: torch.Tensor) -> torch.Tensor:
    """A contiguous output of x's shape and dtype (the kernels fill memory order, which must be
    logical order)."""
    return _kit.empty(x.shape, dtype=x.dtype, device=x.device)


def _q_sample_forward(impl, o, x0, t, table, noise):
    out = _new(x0)
    impl.q_sample(o, x0, t, table, noise, out)
    return [out]


def _q_sample_backward(impl, o, needs, grads, saved):
    # d x_t / d x0 = sqrt(abar_t), d x_t / d eps = sqrt(1 - abar_t), per sample
    t, table = saved
    grad = grads[0]
    a = table.index_select(0, t + 1).view(-1, *([1] * (grad.dim() - 1)))
    g = grad.to(_kit.acc_dtype(grad.dtype))
    gx = (g * a.sqrt().to(g.dtype)).to(grad.dtype) if needs[0] else None
    gn = (g * (1 - a).sqrt().to(g.dtype)).to(grad.dtype) if needs[3] else None
    return [gx, None, None, gn]


_Q_SAMPLE = _kit.Op("diffusion_q_sample", tensors="Tensor x0, Tensor t, Tensor table, Tensor? noise",
                    opts=NoiseOptions, dispatcher=_DISPATCH["q_sample"], forward=_q_sample_forward,
                    fake=lambda impl, o, x0, *_: [_new(x0)], backward=_q_sample_backward,
                    save=lambda tensors, outs: tensors[1:3], backward_op=False)


def _step_op(name: str, kind: str, opts, run, coef):
    """A DDIM or DDPM step: ``run(impl)`` is the backend's method, ``coef(o)`` the step's
    keyword (eta or clip) for the reference chain's gradients. The steps are linear in x_t, eps
    and noise: their backward is the reference chain's (eager torch code)."""

    def outputs(o, x_t):
        return [_new(x_t) for _ in range(2 if o.return_x0 else 1)]

    def forward(impl, o, x_t, eps, t, t_next, table, noise):
        outs = outputs(o, x_t)
        run(impl)(o, x_t, eps, t, t_next, table, noise, outs[0], outs[1] if o.return_x0 else None)
        return outs

    def backward(impl, o, needs, grads, saved):
        x_t, eps, t, t_next, table, noise = saved
        grad_x0 = grads[1] if len(grads) > 1 else None
        gx, ge, gz = ref.step_vjp_ref(kind, x_t, eps, t, t_next, table, noise, grads[0], grad_x0, **coef(o))
        return [gx, ge, None, None, None, gz]

    return _kit.Op(name, tensors="Tensor x_t, Tensor eps, Tensor t, Tensor t_next, Tensor table, Tensor? noise",
                   opts=opts, dispatcher=_DISPATCH[f"{kind}_step"], forward=forward,
                   fake=lambda impl, o, x_t, *_: outputs(o, x_t), backward=backward,
                   save=lambda tensors, outs: tensors, backward_op=False)


_DDIM = _step_op("diffusion_ddim_step", "ddim", DdimOptions, lambda impl: impl.ddim_step, lambda o: {"eta": o.eta})
_DDPM = _step_op("diffusion_ddpm_step", "ddpm", DdpmOptions, lambda impl: impl.ddpm_step, lambda o: {"clip": o.clip})


def _loss_forward(impl, o, eps_pred, noise):
    B = eps_pred.shape[0]
    den = eps_pred.numel() if o.reduction == "mean" else B
    grad = _new(eps_pred)
    blocks = (eps_pred.numel() // B + LOSS_BLOCK - 1) // LOSS_BLOCK
    partial = _kit.empty((B, blocks), dtype=torch.float64, device=eps_pred.device)  # sums of d^2 per block
    impl.loss(o, eps_pred, noise, 2.0 / den, grad, partial)
    # fixed-order reduction of the per-block sums: the same bits on every run
    return [(partial.sum() / den).to(_kit.acc_dtype(eps_pred.dtype)), grad]


def _loss_fake(impl, o, eps_pred, noise):
    return [eps_pred.new_empty((), dtype=_kit.acc_dtype(eps_pred.dtype)), _new(eps_pred)]


def _loss_backward(impl, o, needs, grads, saved):
    (g,) = saved  # the gradient wrt eps_pred, made by the forward pass
    return [g * grads[0].to(g.dtype), None]


_LOSS = _kit.Op("diffusion_loss", tensors="Tensor eps_pred, Tensor? noise", opts=LossOptions,
                dispatcher=_DISPATCH["diffusion_loss"], forward=_loss_forward, fake=_loss_fake,
                backward=_loss_backward, save=lambda tensors, outs: outs[1:], no_grad_outputs=(1,), backward_op=False)


def _normal_forward(impl, o, like):
    out = _new(like)
    impl.normal(o, out)
    return [out]


_NORMAL = _kit.Op("diffusion_normal", tensors="Tensor like", opts=NoiseOptions, dispatcher=_DISPATCH["q_sample"],
                  forward=_normal_forward, fake=lambda impl, o, like: [_new(like)])


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
@_kit.public
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
    return _Q_SAMPLE(NoiseOptions(seed, offset), name, x0.contiguous(), t, table, noise)[0]


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


def _step(op, opts, name, x_t, eps, table, t, t_next, noise, return_x0):
    outs = op(opts, name, x_t.contiguous(), eps.contiguous(), t, t_next, table, noise)
    return tuple(outs) if return_x0 else outs[0]


@_kit.public
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
    name = _select("ddim_step", backend, x_t)
    return _step(_DDIM, DdimOptions(seed, offset, eta, bool(return_x0)), name, x_t, eps, table, t, t_next, noise,
                 return_x0)


@_kit.public
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
    return _step(_DDPM, DdpmOptions(seed, offset, clip, bool(return_x0)), name, x_t, eps, table, t, t_next, noise,
                 return_x0)


@_kit.public
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
    return _LOSS(LossOptions(seed, offset, reduction), name, eps_pred.contiguous(), None)[0]


def randn(like: torch.Tensor, seed: int, offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """The contract's standard normal noise for a tensor like ``like`` (B, ...), in its dtype.

    The noise is indexed by logical position, so a channels-last, permuted or strided ``like``
    gets the same values as a contiguous one of its shape; the result is contiguous on every
    backend."""
    _check_x("like", like)
    name = _select("q_sample", backend, like)
    return _NORMAL(NoiseOptions(ref.check_seed("seed", seed), ref.check_seed("offset", offset)), name, like)[0]


def philox_bits(shape, seed: int, offset: int = 0, *, device="cpu", backend: str = "reference") -> torch.Tensor:
    """(B, ceil(N / 4), 4) int64: the Philox words behind noise of ``shape`` (B, ...) for
    ``(seed, offset)``, made by one backend ("triton", "cpu" or "reference"): for bit-exact checks."""
    seed, offset = ref.check_seed("seed", seed), ref.check_seed("offset", offset)
    impl = _BITS.get(backend)
    if impl is None:
        *rest, last = (repr(n) for n in _BITS)
        raise ValueError(f"backend must be {', '.join(rest)} or {last}, got {backend!r}")
    return impl.philox_bits(tuple(shape), seed, offset, torch.device(device))


def diffusion_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend the diffusion ops would run for x (for benchmarks and reports)."""
    return _select("ddim_step", backend, x)
