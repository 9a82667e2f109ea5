"""``window_attention3d`` / ``cross_window_attention3d``: (shifted) 3D window attention as torch
custom ops with autograd (grads for q, k, v, the relative-position bias table and the padding
key/value).

Backends: ``cuda`` (our CUDA kernels, chosen by name only until benchmarked on a GPU),
``triton`` (fused kernels: shift, padding, partition, bias gather, mask and the online softmax
inside the kernel, no partition copies), ``cpu`` (our C++/OpenMP kernels) and ``reference``
(MONAI's code path in PyTorch). All compute the same function; ``auto`` picks
Triton on GPU tensors and C++ on CPU tensors.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import List, Optional, Sequence, Tuple

import torch

from .. import _dispatch, _environment
from .._dlpack import accepts_dlpack
from .._extension import extension
from ..reference.window_attention import (
    WindowGeometry,
    bias_table_grad,
    window_attention3d_bwd_ref,
    window_attention3d_ref,
    window_geometry,
)
from ._common import check_same, check_tensor, cuda_stream, describe

MAX_HEAD_DIM_TRITON = 128


def _triton_limits(head_dim: int = 0, **_) -> List[str]:
    if head_dim > MAX_HEAD_DIM_TRITON:
        return [f"head_dim must be <= {MAX_HEAD_DIM_TRITON}, got {head_dim}"]
    return []


def _cuda_auto(**_) -> bool:
    # auto picks the CUDA kernels only once they beat Triton on a GPU in our benchmarks; no GPU
    # run exists yet, so auto runs Triton on GPU tensors
    return False


def _cuda_limits(head_dim: int = 0, **_) -> List[str]:
    return [f"head_dim must be <= 128, got {head_dim}"] if head_dim > 128 else []


_DISPATCH = _dispatch.Dispatcher(
    "window_attention3d",
    (
        _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("window_attention_fwd_cuda"),
                          limits=_cuda_limits, auto=_cuda_auto),
        _dispatch.Backend(
            "triton", _dispatch.triton_devices(), dtypes=(torch.float32, torch.float16, torch.bfloat16),
            machine=_dispatch.triton_machine, limits=_triton_limits, auto=_dispatch.triton_auto,
        ),
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("window_attention_fwd_cpu")),
        _dispatch.Backend("reference", ("cpu", "cuda")),
    ),
)


# --- backends: lists of directions (q[i], k[i], v[i]) -> out[i] -------------------------------
# fwd(qs, ks, vs, outs, geom, table, pad_kv, scale, mask_value, mask_padded) -> lse (or empty)
# bwd(gs, qs, ks, vs, outs, lse, dqs, dks, dvs, geom, table, pad_kv, scale, mask_value, mask_padded,
#     need_table) -> (d_table or None, d_pad_kv or None), d_* in float32 (float64 for float64)
def _geo_args(geom: WindowGeometry):
    return geom.window, geom.eff_window, geom.shift, geom.padded


def _triton_fwd(qs, ks, vs, outs, geom, table, pad_kv, scale, mask_value, mask_padded):
    from ..triton.window_attention import window_attention_fwd

    return window_attention_fwd(qs, ks, vs, outs, *_geo_args(geom), table, pad_kv, scale, mask_value, mask_padded)


def _triton_bwd(gs, qs, ks, vs, outs, lse, dqs, dks, dvs, geom, table, pad_kv, scale, mask_value, mask_padded,
                need_table):
    from ..triton.window_attention import window_attention_bwd

    pair, d_pad = window_attention_bwd(gs, qs, ks, vs, outs, lse, dqs, dks, dvs, *_geo_args(geom), table, pad_kv,
                                       scale, mask_value, mask_padded, need_table)
    d_table = bias_table_grad(pair, geom.window, geom.tokens) if pair is not None else None
    return d_table, d_pad


_PARAMS = {}  # metadata -> a WindowAttentionParams with everything but the data pointers filled
_PARAMS_MAX = 256


def _cpu_params(qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded):
    """The kernels' params for these tensors: a copy of the template of their metadata (shapes,
    strides, dtype, geometry, options: one per distinct call signature) given the data pointers."""
    key = _params_key(qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded)
    tmpl = _PARAMS.get(key)
    if tmpl is None:
        if len(_PARAMS) >= _PARAMS_MAX:
            _PARAMS.clear()
        tmpl = _PARAMS[key] = _params_template(qs, ks, vs, geom, scale, mask_value, mask_padded)
    p = copy.copy(tmpl)
    _set_inputs(p, qs, ks, vs, table, pad_kv)
    return p


def _params_key(qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded):
    q0 = qs[0]
    return (q0.dtype, len(qs), q0.shape, q0.stride(), ks[0].stride(), vs[0].stride(), geom, table is None,
            pad_kv is None, scale, mask_value, mask_padded)


def _set_inputs(p, qs, ks, vs, table, pad_kv):
    p.q0, p.k0, p.v0 = qs[0].data_ptr(), ks[0].data_ptr(), vs[0].data_ptr()
    if len(qs) > 1:
        p.q1, p.k1, p.v1 = qs[-1].data_ptr(), ks[-1].data_ptr(), vs[-1].data_ptr()
    if table is not None:
        p.table = table.data_ptr()
    if pad_kv is not None:
        p.pad_kv = pad_kv.data_ptr()


def _params_template(qs, ks, vs, geom, scale, mask_value, mask_padded):
    C = extension.module
    p = C.WindowAttentionParams()
    p.dtype = {
        torch.float32: C.DType.float32, torch.float16: C.DType.float16,
        torch.bfloat16: C.DType.bfloat16, torch.float64: C.DType.float64,
    }[qs[0].dtype]
    p.directions = len(qs)
    p.batch, p.heads, p.head_dim = qs[0].shape[0], qs[0].shape[4], qs[0].shape[5]
    p.size, p.window, p.eff_window = list(geom.size), list(geom.window), list(geom.eff_window)
    p.shift, p.padded = list(geom.shift), list(geom.padded)
    p.scale, p.mask_value, p.mask_padded = float(scale), float(mask_value), bool(mask_padded)
    p.q_strides, p.k_strides, p.v_strides = list(qs[0].stride()), list(ks[0].stride()), list(vs[0].stride())
    p.o_strides = list(torch.empty(qs[0].shape, device="meta").stride())  # outputs: contiguous
    return p


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# "cpu": the C++/OpenMP kernels; "cuda": the CUDA kernels; "cuda-emulated": the CUDA kernels'
# per-thread code run on the host (tests on machines without a GPU)
_ENTRY = {
    "cpu": ("window_attention_fwd_cpu", "window_attention_bwd_cpu", "window_attention_bwd_workspace_bytes"),
    "cuda": ("window_attention_fwd_cuda", "window_attention_bwd_cuda", "window_attention_cuda_bwd_workspace_bytes"),
    "cuda-emulated": ("window_attention_fwd_emulated_cpu", "window_attention_bwd_emulated_cpu",
                      "window_attention_cuda_bwd_workspace_bytes"),
}


def _call(kind: str, which: int, params, like: torch.Tensor) -> None:
    fn = getattr(extension.module, _ENTRY[kind][which])
    if kind == "cuda":
        fn(params, cuda_stream(like))
    else:
        fn(params)


def _compiled_fwd(kind: str):
    def run(qs, ks, vs, outs, geom, table, pad_kv, scale, mask_value, mask_padded):
        p = _cpu_params(qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded)
        lse = torch.empty((len(qs), *qs[0].shape[:5]), dtype=_acc_dtype(qs[0].dtype), device=qs[0].device)
        p.o0, p.o1, p.lse = outs[0].data_ptr(), outs[-1].data_ptr(), lse.data_ptr()
        _call(kind, 0, p, qs[0])
        return lse

    return run


_SCRATCH = threading.local()
_SCRATCH_KEEP = 64 << 20


def _scratch(nbytes: int, device: torch.device) -> torch.Tensor:
    """A uint8 buffer of at least nbytes (rounded to 64). On CPU this thread's buffer (up to
    64 MiB) is kept between calls: a fresh multi-MiB buffer costs page faults on every call (about
    1 ms single-threaded at 12^3 x 6 heads). On a GPU a new one (the caching allocator keeps it)."""
    nbytes = max(-(-nbytes // 64) * 64, 64)
    if device.type != "cpu" or nbytes > _SCRATCH_KEEP:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < nbytes:
        buf = _SCRATCH.buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf


_BWD_PARAMS = {}  # (kind, metadata) -> (WindowAttentionBwdParams without data pointers, pair bytes, workspace)


def _bwd_template(kind, gs, qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded, need_table):
    C = extension.module
    b = C.WindowAttentionBwdParams()
    b.fwd = p = _cpu_params(qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded)
    b.g_strides = gs[0].stride()
    # dq, dk, dv are fresh contiguous tensors of the inputs' shape: the outputs' strides
    b.dq_strides = b.dk_strides = b.dv_strides = p.o_strides
    b.grad_pad_kv = 1 if pad_kv is not None else 0  # non-null: the workspace size counts the pad partials
    b.pair_grad = 1 if need_table else 0  # and the pair partials
    acc = _acc_dtype(qs[0].dtype)
    pair_bytes = qs[0].shape[4] * geom.tokens**2 * acc.itemsize if need_table else 0
    ws_bytes = getattr(C, _ENTRY[kind][2])(b)
    b.grad_pad_kv = b.pair_grad = 0
    return b, pair_bytes, ws_bytes


def _compiled_bwd(kind: str):
    def run(gs, qs, ks, vs, outs, lse, dqs, dks, dvs, geom, table, pad_kv, scale, mask_value, mask_padded,
            need_table):
        C = extension.module
        dev = qs[0].device
        acc = _acc_dtype(qs[0].dtype)
        key = (kind, _params_key(qs, ks, vs, geom, table, pad_kv, scale, mask_value, mask_padded), len(gs),
               gs[0].stride(), need_table)
        entry = _BWD_PARAMS.get(key)
        if entry is None:
            if len(_BWD_PARAMS) >= _PARAMS_MAX:
                _BWD_PARAMS.clear()
            entry = _BWD_PARAMS[key] = _bwd_template(kind, gs, qs, ks, vs, geom, table, pad_kv, scale, mask_value,
                                                     mask_padded, need_table)
        tmpl, pair_bytes, ws_bytes = entry
        b = copy.copy(tmpl)
        p = b.fwd  # a reference into b
        _set_inputs(p, qs, ks, vs, table, pad_kv)
        p.o0, p.o1, p.lse = outs[0].data_ptr(), outs[-1].data_ptr(), lse.data_ptr()
        b.g0, b.g1 = gs[0].data_ptr(), gs[-1].data_ptr()
        b.dq0, b.dq1 = dqs[0].data_ptr(), dqs[-1].data_ptr()
        b.dk0, b.dk1 = dks[0].data_ptr(), dks[-1].data_ptr()
        b.dv0, b.dv1 = dvs[0].data_ptr(), dvs[-1].data_ptr()
        n, heads = geom.tokens, qs[0].shape[4]
        d_pad = None
        if pad_kv is not None:
            d_pad = torch.empty((2, heads, qs[0].shape[5]), dtype=acc, device=dev)
            b.grad_pad_kv = d_pad.data_ptr()
        # pair_grad and the workspace are consumed before this returns: one scratch buffer
        scratch = _scratch(pair_bytes + ws_bytes, dev)
        base = scratch.data_ptr()
        b.workspace, b.workspace_bytes = base + pair_bytes, scratch.numel() - pair_bytes
        d_table = None
        if need_table:
            b.pair_grad = base
            if kind == "cpu":  # the C++ fixed-order sum of pair, in the same call
                d_table = torch.empty((geom.table_rows, heads), dtype=acc)
                b.table_grad = d_table.data_ptr()
        _call(kind, 1, b, qs[0])
        if need_table and d_table is None:
            pair = scratch[:pair_bytes].view(acc).view(heads, n, n)
            if dev.type == "cpu":  # cuda-emulated: the same C++ sum
                d_table = torch.empty((geom.table_rows, heads), dtype=acc)
                C.window_attention_table_grad_cpu(b.fwd, pair.data_ptr(), d_table.data_ptr())
            else:
                d_table = bias_table_grad(pair, geom.window, n)
        return d_table, d_pad

    return run


def _ref_opts(geom, table, pad_kv, scale, mask_value, mask_padded):
    return dict(window=geom.window, shift=_requested_shift(geom), rel_bias_table=table, mask_value=mask_value,
                scale=scale, pad_kv=pad_kv, mask_padded=mask_padded)


def _requested_shift(geom: WindowGeometry) -> Tuple[int, int, int]:
    # the clamped shift is 0 exactly where the window was clamped, so it re-clamps to itself
    return geom.shift


def _reference_fwd(qs, ks, vs, outs, geom, table, pad_kv, scale, mask_value, mask_padded):
    opts = _ref_opts(geom, table, pad_kv, scale, mask_value, mask_padded)
    for q, k, v, o in zip(qs, ks, vs, outs):
        o.copy_(window_attention3d_ref(q, k, v, **opts))
    return qs[0].new_empty((0,), dtype=torch.float32)


def _reference_bwd(gs, qs, ks, vs, outs, lse, dqs, dks, dvs, geom, table, pad_kv, scale, mask_value, mask_padded,
                   need_table):
    opts = _ref_opts(geom, table, pad_kv, scale, mask_value, mask_padded)
    d_table = d_pad = None
    for g, q, k, v, dq, dk, dv in zip(gs, qs, ks, vs, dqs, dks, dvs):
        gq, gk, gv, gt, gp = window_attention3d_bwd_ref(g, q, k, v, **opts)
        dq.copy_(gq)
        dk.copy_(gk)
        dv.copy_(gv)
        if gt is not None:
            d_table = gt if d_table is None else d_table + gt
        d_pad = gp if d_pad is None else d_pad + gp
    return d_table, (d_pad if pad_kv is not None else None)


_FWD = {"triton": _triton_fwd, "reference": _reference_fwd}
_BWD = {"triton": _triton_bwd, "reference": _reference_bwd}
for _kind in _ENTRY:
    _FWD[_kind], _BWD[_kind] = _compiled_fwd(_kind), _compiled_bwd(_kind)


# --- the custom ops: the one compile-safe boundary -----------------------------------------
def _lse_shape(q: torch.Tensor, dirs: int, backend: str):
    return (dirs, *q.shape[:5]) if backend != "reference" else (0,)


def _lse_dtype(q: torch.Tensor, backend: str):
    return torch.float64 if (backend in _ENTRY and q.dtype == torch.float64) else torch.float32


def _run_fwd(qs, ks, vs, table, pad_kv, window, shift, mask_value, scale, mask_padded, backend, geom=None):
    if geom is None:
        geom = window_geometry(qs[0].shape[1:4], window, shift)
    outs = [torch.empty(q.shape, dtype=q.dtype, device=q.device) for q in qs]
    lse = _FWD[backend](qs, ks, vs, outs, geom, table, pad_kv, scale, mask_value, mask_padded)
    return outs, lse


def _run_bwd(gs, qs, ks, vs, outs, lse, table, pad_kv, window, shift, mask_value, scale, mask_padded,
             need_table, backend, geom=None, one_buffer=False):
    if geom is None:
        geom = window_geometry(qs[0].shape[1:4], window, shift)
    if len(gs) == 2 and gs[0].stride() != gs[1].stride():  # the kernels share one set of strides
        gs = [g.contiguous() for g in gs]
    q = qs[0]
    if one_buffer:  # eager: views of one allocation (a custom op's outputs must not alias each other)
        grads = torch.empty((3 * len(qs), *q.shape), dtype=q.dtype, device=q.device).unbind(0)
    else:
        grads = [torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3 * len(qs))]
    dqs, dks, dvs = grads[0::3], grads[1::3], grads[2::3]
    d_table, d_pad = _BWD[backend](gs, qs, ks, vs, outs, lse, dqs, dks, dvs, geom, table, pad_kv, scale,
                                   mask_value, mask_padded, need_table and table is not None)
    if d_table is None:
        d_table = qs[0].new_empty((0,))
    elif d_table.dtype != table.dtype:  # accumulated in float32 for half tables
        d_table = d_table.to(table.dtype)
    if d_pad is None and pad_kv is not None:  # no padding token in this volume (or all masked)
        d_pad = torch.zeros_like(pad_kv)
    if d_pad is None:
        d_pad = qs[0].new_empty((0,))
    elif d_pad.dtype != pad_kv.dtype:
        d_pad = d_pad.to(pad_kv.dtype)
    return dqs, dks, dvs, d_table, d_pad


@torch.library.custom_op("medkernels::window_attention3d", mutates_args=())
def _window_attention3d_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: Optional[torch.Tensor],
    pad_kv: Optional[torch.Tensor],
    window: List[int],
    shift: List[int],
    mask_value: float,
    scale: float,
    mask_padded: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    outs, lse = _run_fwd([q], [k], [v], table, pad_kv, window, shift, mask_value, scale, mask_padded, backend)
    return outs[0], lse


@_window_attention3d_op.register_fake
def _(q, k, v, table, pad_kv, window, shift, mask_value, scale, mask_padded, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        _lse_shape(q, 1, backend), dtype=_lse_dtype(q, backend)
    )


@torch.library.custom_op("medkernels::window_attention3d_bwd", mutates_args=())
def _window_attention3d_bwd_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    table: Optional[torch.Tensor],
    pad_kv: Optional[torch.Tensor],
    window: List[int],
    shift: List[int],
    mask_value: float,
    scale: float,
    mask_padded: bool,
    need_table: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dqs, dks, dvs, d_table, d_pad = _run_bwd([grad_out], [q], [k], [v], [out], lse, table, pad_kv, window, shift,
                                             mask_value, scale, mask_padded, need_table, backend)
    return dqs[0], dks[0], dvs[0], d_table, d_pad


def _fake_grads(q, table, pad_kv, need_table):
    d_table = torch.empty_like(table) if (table is not None and need_table) else q.new_empty((0,))
    d_pad = torch.empty_like(pad_kv) if pad_kv is not None else q.new_empty((0,))
    return d_table, d_pad


@_window_attention3d_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, table, pad_kv, window, shift, mask_value, scale, mask_padded, need_table, backend):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return (like(q), like(k), like(v), *_fake_grads(q, table, pad_kv, need_table))


def _setup_self(ctx, inputs, output):
    q, k, v, table, pad_kv, window, shift, mask_value, scale, mask_padded, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, table, pad_kv, out, lse)
    ctx.options = (window, shift, mask_value, scale, mask_padded, backend)
    ctx.mark_non_differentiable(lse)


def _backward_self(ctx, grad_out, _grad_lse):
    q, k, v, table, pad_kv, out, lse = ctx.saved_tensors
    window, shift, mask_value, scale, mask_padded, backend = ctx.options
    need_table = table is not None and ctx.needs_input_grad[3]
    dq, dk, dv, d_table, d_pad = _window_attention3d_bwd_op(
        grad_out, q, k, v, out, lse, table, pad_kv, window, shift, mask_value, scale, mask_padded, need_table, backend
    )
    return (dq, dk, dv, d_table if need_table else None,
            d_pad if (pad_kv is not None and ctx.needs_input_grad[4]) else None,
            None, None, None, None, None, None)


_window_attention3d_op.register_autograd(_backward_self, setup_context=_setup_self)


@torch.library.custom_op("medkernels::cross_window_attention3d", mutates_args=())
def _cross_window_attention3d_op(
    q_a: torch.Tensor,
    k_a: torch.Tensor,
    v_a: torch.Tensor,
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    table: Optional[torch.Tensor],
    pad_kv: Optional[torch.Tensor],
    window: List[int],
    shift: List[int],
    mask_value: float,
    scale: float,
    mask_padded: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # direction 0: a's queries on b's keys/values; direction 1: b's queries on a's
    outs, lse = _run_fwd([q_a, q_b], [k_b, k_a], [v_b, v_a], table, pad_kv, window, shift, mask_value, scale,
                         mask_padded, backend)
    return outs[0], outs[1], lse


@_cross_window_attention3d_op.register_fake
def _(q_a, k_a, v_a, q_b, k_b, v_b, table, pad_kv, window, shift, mask_value, scale, mask_padded, backend):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return like(q_a), like(q_b), q_a.new_empty(_lse_shape(q_a, 2, backend), dtype=_lse_dtype(q_a, backend))


@torch.library.custom_op("medkernels::cross_window_attention3d_bwd", mutates_args=())
def _cross_window_attention3d_bwd_op(
    grad_a: torch.Tensor,
    grad_b: torch.Tensor,
    q_a: torch.Tensor,
    k_a: torch.Tensor,
    v_a: torch.Tensor,
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    out_a: torch.Tensor,
    out_b: torch.Tensor,
    lse: torch.Tensor,
    table: Optional[torch.Tensor],
    pad_kv: Optional[torch.Tensor],
    window: List[int],
    shift: List[int],
    mask_value: float,
    scale: float,
    mask_padded: bool,
    need_table: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    dqs, dks, dvs, d_table, d_pad = _run_bwd([grad_a, grad_b], [q_a, q_b], [k_b, k_a], [v_b, v_a], [out_a, out_b],
                                             lse, table, pad_kv, window, shift, mask_value, scale, mask_padded,
                                             need_table, backend)
    # dks[0] / dvs[0] are the gradients of k_b / v_b (direction 0 reads them)
    return dqs[0], dks[1], dvs[1], dqs[1], dks[0], dvs[0], d_table, d_pad


@_cross_window_attention3d_bwd_op.register_fake
def _(grad_a, grad_b, q_a, k_a, v_a, q_b, k_b, v_b, out_a, out_b, lse, table, pad_kv, window, shift, mask_value,
      scale, mask_padded, need_table, backend):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return (like(q_a), like(k_a), like(v_a), like(q_b), like(k_b), like(v_b),
            *_fake_grads(q_a, table, pad_kv, need_table))


def _setup_cross(ctx, inputs, output):
    q_a, k_a, v_a, q_b, k_b, v_b, table, pad_kv, window, shift, mask_value, scale, mask_padded, backend = inputs
    out_a, out_b, lse = output
    ctx.save_for_backward(q_a, k_a, v_a, q_b, k_b, v_b, table, pad_kv, out_a, out_b, lse)
    ctx.options = (window, shift, mask_value, scale, mask_padded, backend)
    ctx.mark_non_differentiable(lse)


def _backward_cross(ctx, grad_a, grad_b, _grad_lse):
    q_a, k_a, v_a, q_b, k_b, v_b, table, pad_kv, out_a, out_b, lse = ctx.saved_tensors
    window, shift, mask_value, scale, mask_padded, backend = ctx.options
    need_table = table is not None and ctx.needs_input_grad[6]
    grads = _cross_window_attention3d_bwd_op(
        grad_a, grad_b, q_a, k_a, v_a, q_b, k_b, v_b, out_a, out_b, lse, table, pad_kv, window, shift, mask_value,
        scale, mask_padded, need_table, backend,
    )
    d_table, d_pad = grads[6], grads[7]
    return (*grads[:6], d_table if need_table else None,
            d_pad if (pad_kv is not None and ctx.needs_input_grad[7]) else None,
            None, None, None, None, None, None)


_cross_window_attention3d_op.register_autograd(_backward_cross, setup_context=_setup_cross)


# --- the eager path ----------------------------------------------------------------------
# An eager call on plain tensors runs the same _run_fwd / _run_bwd through an autograd.Function
# instead of the custom ops: torch.library's Python layers (autograd wrapper, redispatch, default
# filling, alias checks) cost about 190 us per forward + backward, a third of the whole call at
# Swin UNETR's last stage (3^3 tokens, 24 heads). torch.compile, export, fake/meta tensors,
# tensor subclasses, dispatch or function modes and functorch transforms take the custom ops.
EAGER_FAST_PATH = True  # tests turn it off to run the custom ops eagerly


def _eager_ok(*tensors: Optional[torch.Tensor]) -> bool:
    if not EAGER_FAST_PATH or torch.compiler.is_compiling():
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return all(t is None or (type(t) is torch.Tensor and (t.is_cpu or t.is_cuda) and not wrapped(t))
               for t in tensors)


def _directions(qkv: Sequence[torch.Tensor]):
    # self: (q, k, v); cross: (q_a, k_a, v_a, q_b, k_b, v_b), direction 0 = a's queries on b
    if len(qkv) == 3:
        return [qkv[0]], [qkv[1]], [qkv[2]]
    return [qkv[0], qkv[3]], [qkv[4], qkv[1]], [qkv[5], qkv[2]]


class _EagerFunction(torch.autograd.Function):
    """The custom ops' forward and backward (the same _run_fwd / _run_bwd) for eager calls."""

    @staticmethod
    def forward(ctx, opts, table, pad_kv, *qkv):
        window, shift, mask_value, scale, mask_padded, backend, geom = opts
        qs, ks, vs = _directions(qkv)
        outs, lse = _run_fwd(qs, ks, vs, table, pad_kv, window, shift, mask_value, scale, mask_padded, backend, geom)
        ctx.opts, ctx.n_qkv, ctx.has_table, ctx.has_pad = opts, len(qkv), table is not None, pad_kv is not None
        ctx.save_for_backward(table, pad_kv, lse, *qkv, *outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        window, shift, mask_value, scale, mask_padded, backend, geom = ctx.opts
        table, pad_kv, lse, *rest = ctx.saved_tensors
        qkv, outs = rest[:ctx.n_qkv], rest[ctx.n_qkv:]
        qs, ks, vs = _directions(qkv)
        gs = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, outs)]
        need_table = ctx.has_table and ctx.needs_input_grad[1]
        dqs, dks, dvs, d_table, d_pad = _run_bwd(gs, qs, ks, vs, outs, lse, table, pad_kv, window, shift,
                                                 mask_value, scale, mask_padded, need_table, backend, geom,
                                                 one_buffer=True)
        if len(qs) == 1:
            d_qkv = (dqs[0], dks[0], dvs[0])
        else:  # dks[0] / dvs[0] are the gradients of k_b / v_b (direction 0 reads them)
            d_qkv = (dqs[0], dks[1], dvs[1], dqs[1], dks[0], dvs[0])
        return (None, d_table if need_table else None,
                d_pad if (ctx.has_pad and ctx.needs_input_grad[2]) else None, *d_qkv)


