"""``sigmoid_loss``: the pairwise sigmoid (SigLIP) loss as a torch custom op with autograd, written
on :mod:`medkernels.ops._kit`.

Backends: ``cuda`` (our CUDA kernels: tensor-core MMA tiles for fp16/bf16, FMA for fp32/fp64),
``triton`` (tiled ``tl.dot`` kernels), ``cpu`` (our C++/OpenMP, cache-blocked) and ``reference``
(eager PyTorch, materialises the N x M logits). ``cuda``, ``triton`` and ``cpu`` never hold the
N x M matrix: tiles of logits are computed, consumed and dropped, and the backward recomputes
them. All compute the same function; ``auto`` picks by device (Triton on GPUs, see _cuda_auto).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .. import _dispatch
from ..reference.sigmoid_loss import (
    REDUCTIONS,
    VARIANTS,
    sigmoid_loss_bwd_ref,
    sigmoid_loss_positives_ref,
    sigmoid_loss_ref,
    sigmoid_loss_scale,
)
from . import _kit
from ._common import check_same, check_tensor, describe


@_kit.options
class LossOptions:
    diag_offset: int  # the positives of the default form: pairs with j - i == diag_offset
    symmetric: bool  # variant "med3dvlm": logits symmetrised (L + L^T) / 2
    scale: float  # the reduction's factor (1/N, 1 or 1/(N M)); the backends ignore it


def _mask_u8(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if mask is None else mask.view(torch.uint8)


# --- backends: fwd(o, x, y, t', b, labels_x, labels_y, mask) -> the unscaled sum of the pair
# --- losses (0-d, accumulation dtype); bwd(o, c, x, y, t', b, labels_x, labels_y, mask, dx, dy)
# --- -> (dx, dy, dt', db) of c * that sum (c 0-d, grad * scale): dx and dy written into the given
# --- buffers (any strides), dt' and db 0-d in the accumulation dtype
class _Reference:
    def fwd(self, o, x, y, t_prime, bias, labels_x, labels_y, mask):
        loss = sigmoid_loss_ref(
            x, y, t_prime.reshape(()), bias.reshape(()), labels=labels_x, labels_y=labels_y, positive_mask=mask,
            reduction="sum", variant="med3dvlm" if o.symmetric else "siglip", diag_offset=o.diag_offset,
        )
        return loss.to(_kit.acc_dtype(x.dtype))

    def bwd(self, o, c, x, y, t_prime, bias, labels_x, labels_y, mask, dx, dy):
        pos = sigmoid_loss_positives_ref(x.shape[0], y.shape[0], labels=labels_x, labels_y=labels_y,
                                         positive_mask=mask, diag_offset=o.diag_offset, device=x.device)
        gx, gy, dt, db = sigmoid_loss_bwd_ref(c, x, y, t_prime.reshape(()), bias.reshape(()), pos, 1.0, o.symmetric)
        return dx.copy_(gx), dy.copy_(gy), dt, db


class _Triton:
    def fwd(self, o, x, y, t_prime, bias, labels_x, labels_y, mask):
        from ..triton.sigmoid_loss import sigmoid_loss_fwd

        return sigmoid_loss_fwd(x, y, t_prime.reshape(1), bias.reshape(1), labels_x, labels_y, _mask_u8(mask),
                                o.diag_offset, o.symmetric)

    def bwd(self, o, c, x, y, t_prime, bias, labels_x, labels_y, mask, dx, dy):
        from ..triton.sigmoid_loss import sigmoid_loss_bwd

        return sigmoid_loss_bwd(c, x, y, t_prime.reshape(1), bias.reshape(1), labels_x, labels_y, _mask_u8(mask),
                                o.diag_offset, o.symmetric, dx=dx, dy=dy)


class _Compiled(_kit.Compiled):
    def _params(self, o, x, y, t_prime, bias, labels_x, labels_y, mask):
        C = self.C
        p = C.SigmoidLossParams()
        p.dtype = self.dtype(x.dtype)
        p.x, p.y = x.data_ptr(), y.data_ptr()
        p.n, p.m, p.d = x.shape[0], y.shape[0], x.shape[1]
        p.x_strides, p.y_strides = list(x.stride()), list(y.stride())
        p.logit_scale = float(t_prime.double().reshape(()).exp())  # inf past t' = 709, as the other backends
        p.bias = float(bias.double().reshape(()))
        p.diag_offset, p.symmetric = o.diag_offset, o.symmetric
        if mask is not None:
            p.positives = C.SigmoidLossPositives.mask
            p.mask, p.mask_strides = mask.data_ptr(), list(mask.stride())
        elif labels_x is not None:
            p.positives = C.SigmoidLossPositives.labels
            p.labels_x, p.labels_y = labels_x.data_ptr(), labels_y.data_ptr()
        else:
            p.positives = C.SigmoidLossPositives.diagonal
        return p

    def fwd(self, o, x, y, t_prime, bias, labels_x, labels_y, mask):
        p = self._params(o, x, y, t_prime, bias, labels_x, labels_y, _mask_u8(mask))
        out = torch.zeros(1, dtype=torch.float64, device=x.device)
        p.loss = out.data_ptr()
        nbytes = self.query("fwd_workspace", p)
        ws = _kit.scratch(nbytes, x.device)  # consumed before the call returns
        p.workspace, p.workspace_bytes = ws.data_ptr(), nbytes
        self.launch("fwd", p, x)
        return out.reshape(()).to(_kit.acc_dtype(x.dtype))

    def bwd(self, o, c, x, y, t_prime, bias, labels_x, labels_y, mask, dx, dy):
        b = self.C.SigmoidLossBwdParams()
        p = self._params(o, x, y, t_prime, bias, labels_x, labels_y, _mask_u8(mask))
        b.fwd = p
        b.grad_scale = float(c.double().reshape(()))
        sums = torch.zeros(2, dtype=torch.float64, device=x.device)
        b.grad_x, b.grad_x_strides = dx.data_ptr(), list(dx.stride())
        b.grad_y, b.grad_y_strides = dy.data_ptr(), list(dy.stride())
        b.grad_t_prime, b.grad_bias = sums.data_ptr(), sums.data_ptr() + 8
        nbytes = self.query("bwd_workspace", b)
        ws = _kit.scratch(nbytes, x.device)
        p.workspace, p.workspace_bytes = ws.data_ptr(), nbytes
        b.fwd = p  # pybind hands out copies of the nested struct: set it again
        self.launch("bwd", b, x)
        acc = _kit.acc_dtype(x.dtype)
        return dx, dy, sums[0].to(acc), sums[1].to(acc)


def _symbols(kind: str):
    return {"fwd": f"sigmoid_loss_fwd_{kind}", "bwd": f"sigmoid_loss_bwd_{kind}",
            "fwd_workspace": f"sigmoid_loss_fwd_workspace_bytes_{kind}",
            "bwd_workspace": f"sigmoid_loss_bwd_workspace_bytes_{kind}"}


def _cuda_auto(**inputs) -> bool:
    # The CUDA kernels are auto's pick only once a GPU benchmark (benchmarks/bench_sigmoid_loss.py,
    # provider "cuda" vs "triton") shows them faster; none has run on a GPU yet, so auto keeps
    # Triton on GPU tensors. backend="cuda" runs them.
    return False


def _cpu_auto(x, y, grad: bool = False, **_) -> bool:
    # On AVX-512 (benchmarks/results/cpu-2core-default): forward, ours beat the reference at N=1024
    # d=512 (1.12x); forward+backward, ours lost at N=1024 (0.83x: at N x M = 1024^2 the reference's
    # materialised logits still fit in cache and its GEMMs are oneDNN's) and won at N=4096 (1.24x),
    # same run; so with gradients the reference runs up to N x M = 1024^2, ours above.
    # On an AVX2-only CPU (2-core AMD EPYC, 2026-12-03, benchmarks/results/cpu-2core-avx2-sigmoid_loss)
    # our tiles, register-blocked for 32 zmm registers, spill (perf: the avx2_fma copy of dots_tile
    # stores to the stack): 0.09x the reference forward at N=1024, 0.08x fwd+bwd at N=1024 and 0.03x
    # at N=4096 (a loaded machine: the two reference rows of one case differ up to 2x, not 10x), so
    # auto takes the reference there.
    if _dispatch.cpu_vector_isa() != "avx512":
        return False
    return not grad or x.shape[0] * y.shape[0] > 1024 * 1024


_DISPATCH = _dispatch.Dispatcher(
    "sigmoid_loss",
    (
        _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("sigmoid_loss_fwd_cuda"), auto=_cuda_auto,
                          impl=_Compiled(_kit.CUDA, _symbols("cuda"))),
        _dispatch.Backend("triton", _dispatch.triton_devices(), machine=_dispatch.triton_machine,
                          auto=_dispatch.triton_auto, impl=_Triton()),
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("sigmoid_loss_fwd_cpu"), auto=_cpu_auto,
                          impl=_Compiled(_kit.CPU, _symbols("cpu"))),
        _dispatch.Backend("reference", ("cpu", "cuda"), impl=_Reference()),
    ),
)


def _grad_buffers(x: torch.Tensor, y: torch.Tensor):
    return _kit.empty(x.shape, dtype=x.dtype, device=x.device), _kit.empty(y.shape, dtype=y.dtype, device=y.device)


def sigmoid_loss_sum_fwd(backend, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    """Unscaled sum of the pair losses with a named (already selected) backend; no autograd.
    For :mod:`medkernels.distributed`, which scales and exchanges blocks itself."""
    return _DISPATCH.impl(backend).fwd(LossOptions(diag_offset, symmetric, 1.0), x, y, t_prime, bias, labels_x,
                                       labels_y, mask)


def sigmoid_loss_sum_bwd(backend, c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    """(dx, dy, dt', db) of ``c * sum of pair losses`` with a named backend; c a 0-d tensor."""
    return _DISPATCH.impl(backend).bwd(LossOptions(diag_offset, symmetric, 1.0), c, x, y, t_prime, bias, labels_x,
                                       labels_y, mask, *_grad_buffers(x, y))


def _check_t_prime(t_prime: torch.Tensor) -> None:
    if not bool(torch.isfinite(t_prime).all()):
        raise ValueError(f"t_prime must be finite, got {t_prime.detach().reshape(()).item()}")


# --- the op ---------------------------------------------------------------------------------
def _forward(impl, o, x, y, t_prime, bias, labels_x, labels_y, mask):
    _check_t_prime(t_prime)
    return [(impl.fwd(o, x, y, t_prime, bias, labels_x, labels_y, mask) * o.scale).reshape(())]


def _fake(impl, o, x, *_):
    return [x.new_empty((), dtype=_kit.acc_dtype(x.dtype))]


def _backward(impl, o, needs, grads, saved):
    x, y, t_prime, bias, labels_x, labels_y, mask = saved
    c = (grads[0].to(_kit.acc_dtype(x.dtype)) * o.scale).reshape(())
    dx, dy, dt, db = impl.bwd(o, c, x, y, t_prime, bias, labels_x, labels_y, mask, *_grad_buffers(x, y))
    # the scalars may be views of one partials buffer: outputs must not alias
    return [dx, dy, dt.to(t_prime.dtype).reshape(t_prime.shape).clone(),
            db.to(bias.dtype).reshape(bias.shape).clone(), None, None, None]


def _backward_fake(impl, o, needs, grads, saved):
    x, y, t_prime, bias = saved[:4]
    # dx and dy contiguous, as _grad_buffers (empty_like would keep a transposed x's strides)
    return [*_grad_buffers(x, y), torch.empty_like(t_prime), torch.empty_like(bias), None, None, None]


_OP = _kit.Op("sigmoid_loss", tensors="Tensor x, Tensor y, Tensor t_prime, Tensor bias, Tensor? labels_x, "
                                      "Tensor? labels_y, Tensor? mask",
              opts=LossOptions, dispatcher=_DISPATCH, forward=_forward, fake=_fake, backward=_backward,
              backward_fake=_backward_fake, save=lambda tensors, outs: tensors)


# --- the public function -------------------------------------------------------------------
def _scalar(name: str, v, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        check_tensor(name, v)
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element), got {describe(v)}")
        if v.device != like.device:
            raise ValueError(f"{name} is on {v.device} but x is on {like.device}: move them to one device")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(v).__name__}")
    return torch.tensor(float(v), dtype=_kit.acc_dtype(like.dtype), device=like.device)


