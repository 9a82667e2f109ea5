"""``group_norm_act``: GroupNorm + per-(sample, channel) add / FiLM scale-shift + activation, the
norm of the diffusion UNets' ResBlocks, as a torch custom op with autograd, written on
:mod:`medkernels.ops._kit`.

Backends: ``triton`` (GPU, or the interpreter on CPU tensors; :mod:`medkernels.triton.group_norm`),
``cpu`` (our C++/OpenMP, vectorised) and ``reference`` (PyTorch's ``native_group_norm`` in
float32/float64, then the FiLM and activation as separate ops). The compiled backends read x once for the
statistics and once more for the output, which they write once; their backward reads x and
grad_y twice and writes grad_x once. ``cuda`` (our kernels, medkernels/cuda/group_norm.cuh) runs
by name only until benchmarked on a GPU.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _dispatch
from ..reference.decomp_conv import _ACTIVATIONS as _ACT
from ..reference.decomp_conv import _act_grad
from ..reference.group_norm import ACTIVATIONS
from ..reference.group_norm import _per_channel as _per_sample
from . import _kit
from ._common import check_int, check_same, check_tensor, describe


@_kit.options
class NormOptions:
    num_groups: int
    eps: float
    activation: str  # "" for none


def _ncm_strides(t: torch.Tensor):
    """Element strides of t viewed as (N, C, M), M the flattened spatial axes, or None when the
    spatial axes cannot be flattened without a copy (neither NC... contiguous nor channels-last)."""
    C, M = t.shape[1], math.prod(t.shape[2:])
    if t.is_contiguous():
        return [C * M, M, 1]
    if t.permute(0, *range(2, t.dim()), 1).is_contiguous():
        return [M * C, 1, C]
    return None


def _cpu_auto(x, grad: bool = False, **_) -> bool:
    # GroupNorm+SiLU, ours (cpu) / eager F.silu(F.group_norm(...)), 2 threads of the 2-core test
    # machine, the same run, median of 3 sessions (each 3 alternating runs of 3 calls):
    #   1x128x48^3 fp32  NCDHW fwd 2.88x fwd+bwd 2.48x | NDHWC fwd 3.01x fwd+bwd 2.73x
    #   1x128x48^3 bf16  NCDHW fwd 2.00x fwd+bwd 0.99x | NDHWC fwd 0.83x fwd+bwd 2.21x
    #   1x256x24^3 fp32  NCDHW fwd 1.00x fwd+bwd 1.15x | NDHWC fwd 1.00x fwd+bwd 0.83x
    #   1x256x24^3 bf16  NCDHW fwd 0.77x fwd+bwd 0.87x | NDHWC fwd 1.00x fwd+bwd 1.25x
    # auto's other pick on CPU is the reference backend (PyTorch's group norm plus the FiLM and
    # activation ops, and a backward from xhat that stays exact for a large mean): in
    # benchmarks/results/cpu-2core-avx2-group_norm it is 1.0-9x slower than cpu in every row (cpu vs
    # eager there: fp32 1x128x48^3 3.5-3.9x, 1x256x24^3 1.0-1.75x; bf16 0.80-2.0x), so cpu runs
    # float32 and bfloat16 on large volumes. float16 (scalar conversions) and float64 (the scalar
    # double path) were not measured: the reference runs them.
    # Small maps (fp32, with add, 1 and 2 threads, one run on the same machine, 2026-12-03): the
    # forward alone lost below 4096 positions per channel (0.60-0.94x the reference at
    # 2x64x32^2 and 2x128x16^2; 1.46-2.16x from 2x32x64^2 and 1x64x16^3 up), forward+backward lost
    # only at 64 positions (0.74-0.94x at 2x256x8^2; 1.24-4.7x from 2x128x16^2 up).
    spatial = x[0, 0].numel()
    return x.dtype in (torch.float32, torch.bfloat16) and spatial >= (256 if grad else 4096)


# --- backends: fwd(o, x, weight, bias, scale, shift, add, y, mean, rstd) fills y (or returns a
# --- fresh tensor of y's dtype and strides) and the
# --- statistics; bwd(o, grad_y, x, weight, bias, scale, shift, add, mean, rstd, grads) fills the
# --- gradients that are not None (the parameters' in the accumulation dtype)
class _Compiled(_kit.Compiled):
    def _params(self, o, x, weight, bias, scale, shift, add, mean, rstd):
        p = self.C.GroupNormParams()
        p.dtype = self.dtype(x.dtype)
        p.x, p.weight, p.bias = x.data_ptr(), _kit.ptr(weight), _kit.ptr(bias)
        p.scale, p.shift, p.add = _kit.ptr(scale), _kit.ptr(shift), _kit.ptr(add)
        p.mean, p.rstd = mean.data_ptr(), rstd.data_ptr()
        p.batch, p.channels, p.groups, p.spatial = x.shape[0], x.shape[1], o.num_groups, math.prod(x.shape[2:])
        p.x_strides = _ncm_strides(x)
        p.eps = o.eps
        p.activation = getattr(self.C.Activation, o.activation or "none")
        return p

    def _workspace(self, role, p, params, x):
        """The CUDA kernels' workspace (their per-split sums), held until the launch is queued;
        the CPU kernels take none (no ``*_workspace`` symbol)."""
        if role not in self.symbols:
            return None
        ws = _kit.scratch(self.query(role, params), x.device)
        p.workspace, p.workspace_bytes = ws.data_ptr(), ws.numel()
        return ws

    def fwd(self, o, x, weight, bias, scale, shift, add, y, mean, rstd):
        p = self._params(o, x, weight, bias, scale, shift, add, mean, rstd)
        p.y, p.y_strides = y.data_ptr(), _ncm_strides(y)
        ws = self._workspace("fwd_workspace", p, p, x)  # noqa: F841 (alive through the launch)
        self.launch("fwd", p, x)

    def bwd(self, o, grad_y, x, weight, bias, scale, shift, add, mean, rstd, grads):
        b = self.C.GroupNormBwdParams()
        b.fwd = self._params(o, x, weight, bias, scale, shift, add, mean, rstd)
        b.grad_y, b.grad_y_strides = grad_y.data_ptr(), _ncm_strides(grad_y)
        gx, gw, gb, gsc, gsh, gad = grads
        b.grad_x, b.grad_x_strides = _kit.ptr(gx), _ncm_strides(x if gx is None else gx)
        b.grad_weight, b.grad_bias = _kit.ptr(gw), _kit.ptr(gb)
        b.grad_scale, b.grad_shift, b.grad_add = _kit.ptr(gsc), _kit.ptr(gsh), _kit.ptr(gad)
        ws = self._workspace("bwd_workspace", b.fwd, b, x)  # noqa: F841 (alive through the launch)
        self.launch("bwd", b, x)


class _Triton:
    def fwd(self, o, x, weight, bias, scale, shift, add, y, mean, rstd):
        from ..triton.group_norm import group_norm_fwd

        group_norm_fwd(x, _ncm_strides(x), weight, bias, scale, shift, add, y, _ncm_strides(y), mean, rstd,
                       o.num_groups, o.eps, o.activation or None)

    def bwd(self, o, grad_y, x, weight, bias, scale, shift, add, mean, rstd, grads):
        from ..triton.group_norm import group_norm_bwd

        gx = grads[0]
        group_norm_bwd(grad_y, _ncm_strides(grad_y), x, _ncm_strides(x), weight, bias, scale, shift, add, mean, rstd,
                       o.num_groups, o.activation or None, grads, None if gx is None else _ncm_strides(gx))


class _Reference:
    """PyTorch's own GroupNorm kernels (``native_group_norm`` and its backward: one statistics
    pass, the layer a user would write), in float32 for 16-bit inputs, with the add, FiLM and
    activation as separate ops around them."""

    def _prep(self, o, x, weight, bias, add, mean):
        dt = mean.dtype  # the accumulation dtype
        h = x.to(dt)
        if add is not None:
            h = h + _per_sample(add, x, dt)
        h = h.contiguous()  # the (N, G, -1) views below, and one layout for native_group_norm
        cast = (lambda t: None if t is None else t.to(dt))
        return h, cast(weight), cast(bias), (x.shape[0], x.shape[1], math.prod(x.shape[2:]), o.num_groups)

    def _film(self, y0, x, scale, shift):
        if scale is not None:
            y0 = y0 * (1 + _per_sample(scale, x, y0.dtype))
        if shift is not None:
            y0 = y0 + _per_sample(shift, x, y0.dtype)
        return y0

    def fwd(self, o, x, weight, bias, scale, shift, add, y, mean, rstd):
        h, w, b, sizes = self._prep(o, x, weight, bias, add, mean)
        y0, mu, r = torch.native_group_norm(h, w, b, *sizes, o.eps)
        z = _ACT[o.activation or None](self._film(y0, x, scale, shift))
        mean.copy_(mu)
        rstd.copy_(r)
        if z.dtype == y.dtype and z.stride() == y.stride():
            return z  # a fresh tensor in y's dtype and layout already: no copy
        return y.copy_(z)

    def bwd(self, o, grad_y, x, weight, bias, scale, shift, add, mean, rstd, grads):
        # from the saved statistics (PyTorch's own backward on x sums dy * x and dy, which cancels
        # for a large mean: 2.4e-3 relative error on dweight at mean 1000 in float32)
        gx, gw, gb, gsc, gsh, gad = grads
        h, w, b, (N, C, _, G) = self._prep(o, x, weight, bias, add, mean)
        hc = h.reshape(N, G, -1) - mean[..., None]  # h centred per (sample, group)
        xhat = (hc * rstd[..., None]).reshape(h.shape)
        y0 = xhat * _channel_view(w, x) if w is not None else xhat
        if b is not None:
            y0 = y0 + _channel_view(b, x)
        dz = grad_y.to(h.dtype) * _act_grad(self._film(y0, x, scale, shift), o.activation or None)
        spatial = tuple(range(2, x.dim()))
        if gsc is not None:
            gsc.copy_((dz * y0).sum(dim=spatial))
        if gsh is not None:
            gsh.copy_(dz.sum(dim=spatial))
        dy0 = dz * (1 + _per_sample(scale, x, dz.dtype)) if scale is not None else dz
        # PyTorch's backward on the centred h with a zero mean: the same xhat, and its sums of
        # dy * h no longer cancel
        need = [gx is not None or gad is not None, gw is not None, gb is not None]
        dh, dw, db = torch.ops.aten.native_group_norm_backward(
            dy0.contiguous(), hc.reshape(h.shape), torch.zeros_like(mean), rstd, w, N, C, h[0, 0].numel(), G, need)
        if gw is not None:
            gw.copy_(dw)
        if gb is not None:
            gb.copy_(db)
        if gx is not None:
            gx.copy_(dh)
        if gad is not None:
            gad.copy_(dh.sum(dim=spatial))


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


_DISPATCH = _dispatch.Dispatcher(
    "group_norm_act",
    (
        # auto picks the CUDA kernels only once they beat Triton on a GPU in our benchmarks; no GPU
        # run exists yet
        _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("group_norm_fwd_cuda"),
                          auto=lambda **_: False,
                          impl=_Compiled(_kit.CUDA, {"fwd": "group_norm_fwd_cuda", "bwd": "group_norm_bwd_cuda",
                                                     "fwd_workspace": "group_norm_fwd_workspace_bytes_cuda",
                                                     "bwd_workspace": "group_norm_bwd_workspace_bytes_cuda"})),
        # auto runs Triton on GPU tensors (no GPU benchmark of it yet; the interpreter never)
        _dispatch.Backend("triton", _dispatch.triton_devices(), machine=_dispatch.triton_machine,
                          auto=_dispatch.triton_auto, impl=_Triton()),
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("group_norm_fwd_cpu"), auto=_cpu_auto,
                          impl=_Compiled(_kit.CPU, {"fwd": "group_norm_fwd_cpu", "bwd": "group_norm_bwd_cpu"})),
        _dispatch.Backend("reference", ("cpu", "cuda"), impl=_Reference()),
    ),
)


# --- the op ---------------------------------------------------------------------------------
def _outputs(o, x: torch.Tensor):
    # y in x's layout (NC... contiguous or channels-last), the statistics (N, groups) in the
    # accumulation dtype
    stats = [_kit.empty((x.shape[0], o.num_groups), dtype=_kit.acc_dtype(x.dtype), device=x.device) for _ in range(2)]
    return [_kit.empty_like(x), *stats]


def _forward(impl, o, x, weight, bias, scale, shift, add):
    y, mean, rstd = _outputs(o, x)
    # a backend may return its own fresh output in y's dtype and strides instead of filling y
    out = impl.fwd(o, x, weight, bias, scale, shift, add, y, mean, rstd)
    return [y if out is None else out, mean, rstd]


def _fake(impl, o, x, weight, bias, scale, shift, add):
    return _outputs(o, x)


def _grads(needs, x, params, make):
    return [make(x) if needs[0] else None] + [make(t) if n else None for n, t in zip(needs[1:], params)]


def _backward(impl, o, needs, grads, saved):
    x, *params, mean, rstd = saved
    gy = grads[0]
    if gy is None:
        gy = torch.zeros_like(x)
    elif _ncm_strides(gy) is None:
        gy = gy.contiguous()
    acc = _kit.acc_dtype(x.dtype)
    got = _grads(needs, x, params, lambda t: _kit.empty_like(x) if t is x else
                 _kit.empty(t.shape, dtype=acc, device=x.device))
    impl.bwd(o, gy, x, *params, mean, rstd, got)
    return [None if g is None else g.to(t.dtype) for g, t in zip(got, (x, *params))]


def _backward_fake(impl, o, needs, grads, saved):
    x, *params, _, _ = saved
    return _grads(needs, x, params, torch.empty_like)


_OP = _kit.Op("group_norm_act",
              tensors="Tensor x, Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, Tensor? add",
              opts=NormOptions, dispatcher=_DISPATCH, forward=_forward, fake=_fake, backward=_backward,
              backward_fake=_backward_fake, no_grad_outputs=(1, 2),
              save=lambda tensors, outs: (*tensors, outs[1], outs[2]))


# --- the public function -------------------------------------------------------------------
def _per_channel(name: str, t: Optional[torch.Tensor], N: int, C: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    check_tensor(name, t)
    if t.dim() < 2 or tuple(t.shape[:2]) != (N, C) or any(s != 1 for s in t.shape[2:]):
        raise ValueError(f"{name} must be per (sample, channel): ({N}, {C}) or ({N}, {C}, 1, ...), got {describe(t)}")
    return t.reshape(N, C).contiguous()


def _per_feature(name: str, t: Optional[torch.Tensor], C: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    check_tensor(name, t, dim=1)
    if t.shape[0] != C:
        raise ValueError(f"{name} must be ({C},) for x with {C} channels, got {describe(t)}")
    return t.contiguous()


@_kit.public
def group_norm_act(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    eps: float = 1e-5,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``act(((x + add - mean) * rstd * weight + bias) * (1 + scale) + shift)``, statistics per
    (sample, group) over the group's channels and all spatial positions.

    Args:
        x: (N, C, *spatial), 1 to 3 spatial axes, NC... contiguous or channels-last (the output
            keeps the layout; other strides are copied to contiguous first).
        num_groups: divides C.
        weight, bias: (C,) GroupNorm affine, or None.
        eps: added to the biased variance.
        scale, shift: per (sample, channel) FiLM (guided-diffusion's ``use_scale_shift_norm``),
            (N, C) or (N, C, 1, ...), or None.
        add: per (sample, channel) bias added before the norm (the time-embedding add of MONAI's
            and Fast-DDPM's ResBlocks), or None.
        activation: None, "silu" or "gelu" (exact erf).
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Statistics on the cpu backend: float32 lanes over fixed units, folded and combined in float64
    in a fixed order; on the triton backend float32 (float64 for float64 inputs) tiles merged in a
    fixed order (Chan's formula); float32 for 16-bit inputs in the reference. NaN in x stays in its
    (sample, group)'s outputs.
    """
    check_tensor("x", x)
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"x must be (N, C, *spatial) with 1 to 3 spatial axes, got {describe(x)}")
    if x.numel() == 0:
        raise ValueError(f"x must be non-empty, got {describe(x)}")
    N, C = x.shape[:2]
    num_groups = check_int("num_groups", num_groups)
    if C % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the {C} channels of x ({describe(x)})")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    weight, bias = _per_feature("weight", weight, C), _per_feature("bias", bias, C)
    scale, shift, add = (_per_channel(n, t, N, C) for n, t in (("scale", scale), ("shift", shift), ("add", add)))
    check_same("x", x, weight=weight, bias=bias, scale=scale, shift=shift, add=add)
    if _ncm_strides(x) is None:
        x = x.contiguous()
    grad = _kit.wants_grad(x, weight, bias, scale, shift, add)
    name = _DISPATCH.select(backend, x.device, x.dtype, x=x, grad=grad)
    return _OP(NormOptions(num_groups, float(eps), activation or ""), name, x, weight, bias, scale, shift, add)[0]