# --- argument checks and the public functions ---------------------------------------------
# The checks, the geometry and the backend choice depend only on the call's metadata: they run
# once per distinct signature (shapes, strides, dtypes, devices and options); later calls with
# the same signature reuse the plan (about 40 us a call at Swin UNETR's last stage).
_PLANS = {}  # signature -> (geom, rel_bias_table needs .contiguous(), pad_kv needs it, opts)
_PLANS_MAX = 256


def _meta(t):
    if t is None:
        return None
    if type(t) is not torch.Tensor:
        raise TypeError  # no plan: the full checks say what is wrong
    return t.shape, t.stride(), t.dtype, t.device


def _opt_key(x):
    # exact types too: a cached plan for window=1 must not answer window=True
    if isinstance(x, (list, tuple)):
        return (type(x), *(_opt_key(i) for i in x))
    hash(x)
    return type(x), x


def _signature(tensors, window, shift, rel_bias_table, pad_kv, mask_value, scale, mask_padded, backend):
    """The plan cache's key for a call, or None (unhashable or non-tensor arguments: no caching)."""
    try:
        return (tuple(_meta(t) for t in tensors), _meta(rel_bias_table), _meta(pad_kv), _opt_key(window),
                _opt_key(shift), _opt_key(mask_value), _opt_key(scale), _opt_key(mask_padded), _opt_key(backend),
                _environment.DEFAULT_BACKEND)
    except TypeError:
        return None