def _labels(name: str, v: torch.Tensor, n: int, side: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {describe(v)}")
    if v.dim() != 1 or v.shape[0] != n:
        raise ValueError(f"{name} must be ({n},) (one label per row of {side}), got {describe(v)}")
    if v.device != like.device:
        raise ValueError(f"{name} is on {v.device} but x is on {like.device}: move them to one device")
    return v.to(torch.int64).contiguous()


def prepare_sigmoid_loss_inputs(x, y, t_prime, bias, labels, labels_y, positive_mask, variant, normalize,
                                square_required: bool = True):
    """Validate and canonicalise the public arguments (shared with :mod:`medkernels.nn` and
    :mod:`medkernels.distributed`). Returns x, y, t', b, labels_x, labels_y, mask, symmetric."""
    check_tensor("x", x, dim=2)
    check_tensor("y", y, dim=2)
    check_same("x", x, y=y)
    n, d = x.shape
    m = y.shape[0]
    if y.shape[1] != d:
        raise ValueError(f"x and y must have the same embedding size d: x {describe(x)}, y {describe(y)}")
    if n == 0 or m == 0 or d == 0:
        raise ValueError(f"x and y must be non-empty: x {describe(x)}, y {describe(y)}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    symmetric = variant == "med3dvlm"
    if symmetric and n != m:
        raise ValueError(f"variant='med3dvlm' symmetrises the logits and needs N == M, got x {describe(x)}, "
                         f"y {describe(y)}")
    t_prime = _scalar("t_prime", t_prime, x)
    bias = _scalar("bias", bias, x)
    labels_x = labels_y_ = mask = None
    if positive_mask is not None:
        if labels is not None or labels_y is not None:
            raise ValueError("pass either positive_mask or labels, not both")
        if not isinstance(positive_mask, torch.Tensor) or positive_mask.dtype != torch.bool:
            got = describe(positive_mask) if isinstance(positive_mask, torch.Tensor) else type(positive_mask).__name__
            raise TypeError(f"positive_mask must be a bool tensor, got {got}")
        if tuple(positive_mask.shape) != (n, m):
            raise ValueError(f"positive_mask must be (N, M) = ({n}, {m}), got {describe(positive_mask)}")
        if positive_mask.device != x.device:
            raise ValueError(f"positive_mask is on {positive_mask.device} but x is on {x.device}")
        mask = positive_mask
    elif labels is not None:
        labels_x = _labels("labels", labels, n, "x", x)
        if labels_y is None:
            if n != m:
                raise ValueError(f"labels_y is needed when N != M (x {describe(x)}, y {describe(y)})")
            labels_y_ = labels_x
        else:
            labels_y_ = _labels("labels_y", labels_y, m, "y", x)
    elif labels_y is not None:
        raise ValueError("labels_y was given without labels")
    elif n != m and square_required:
        raise ValueError(
            f"N != M needs labels or positive_mask (the default positives are the pairs i == j): "
            f"x {describe(x)}, y {describe(y)}"
        )
    if normalize:
        x = F.normalize(x, dim=-1)
        y = F.normalize(y, dim=-1)
    return x, y, t_prime, bias, labels_x, labels_y_, mask, symmetric


@_kit.public
def sigmoid_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime: Union[torch.Tensor, float],
    bias: Union[torch.Tensor, float],
    *,
    labels: Optional[torch.Tensor] = None,
    labels_y: Optional[torch.Tensor] = None,
    positive_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    variant: str = "siglip",
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Pairwise sigmoid (SigLIP) loss without the N x M logits in memory.

    ``logits_ij = exp(t_prime) * x_i . y_j + bias``; ``z_ij = +1`` for positive pairs, -1
    otherwise; ``loss = -sum_ij log sigmoid(z_ij logits_ij) / N`` (SigLIP's normalisation).

    Args:
        x: (N, d) image embeddings. y: (M, d) text embeddings, same dtype and device.
        t_prime: learnable log-temperature (scalar tensor or number); the scale is exp(t_prime).
        bias: learnable logit bias (scalar tensor or number).
        labels: optional (N,) integer labels: pairs with equal labels are positive.
        labels_y: (M,) labels of y (default: ``labels``, for N == M).
        positive_mask: optional (N, M) bool tensor of the positive pairs.
            Without labels or mask the positives are the pairs i == j (needs N == M).
        reduction: "mean" (sum / N, SigLIP), "sum", or "mean_pairs" (sum / (N M)).
        variant: "siglip", or "med3dvlm": logits symmetrised (L + L^T) / 2 (N == M). Med3DVLM's
            single-GPU code scales by t_prime without exp and does not divide by N; we follow its
            distributed path (exp(t_prime), / N), which is SigLIP's definition, in every case.
        normalize: L2-normalise x and y first (inside autograd).
        backend: "auto", "cuda", "triton", "cpu" or "reference" (``auto``: Triton on GPU
            tensors, our C++ kernel on CPU tensors).

    Returns:
        0-d loss, float32 for float32/float16/bfloat16 inputs (accumulated in fp32), float64
        for float64. Differentiable in x, y, t_prime and bias.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    x, y, t_prime, bias, labels_x, labels_y, mask, symmetric = prepare_sigmoid_loss_inputs(
        x, y, t_prime, bias, labels, labels_y, positive_mask, variant, normalize
    )
    scale = sigmoid_loss_scale(reduction, x.shape[0], y.shape[0])
    name = _DISPATCH.select(backend, x.device, x.dtype, x=x, y=y, grad=_kit.wants_grad(x, y, t_prime, bias))
    return _OP(LossOptions(0, symmetric, scale), name, x, y, t_prime, bias, labels_x, labels_y, mask)[0]


def sigmoid_loss_backend(x: torch.Tensor, y: Optional[torch.Tensor] = None, backend: str = "auto",
                         grad: bool = False) -> str:
    """The backend ``sigmoid_loss`` would run for these inputs (for benchmarks and reports);
    ``grad``: whether a backward will follow."""
    return _DISPATCH.select(backend, x.device, x.dtype, x=x, y=y if y is not None else x, grad=grad)
