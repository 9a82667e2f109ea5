"""``sigmoid_loss``: the pairwise sigmoid (SigLIP) loss as a torch custom op with autograd.

Backends: ``cuda`` (our CUDA kernels: tensor-core MMA tiles for fp16/bf16, FMA for fp32/fp64),
``triton`` (tiled ``tl.dot`` kernels), ``cpu`` (our C++/OpenMP, cache-blocked) and ``reference``
(eager PyTorch, materialises the N x M logits). ``cuda``, ``triton`` and ``cpu`` never hold the
N x M matrix: tiles of logits are computed, consumed and dropped, and the backward recomputes
them. All compute the same function; ``auto`` picks by device (Triton on GPUs, see _cuda_auto).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .. import _dispatch
from .._dlpack import accepts_dlpack
from .._extension import extension
from ..reference.sigmoid_loss import (
    REDUCTIONS,
    VARIANTS,
    sigmoid_loss_bwd_ref,
    sigmoid_loss_positives_ref,
    sigmoid_loss_ref,
    sigmoid_loss_scale,
)
from . import _kit
from ._common import check_same, check_tensor, cuda_stream, describe, dtype_code


def _cuda_auto(**inputs) -> bool:
    # The CUDA kernels are auto's pick only once a GPU benchmark (benchmarks/bench_sigmoid_loss.py,
    # provider "cuda" vs "triton") shows them faster; none has run on a GPU yet, so auto keeps
    # Triton on GPU tensors. backend="cuda" runs them.
    return False


_DISPATCH = _dispatch.Dispatcher(
    "sigmoid_loss",
    (
        _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("sigmoid_loss_fwd_cuda"), auto=_cuda_auto),
        _dispatch.Backend(
            "triton", _dispatch.triton_devices(), machine=_dispatch.triton_machine, auto=_dispatch.triton_auto
        ),
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("sigmoid_loss_fwd_cpu")),
        _dispatch.Backend("reference", ("cpu", "cuda")),
    ),
)



def _mask_u8(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if mask is None else mask.view(torch.uint8)


# --- backends: fwd returns the unscaled sum of the pair losses; bwd the four gradients of
# --- c * that sum, with c = grad * scale -------------------------------------------------------
def _reference_fwd(x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    loss = sigmoid_loss_ref(
        x, y, t_prime.reshape(()), bias.reshape(()), labels=labels_x, labels_y=labels_y, positive_mask=mask,
        reduction="sum", variant="med3dvlm" if symmetric else "siglip", diag_offset=diag_offset,
    )
    return loss.to(_kit.acc_dtype(x.dtype))


def _reference_bwd(c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    pos = sigmoid_loss_positives_ref(
        x.shape[0], y.shape[0], labels=labels_x, labels_y=labels_y, positive_mask=mask, diag_offset=diag_offset,
        device=x.device,
    )
    return sigmoid_loss_bwd_ref(c, x, y, t_prime.reshape(()), bias.reshape(()), pos, 1.0, symmetric)


def _triton_fwd(x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    from ..triton.sigmoid_loss import sigmoid_loss_fwd

    return sigmoid_loss_fwd(x, y, t_prime.reshape(1), bias.reshape(1), labels_x, labels_y, _mask_u8(mask),
                            diag_offset, symmetric)


def _triton_bwd(c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    from ..triton.sigmoid_loss import sigmoid_loss_bwd

    return sigmoid_loss_bwd(c, x, y, t_prime.reshape(1), bias.reshape(1), labels_x, labels_y, _mask_u8(mask),
                            diag_offset, symmetric)


def _cpu_params(x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    C = extension.module
    p = C.SigmoidLossParams()
    p.dtype = dtype_code(x.dtype)
    p.x, p.y = x.data_ptr(), y.data_ptr()
    p.n, p.m, p.d = x.shape[0], y.shape[0], x.shape[1]
    p.x_strides, p.y_strides = list(x.stride()), list(y.stride())
    p.logit_scale = float(t_prime.double().reshape(()).exp())  # inf past t' = 709, as the other backends
    p.bias = float(bias.double().reshape(()))
    p.diag_offset = diag_offset
    p.symmetric = symmetric
    if mask is not None:
        p.positives = C.SigmoidLossPositives.mask
        p.mask, p.mask_strides = mask.data_ptr(), list(mask.stride())
    elif labels_x is not None:
        p.positives = C.SigmoidLossPositives.labels
        p.labels_x, p.labels_y = labels_x.data_ptr(), labels_y.data_ptr()
    else:
        p.positives = C.SigmoidLossPositives.diagonal
    return p


def _compiled_fwd(kind: str):
    """The C++ (``cpu``) or CUDA (``cuda``) forward: the unscaled sum as a 0-d accumulation-type tensor."""

    def run(x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
        p = _cpu_params(x, y, t_prime, bias, labels_x, labels_y, _mask_u8(mask), diag_offset, symmetric)
        out = torch.zeros(1, dtype=torch.float64, device=x.device)
        p.loss = out.data_ptr()
        C = extension.module
        nbytes = getattr(C, f"sigmoid_loss_fwd_workspace_bytes_{kind}")(p)
        # through torch's allocator: visible to its memory stats
        ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=x.device)
        p.workspace, p.workspace_bytes = ws.data_ptr(), nbytes
        if kind == "cuda":
            C.sigmoid_loss_fwd_cuda(p, cuda_stream(x))
        else:
            C.sigmoid_loss_fwd_cpu(p)
        return out.reshape(()).to(_kit.acc_dtype(x.dtype))

    return run


def _compiled_bwd(kind: str):
    def run(c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
        C = extension.module
        b = C.SigmoidLossBwdParams()
        b.fwd = _cpu_params(x, y, t_prime, bias, labels_x, labels_y, _mask_u8(mask), diag_offset, symmetric)
        b.grad_scale = float(c.double().reshape(()))
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dy = torch.empty(y.shape, dtype=y.dtype, device=x.device)
        sums = torch.zeros(2, dtype=torch.float64, device=x.device)
        b.grad_x, b.grad_x_strides = dx.data_ptr(), list(dx.stride())
        b.grad_y, b.grad_y_strides = dy.data_ptr(), list(dy.stride())
        b.grad_t_prime, b.grad_bias = sums.data_ptr(), sums.data_ptr() + 8
        nbytes = getattr(C, f"sigmoid_loss_bwd_workspace_bytes_{kind}")(b)
        ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=x.device)
        fwd = b.fwd
        fwd.workspace, fwd.workspace_bytes = ws.data_ptr(), nbytes
        b.fwd = fwd
        if kind == "cuda":
            C.sigmoid_loss_bwd_cuda(b, cuda_stream(x))
        else:
            C.sigmoid_loss_bwd_cpu(b)
        acc = _kit.acc_dtype(x.dtype)
        return dx, dy, sums[0].to(acc), sums[1].to(acc)

    return run


_FWD = {"cuda": _compiled_fwd("cuda"), "triton": _triton_fwd, "cpu": _compiled_fwd("cpu"), "reference": _reference_fwd}
_BWD = {"cuda": _compiled_bwd("cuda"), "triton": _triton_bwd, "cpu": _compiled_bwd("cpu"), "reference": _reference_bwd}


def sigmoid_loss_sum_fwd(backend, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    """Unscaled sum of the pair losses with a named (already selected) backend; no autograd.
    For :mod:`medkernels.distributed`, which scales and exchanges blocks itself."""
    return _FWD[backend](x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric)


def sigmoid_loss_sum_bwd(backend, c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric):
    """(dx, dy, dt', db) of ``c * sum of pair losses`` with a named backend; c a 0-d tensor."""
    return _BWD[backend](c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric)


def _check_t_prime(t_prime: torch.Tensor) -> None:
    if not bool(torch.isfinite(t_prime).all()):
        raise ValueError(f"t_prime must be finite, got {t_prime.detach().reshape(()).item()}")


# --- the custom ops: the one compile-safe boundary ----------------------------------------
@torch.library.custom_op("medkernels::sigmoid_loss", mutates_args=())
def _sigmoid_loss_op(
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    labels_x: Optional[torch.Tensor],
    labels_y: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    diag_offset: int,
    symmetric: bool,
    scale: float,
    backend: str,
) -> torch.Tensor:
    _check_t_prime(t_prime)
    total = _FWD[backend](x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric)
    return (total * scale).reshape(())


@_sigmoid_loss_op.register_fake
def _(x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric, scale, backend):
    return x.new_empty((), dtype=_kit.acc_dtype(x.dtype))


@torch.library.custom_op("medkernels::sigmoid_loss_bwd", mutates_args=())
def _sigmoid_loss_bwd_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    labels_x: Optional[torch.Tensor],
    labels_y: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    diag_offset: int,
    symmetric: bool,
    scale: float,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c = (grad.to(_kit.acc_dtype(x.dtype)) * scale).reshape(())
    dx, dy, dt, db = _BWD[backend](c, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric)
    return (
        dx.to(x.dtype),
        dy.to(y.dtype),
        # the scalars may be views of one partials buffer: outputs must not alias
        dt.to(t_prime.dtype).reshape(t_prime.shape).clone(),
        db.to(bias.dtype).reshape(bias.shape).clone(),
    )


@_sigmoid_loss_bwd_op.register_fake
def _(grad, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric, scale, backend):
    return torch.empty_like(x), torch.empty_like(y), torch.empty_like(t_prime), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric, scale, backend = inputs
    ctx.save_for_backward(x, y, t_prime, bias, labels_x, labels_y, mask)
    ctx.options = (diag_offset, symmetric, scale, backend)


def _backward(ctx, grad):
    x, y, t_prime, bias, labels_x, labels_y, mask = ctx.saved_tensors
    diag_offset, symmetric, scale, backend = ctx.options
    dx, dy, dt, db = _sigmoid_loss_bwd_op(
        grad, x, y, t_prime, bias, labels_x, labels_y, mask, diag_offset, symmetric, scale, backend
    )
    return dx, dy, dt, db, None, None, None, None, None, None, None


_sigmoid_loss_op.register_autograd(_backward, setup_context=_setup_context)


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


@accepts_dlpack
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
    name = _DISPATCH.select(backend, x.device, x.dtype, x=x, y=y)
    return _sigmoid_loss_op(x, y, t_prime, bias, labels_x, labels_y, mask, 0, symmetric, scale, name)


def sigmoid_loss_backend(x: torch.Tensor, y: Optional[torch.Tensor] = None, backend: str = "auto") -> str:
    """The backend ``sigmoid_loss`` would run for these inputs (for benchmarks and reports)."""
    return _DISPATCH.select(backend, x.device, x.dtype, x=x, y=y if y is not None else x)