def _cached_plan(names, tensors, window, shift, rel_bias_table, pad_kv, mask_value, scale, mask_padded, backend):
    """The call's plan: the cached one for a signature seen before, else the q/k/v checks and
    :func:`_plan` (cached when the signature is hashable; a bad call raises before caching)."""
    key = _signature(tensors, window, shift, rel_bias_table, pad_kv, mask_value, scale, mask_padded, backend)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        _check_qkv(names, tensors)
        plan = _plan(tensors[0], window, shift, rel_bias_table, pad_kv, scale, mask_value, mask_padded, backend)
        if key is not None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


def _prepared(plan, rel_bias_table, pad_kv):
    _, table_copy, pad_copy, _ = plan
    return (rel_bias_table.contiguous() if table_copy else rel_bias_table,
            pad_kv.contiguous() if pad_copy else pad_kv)


def _check_qkv(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    for name, t in zip(names, tensors):
        check_tensor(name, t, dim=6)
    ref_name, ref = names[0], tensors[0]
    if ref.numel() == 0:
        raise ValueError(f"{ref_name} must be non-empty (B, D, H, W, heads, head_dim), got {describe(ref)}")
    for name, t in zip(names[1:], tensors[1:]):
        if t.shape != ref.shape:
            raise ValueError(
                f"{name} must have the shape of {ref_name} (B, D, H, W, heads, head_dim) = {tuple(ref.shape)}, "
                f"got {describe(t)}"
            )
    check_same(ref_name, ref, **dict(zip(names[1:], tensors[1:])))


def _check_extras(q, geom, rel_bias_table, pad_kv, scale, mask_value):
    heads, head_dim = q.shape[4], q.shape[5]
    if rel_bias_table is not None:
        check_tensor("rel_bias_table", rel_bias_table, dim=2)
        want = (geom.table_rows, heads)
        if tuple(rel_bias_table.shape) != want:
            raise ValueError(
                f"rel_bias_table must be ((2*{geom.window[0]}-1)(2*{geom.window[1]}-1)(2*{geom.window[2]}-1), heads) = "
                f"{want} for window {geom.window} and {heads} heads, got {describe(rel_bias_table)}"
            )
        check_same("q", q, rel_bias_table=rel_bias_table)
        rel_bias_table = rel_bias_table.contiguous()
    if pad_kv is not None:
        check_tensor("pad_kv", pad_kv, dim=3)
        if tuple(pad_kv.shape) != (2, heads, head_dim):
            raise ValueError(
                f"pad_kv must be (2, heads, head_dim) = (2, {heads}, {head_dim}) (key and value of padding tokens), "
                f"got {describe(pad_kv)}"
            )
        check_same("q", q, pad_kv=pad_kv)
        pad_kv = pad_kv.contiguous()
    scale = head_dim**-0.5 if scale is None else float(scale)
    mask_value = float(mask_value)
    if mask_value != mask_value or mask_value > 0:
        raise ValueError(f"mask_value must be <= 0 (-100.0 as MONAI, or -inf), got {mask_value}")
    return rel_bias_table, pad_kv, scale, mask_value


_PLAIN_TYPES = frozenset((torch.Tensor, int, float, bool, str, tuple, list, type(None)))


def _torch_fast_lane(fn):
    """accepts_dlpack(fn), except that calls whose arguments are all plain torch tensors and
    Python values go straight to fn: accepts_dlpack's per-argument isinstance checks through
    torch.Tensor's metaclass cost about 10 us a call (a tenth of the forward at 3^3 x 24 heads)."""
    slow = accepts_dlpack(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        plain = _PLAIN_TYPES
        if all(type(a) in plain for a in args) and all(type(a) in plain for a in kwargs.values()):
            return fn(*args, **kwargs)
        return slow(*args, **kwargs)

    return wrapper


def _geometry(q: torch.Tensor, window, shift) -> WindowGeometry:
    return window_geometry(q.shape[1:4], window, shift)


def _plan(q, window, shift, rel_bias_table, pad_kv, scale, mask_value, mask_padded, backend):
    """Checks the options against q (already checked), picks the backend: (geom, table needs a
    contiguous copy, pad_kv needs one, the ops' options incl. geom)."""
    geom = _geometry(q, window, shift)
    table_c, pad_c, scale, mask_value = _check_extras(q, geom, rel_bias_table, pad_kv, scale, mask_value)
    name = _DISPATCH.select(backend, q.device, q.dtype, head_dim=q.shape[5])
    opts = (list(geom.window), list(geom.shift), mask_value, scale, bool(mask_padded), name, geom)
    return geom, table_c is not rel_bias_table, pad_c is not pad_kv, opts


@_torch_fast_lane
def window_attention3d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window,
    shift=0,
    rel_bias_table: Optional[torch.Tensor] = None,
    mask_value: float = -100.0,
    scale: Optional[float] = None,
    pad_kv: Optional[torch.Tensor] = None,
    mask_padded: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """(Shifted) window self-attention in 3D, as Swin / MONAI Swin UNETR compute it.

    Args:
        q, k, v: (B, D, H, W, heads, head_dim) projected queries, keys and values, any strides
            (e.g. views of one (B, D, H, W, 3, heads, head_dim) qkv tensor).
        window: int or (wd, wh, ww). On an axis whose size is <= the window, the window becomes
            the size and the shift 0 (MONAI's ``get_window_size``).
        shift: int or (sd, sh, sw), each in [0, window): cyclic shift by -shift before the
            partition (Swin's SW-MSA), with the shift-region mask.
        rel_bias_table: ((2wd-1)(2wh-1)(2ww-1), heads) relative position bias table for the
            configured window (MONAI's ``relative_position_bias_table``), or None.
        mask_value: added to logits of keys in another shift region: -100.0 (Swin/MONAI) or -inf.
        scale: logit scale, default head_dim ** -0.5.
        pad_kv: (2, heads, head_dim) key and value of the padding tokens of a volume not divisible
            by the window (MONAI pads zero features, so after a qkv projection with bias they are
            the bias slices); None means zeros. Padding queries are dropped.
        mask_padded: True masks padding keys out instead of attending to them.
        backend: "auto", "triton", "cpu" or "reference".

    Returns:
        (B, D, H, W, heads, head_dim), contiguous, q's dtype.
    """
    plan = _cached_plan(("q", "k", "v"), (q, k, v), window, shift, rel_bias_table, pad_kv, mask_value, scale,
                        mask_padded, backend)
    rel_bias_table, pad_kv = _prepared(plan, rel_bias_table, pad_kv)
    opts = plan[3]
    if _eager_ok(q, k, v, rel_bias_table, pad_kv):
        return _EagerFunction.apply(opts, rel_bias_table, pad_kv, q, k, v)
    out, _ = _window_attention3d_op(q, k, v, rel_bias_table, pad_kv, *opts[:6])
    return out


@_torch_fast_lane
def cross_window_attention3d_separate(
    q_a: torch.Tensor,
    k_a: torch.Tensor,
    v_a: torch.Tensor,
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    v_b: torch.Tensor,
    window,
    shift=0,
    rel_bias_table: Optional[torch.Tensor] = None,
    mask_value: float = -100.0,
    scale: Optional[float] = None,
    pad_kv: Optional[torch.Tensor] = None,
    mask_padded: bool = False,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_window_attention3d` on six separate (B, D, H, W, heads, head_dim) tensors
    (any strides; q_a/q_b, k_a/k_b and v_a/v_b are copied to contiguous when their strides
    differ, since the kernels address both directions with one set of strides per role).
    Returns (out_a, out_b)."""
    tensors = [q_a, k_a, v_a, q_b, k_b, v_b]
    plan = _cached_plan(("q_a", "k_a", "v_a", "q_b", "k_b", "v_b"), tensors, window, shift, rel_bias_table, pad_kv,
                        mask_value, scale, mask_padded, backend)
    for i in range(3):
        if tensors[i].stride() != tensors[i + 3].stride():
            tensors[i], tensors[i + 3] = tensors[i].contiguous(), tensors[i + 3].contiguous()
    rel_bias_table, pad_kv = _prepared(plan, rel_bias_table, pad_kv)
    opts = plan[3]
    if _eager_ok(*tensors, rel_bias_table, pad_kv):
        return _EagerFunction.apply(opts, rel_bias_table, pad_kv, *tensors)
    out_a, out_b, _ = _cross_window_attention3d_op(*tensors, rel_bias_table, pad_kv, *opts[:6])
    return out_a, out_b


def _split_qkv(name: str, qkv: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, ...]:
    """(B, D, H, W, 3*C) -> q, k, v as (B, D, H, W, heads, head_dim) views (splitting the last
    axis is always a view, whatever the strides)."""
    check_tensor(name, qkv, dim=5)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[-1] % (3 * num_heads) or qkv.shape[-1] == 0:
        raise ValueError(
            f"{name} must be (B, D, H, W, 3*C) with C divisible by num_heads={num_heads} (the qkv Linear's output), "
            f"got {describe(qkv)}"
        )
    return qkv.unflatten(-1, (3, num_heads, qkv.shape[-1] // (3 * num_heads))).unbind(-3)


@_torch_fast_lane
def cross_window_attention3d(
    qkv_a: torch.Tensor,
    qkv_b: torch.Tensor,
    num_heads: int,
    window,
    shift=0,
    rel_bias_table: Optional[torch.Tensor] = None,
    mask_value: float = -100.0,
    scale: Optional[float] = None,
    pad_kv: Optional[torch.Tensor] = None,
    mask_padded: bool = False,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SwinCross cross-modal window attention (``WindowAttention_crossModality``), both
    directions in one launch: ``out_a = attn(q_a, k_b, v_b)``, ``out_b = attn(q_b, k_a, v_a)``
    with one shared bias table (and one ``pad_kv``: the two streams share the qkv projection).

    Args:
        qkv_a, qkv_b: (B, D, H, W, 3*C) outputs of the shared qkv Linear for the two streams
            (C = num_heads * head_dim, last axis ordered (3, heads, head_dim) as Swin's
            ``reshape(..., 3, heads, C // heads)``). q, k and v are taken as strided views, no
            copies (when qkv_a and qkv_b have different strides, one contiguous copy each).
        num_heads: heads.
        window, shift, rel_bias_table, mask_value, scale, pad_kv, mask_padded, backend: as
            :func:`window_attention3d`.

    Returns:
        (out_a, out_b), each (B, D, H, W, heads, head_dim), contiguous.

    The six-tensor form is :func:`cross_window_attention3d_separate`.
    """
    if isinstance(num_heads, torch.Tensor):  # six tensors (q_a, k_a, v_a, q_b, k_b, v_b, ...) passed here
        raise TypeError(
            "cross_window_attention3d takes (qkv_a, qkv_b, num_heads, window, ...) with qkv (B, D, H, W, 3*C); "
            f"got a tensor as num_heads ({describe(num_heads)}): for six (B, D, H, W, heads, head_dim) tensors "
            "call cross_window_attention3d_separate(q_a, k_a, v_a, q_b, k_b, v_b, window, ...)"
        )
    q_a, k_a, v_a = _split_qkv("qkv_a", qkv_a, num_heads)
    q_b, k_b, v_b = _split_qkv("qkv_b", qkv_b, num_heads)
    if qkv_a.shape != qkv_b.shape:
        raise ValueError(f"qkv_b must have the shape of qkv_a {tuple(qkv_a.shape)}, got {describe(qkv_b)}")
    return cross_window_attention3d_separate(q_a, k_a, v_a, q_b, k_b, v_b, window, shift, rel_bias_table,
                                             mask_value, scale, pad_kv, mask_padded, backend)


def window_attention3d_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """The backend ``window_attention3d`` would run for q (for benchmarks and reports)."""
    return _DISPATCH.select(backend, q.device, q.dtype, head_dim=q.shape[5])
