"""``window_attention3d`` / ``cross_window_attention3d``: (shifted) 3D window attention as torch
custom ops with autograd (for q, k, v, the bias table and the padding key/value), on
:mod:`medkernels.ops._kit`. Backends: ``cuda`` (by name only until benchmarked on a GPU),
``triton`` (shift, padding, partition, bias, mask and online softmax fused, no partition copies),
``cpu`` (our C++/OpenMP) and ``reference`` (MONAI's code path); ``auto`` picks Triton on GPU
tensors and C++ on CPU tensors. Every backend runs lists of directions, ``outs[i] = attn(qs[i],
ks[i], vs[i])``: one for self-attention, two for the cross-modal form (a's queries on b's keys and
values, and b's on a's) sharing one bias table and one ``pad_kv``.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Optional, Tuple

import torch

from .. import _dispatch
from ..reference.window_attention import (
    WindowGeometry,
    bias_table_grad,
    window_attention3d_bwd_ref,
    window_attention3d_ref,
    window_geometry,
)
from . import _kit
from ._common import check_same, check_tensor, describe

MAX_HEAD_DIM = 128  # the Triton and CUDA kernels' head_dim tiles


@_kit.options
class WindowOptions:
    window: Tuple[int, int, int]  # as configured (the bias table's window)
    shift: Tuple[int, int, int]  # after MONAI's clamp (when clamp)
    mask_value: float
    scale: float
    mask_padded: bool
    clamp: bool = True  # MONAI's get_window_size; False: Swin's code (SwinCross), no clamp


_geometry = lru_cache(maxsize=256)(window_geometry)


def _geom(o: WindowOptions, q: torch.Tensor) -> WindowGeometry:
    return _geometry(tuple(q.shape[1:4]), o.window, o.shift, o.clamp)


# --- backends: fwd(o, geom, qs, ks, vs, table, pad_kv, outs, lse) fills outs and lse;
# --- bwd(o, geom, gs, qs, ks, vs, outs, lse, table, pad_kv, dqs, dks, dvs, need_table) fills
# --- dqs, dks, dvs and returns (d_table or None, d_pad or None) in the accumulation dtype
class _Reference:
    def lse(self, q: torch.Tensor, dirs: int):
        return (0,), torch.float32  # the backward recomputes the softmax

    def _opts(self, o, geom, table, pad_kv):
        return dict(window=geom.window, shift=geom.shift, rel_bias_table=table, mask_value=o.mask_value,
                    scale=o.scale, pad_kv=pad_kv, mask_padded=o.mask_padded, clamp_window=o.clamp)

    def fwd(self, o, geom, qs, ks, vs, table, pad_kv, outs, lse):
        kw = self._opts(o, geom, table, pad_kv)
        for q, k, v, out in zip(qs, ks, vs, outs):
            out.copy_(window_attention3d_ref(q, k, v, **kw))

    def bwd(self, o, geom, gs, qs, ks, vs, outs, lse, table, pad_kv, dqs, dks, dvs, need_table):
        kw = self._opts(o, geom, table, pad_kv)
        d_table = d_pad = None
        for g, q, k, v, dq, dk, dv in zip(gs, qs, ks, vs, dqs, dks, dvs):
            gq, gk, gv, gt, gp = window_attention3d_bwd_ref(g, q, k, v, **kw)
            dq.copy_(gq)
            dk.copy_(gk)
            dv.copy_(gv)
            if gt is not None:
                d_table = gt if d_table is None else d_table + gt
            d_pad = gp if d_pad is None else d_pad + gp
        return d_table, (d_pad if pad_kv is not None else None)


class _Triton:
    def lse(self, q: torch.Tensor, dirs: int):
        return (dirs, *q.shape[:5]), torch.float32

    def fwd(self, o, geom, qs, ks, vs, table, pad_kv, outs, lse):
        from ..triton.window_attention import window_attention_fwd

        lse.copy_(window_attention_fwd(qs, ks, vs, outs, geom.window, geom.eff_window, geom.shift, geom.padded,
                                       table, pad_kv, o.scale, o.mask_value, o.mask_padded))

    def bwd(self, o, geom, gs, qs, ks, vs, outs, lse, table, pad_kv, dqs, dks, dvs, need_table):
        from ..triton.window_attention import window_attention_bwd

        pair, d_pad = window_attention_bwd(gs, qs, ks, vs, outs, lse, dqs, dks, dvs, geom.window, geom.eff_window,
                                           geom.shift, geom.padded, table, pad_kv, o.scale, o.mask_value,
                                           o.mask_padded, need_table)
        return (bias_table_grad(pair, geom.window, geom.tokens) if pair is not None else None), d_pad


class _Compiled(_kit.Compiled):
    """``fused_table_grad``: the kernel sums the bias-table gradient itself (the C++ kernels, in a
    fixed order); otherwise the per-pair partials are summed here."""

    def __init__(self, kind, symbols, fused_table_grad: bool) -> None:
        super().__init__(kind, symbols)
        self.fused_table_grad = fused_table_grad

    def lse(self, q: torch.Tensor, dirs: int):
        return (dirs, *q.shape[:5]), _kit.acc_dtype(q.dtype)

    def _params(self, o, geom, qs, ks, vs, table, pad_kv):
        """The kernels' params: a copy of the template for this call signature, given the data pointers."""
        q0 = qs[0]
        key = ("window_attention", q0.dtype, len(qs), q0.shape, q0.stride(), ks[0].stride(), vs[0].stride(), o,
               table is None, pad_kv is None)
        p = _kit.template(key, lambda: self._template(o, geom, qs, ks, vs))
        p.q0, p.k0, p.v0 = q0.data_ptr(), ks[0].data_ptr(), vs[0].data_ptr()
        if len(qs) > 1:
            p.q1, p.k1, p.v1 = qs[1].data_ptr(), ks[1].data_ptr(), vs[1].data_ptr()
        p.table, p.pad_kv = _kit.ptr(table), _kit.ptr(pad_kv)
        return p, key

    def _template(self, o, geom, qs, ks, vs):
        p = self.C.WindowAttentionParams()
        q0 = qs[0]
        p.dtype = self.dtype(q0.dtype)
        p.directions = len(qs)
        p.batch, p.heads, p.head_dim = q0.shape[0], q0.shape[4], q0.shape[5]
        p.size, p.window, p.eff_window = list(geom.size), list(geom.window), list(geom.eff_window)
        p.shift, p.padded = list(geom.shift), list(geom.padded)
        p.scale, p.mask_value, p.mask_padded = o.scale, o.mask_value, o.mask_padded
        p.q_strides, p.k_strides, p.v_strides = list(q0.stride()), list(ks[0].stride()), list(vs[0].stride())
        p.o_strides = list(torch.empty(q0.shape, device="meta").stride())  # outputs: contiguous
        return p

    def fwd(self, o, geom, qs, ks, vs, table, pad_kv, outs, lse):
        p, _ = self._params(o, geom, qs, ks, vs, table, pad_kv)
        p.o0, p.o1, p.lse = outs[0].data_ptr(), outs[-1].data_ptr(), lse.data_ptr()
        self.launch("fwd", p, qs[0])

    def _bwd_template(self, p, gs, geom, heads, acc, need_table):
        b = self.C.WindowAttentionBwdParams()
        b.fwd = p
        b.g_strides = gs[0].stride()
        # dq, dk, dv are fresh contiguous tensors of the inputs' shape: the outputs' strides
        b.dq_strides = b.dk_strides = b.dv_strides = p.o_strides
        b.grad_pad_kv = 1 if p.pad_kv else 0  # non-null: the workspace size counts the pad partials
        b.pair_grad = 1 if need_table else 0  # and the pair partials
        pair_bytes = heads * geom.tokens**2 * acc.itemsize if need_table else 0
        ws_bytes = self.query("bwd_workspace", b)
        b.grad_pad_kv = b.pair_grad = 0
        return b, pair_bytes, ws_bytes

    def bwd(self, o, geom, gs, qs, ks, vs, outs, lse, table, pad_kv, dqs, dks, dvs, need_table):
        q0, dev = qs[0], qs[0].device
        acc, heads, n = _kit.acc_dtype(q0.dtype), q0.shape[4], geom.tokens
        p, key = self._params(o, geom, qs, ks, vs, table, pad_kv)
        tmpl, pair_bytes, ws_bytes = _kit.cached((key, len(gs), gs[0].stride(), need_table),
                                                 lambda: self._bwd_template(p, gs, geom, heads, acc, need_table))
        b = copy.copy(tmpl)
        p.o0, p.o1, p.lse = outs[0].data_ptr(), outs[-1].data_ptr(), lse.data_ptr()
        b.fwd = p
        b.g0, b.g1 = gs[0].data_ptr(), gs[-1].data_ptr()
        b.dq0, b.dq1 = dqs[0].data_ptr(), dqs[-1].data_ptr()
        b.dk0, b.dk1 = dks[0].data_ptr(), dks[-1].data_ptr()
        b.dv0, b.dv1 = dvs[0].data_ptr(), dvs[-1].data_ptr()
        d_pad = None
        if pad_kv is not None:
            d_pad = torch.empty((2, heads, q0.shape[5]), dtype=acc, device=dev)
            b.grad_pad_kv = d_pad.data_ptr()
        # pair_grad and the workspace are consumed before this returns: one scratch buffer
        scratch = _kit.scratch(pair_bytes + ws_bytes, dev)
        base = scratch.data_ptr()
        b.workspace, b.workspace_bytes = base + pair_bytes, scratch.numel() - pair_bytes
        d_table = None
        if need_table:
            b.pair_grad = base
            if self.fused_table_grad:
                d_table = torch.empty((geom.table_rows, heads), dtype=acc, device=dev)
                b.table_grad = d_table.data_ptr()
        self.launch("bwd", b, q0)
        if need_table and d_table is None:
            d_table = bias_table_grad(scratch[:pair_bytes].view(acc).view(heads, n, n), geom.window, n)
        return d_table, d_pad


def _symbols(kind: str, workspace: str):
    return {"fwd": f"window_attention_fwd_{kind}", "bwd": f"window_attention_bwd_{kind}", "bwd_workspace": workspace}


def _head_dim_limit(head_dim: int = 0, **_):
    return [f"head_dim must be <= {MAX_HEAD_DIM}, got {head_dim}"] if head_dim > MAX_HEAD_DIM else []


_DISPATCH = _dispatch.Dispatcher(
    "window_attention3d",
    (
        # auto picks the CUDA kernels only once they beat Triton on a GPU in our benchmarks; no GPU
        # run exists yet, so auto runs Triton on GPU tensors
        _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("window_attention_fwd_cuda"),
                          limits=_head_dim_limit, auto=lambda **_: False,
                          impl=_Compiled(_kit.CUDA, _symbols("cuda", "window_attention_cuda_bwd_workspace_bytes"),
                                         fused_table_grad=False)),
        _dispatch.Backend("triton", _dispatch.triton_devices(), dtypes=(torch.float32, torch.float16, torch.bfloat16),
                          machine=_dispatch.triton_machine, limits=_head_dim_limit, auto=_dispatch.triton_auto,
                          impl=_Triton()),
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("window_attention_fwd_cpu"),
                          impl=_Compiled(_kit.CPU, _symbols("cpu", "window_attention_bwd_workspace_bytes"),
                                         fused_table_grad=True)),
        _dispatch.Backend("reference", ("cpu", "cuda"), impl=_Reference()),
    ),
)


# --- the ops: self-attention (q, k, v) and the cross-modal pair (q_a, k_a, v_a, q_b, k_b, v_b) -----
def _directions(qkv):
    """(qs, ks, vs) of the directions: self (q, k, v); cross: a's queries on b, b's on a."""
    if len(qkv) == 3:
        return [qkv[0]], [qkv[1]], [qkv[2]]
    return [qkv[0], qkv[3]], [qkv[4], qkv[1]], [qkv[5], qkv[2]]


def _per_input(dqs, dks, dvs):
    """The directions' gradients per (q, k, v[, q_b, k_b, v_b]) input: direction 0 reads k_b, v_b."""
    if len(dqs) == 1:
        return [dqs[0], dks[0], dvs[0]]
    return [dqs[0], dks[1], dvs[1], dqs[1], dks[0], dvs[0]]


def _outputs(impl, q, dirs):
    shape, dtype = impl.lse(q, dirs)
    outs = [_kit.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(dirs)]
    return outs, _kit.empty(shape, dtype=dtype, device=q.device)


def _forward(impl, o, *tensors):
    *qkv, table, pad_kv = tensors
    qs, ks, vs = _directions(qkv)
    outs, lse = _outputs(impl, qs[0], len(qs))
    impl.fwd(o, _geom(o, qs[0]), qs, ks, vs, table, pad_kv, outs, lse)
    return [*outs, lse]


def _fake(impl, o, *tensors):
    outs, lse = _outputs(impl, tensors[0], (len(tensors) - 2) // 3)
    return [*outs, lse]


def _split_saved(saved):
    """saved = (*qkv, table, pad_kv, *outs, lse) -> qkv, table, pad_kv, outs, lse."""
    n = 3 if len(saved) == 7 else 6
    return saved[:n], saved[n], saved[n + 1], saved[n + 2:-1], saved[-1]


def _backward(impl, o, needs, grads, saved):
    qkv, table, pad_kv, outs, lse = _split_saved(saved)
    qs, ks, vs = _directions(qkv)
    gs = [torch.zeros_like(out) if g is None else g for g, out in zip(grads, outs)]
    if len(gs) == 2 and gs[0].stride() != gs[1].stride():  # the kernels share one set of strides
        gs = [g.contiguous() for g in gs]
    q = qs[0]
    grads_qkv = [_kit.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3 * len(qs))]
    dqs, dks, dvs = grads_qkv[0::3], grads_qkv[1::3], grads_qkv[2::3]
    need_table, need_pad = needs[-2], needs[-1]
    d_table, d_pad = impl.bwd(o, _geom(o, q), gs, qs, ks, vs, outs, lse, table, pad_kv, dqs, dks, dvs, need_table)
    if need_pad and d_pad is None:  # no padding token in this volume (or all masked)
        d_pad = torch.zeros_like(pad_kv)
    return [*_per_input(dqs, dks, dvs), d_table.to(table.dtype) if need_table else None,
            d_pad.to(pad_kv.dtype) if need_pad else None]


def _backward_fake(impl, o, needs, grads, saved):
    qkv, table, pad_kv, _, _ = _split_saved(saved)
    return [*(torch.empty_like(t, memory_format=torch.contiguous_format) for t in qkv),
            torch.empty_like(table) if needs[-2] else None, torch.empty_like(pad_kv) if needs[-1] else None]


_COMMON = dict(opts=WindowOptions, dispatcher=_DISPATCH, forward=_forward, fake=_fake, backward=_backward,
               backward_fake=_backward_fake)
_SELF_OP = _kit.Op("window_attention3d", tensors="Tensor q, Tensor k, Tensor v, Tensor? table, Tensor? pad_kv",
                   no_grad_outputs=(1,), **_COMMON)
_CROSS_OP = _kit.Op("cross_window_attention3d",
                    tensors="Tensor q_a, Tensor k_a, Tensor v_a, Tensor q_b, Tensor k_b, Tensor v_b, Tensor? table, "
                            "Tensor? pad_kv", no_grad_outputs=(2,), **_COMMON)


# --- the plan: checks, geometry and backend choice, once per call signature -------------------
_PLANS = _kit.PlanCache()


def _check_qkv(names, tensors) -> None:
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


def _check_extra(name: str, t, want, what: str, q: torch.Tensor) -> bool:
    """Checks rel_bias_table / pad_kv against want; True when it needs a contiguous copy."""
    if t is None:
        return False
    check_tensor(name, t, dim=len(want))
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must be {what} = {want}, got {describe(t)}")
    check_same("q", q, **{name: t})
    return not t.is_contiguous()


def _plan(names, tensors, window, shift, rel_bias_table, pad_kv, mask_value, scale, mask_padded, backend,
          clamp_window):
    """(options, table needs a contiguous copy, pad_kv needs one, backend name) for this call."""
    _check_qkv(names, tensors)
    if not isinstance(clamp_window, bool):
        raise TypeError(f"clamp_window must be a bool, got {type(clamp_window).__name__} {clamp_window!r}")
    q = tensors[0]
    heads, head_dim = q.shape[4], q.shape[5]
    geom = window_geometry(q.shape[1:4], window, shift, clamp_window)
    wd, wh, ww = geom.window
    copy_table = _check_extra("rel_bias_table", rel_bias_table, (geom.table_rows, heads),
                              f"((2*{wd}-1)(2*{wh}-1)(2*{ww}-1), heads) for window {geom.window} and {heads} heads", q)
    copy_pad = _check_extra("pad_kv", pad_kv, (2, heads, head_dim),
                            "(2, heads, head_dim) (key and value of padding tokens)", q)
    scale = head_dim**-0.5 if scale is None else float(scale)
    mask_value = float(mask_value)
    if mask_value != mask_value or mask_value > 0:
        raise ValueError(f"mask_value must be <= 0 (-100.0 as MONAI, or -inf), got {mask_value}")
    name = _DISPATCH.select(backend, q.device, q.dtype, head_dim=head_dim)
    o = WindowOptions(geom.window, geom.shift, mask_value, scale, bool(mask_padded), clamp_window)
    return o, copy_table, copy_pad, name


def _run(op, names, tensors, window, shift, rel_bias_table, pad_kv, mask_value, scale, mask_padded, backend,
         clamp_window=True):
    key = _kit.signature((*tensors, rel_bias_table, pad_kv), window, shift, mask_value, scale, mask_padded, backend,
                         clamp_window)
    o, copy_table, copy_pad, name = _PLANS.get(key, lambda: _plan(names, tensors, window, shift, rel_bias_table,
                                                                  pad_kv, mask_value, scale, mask_padded, backend,
                                                                  clamp_window))
    table = rel_bias_table.contiguous() if copy_table else rel_bias_table
    pad = pad_kv.contiguous() if copy_pad else pad_kv
    if len(tensors) == 6:  # one set of strides per role serves both directions
        tensors = list(tensors)
        for i in range(3):
            if tensors[i].stride() != tensors[i + 3].stride():
                tensors[i], tensors[i + 3] = tensors[i].contiguous(), tensors[i + 3].contiguous()
    return op(o, name, *tensors, table, pad)


@_kit.public
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
    clamp_window: bool = True,
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
        clamp_window: True (default) applies MONAI's ``get_window_size`` (above); False keeps
            the configured window and shift on every axis and pads an axis shorter than the
            window up to one window, as the Swin Transformer code SwinCross uses does (its 3^3
            last stage still rolls and masks its single window).

    Returns:
        (B, D, H, W, heads, head_dim), contiguous, q's dtype.
    """
    return _run(_SELF_OP, ("q", "k", "v"), (q, k, v), window, shift, rel_bias_table, pad_kv, mask_value, scale,
                mask_padded, backend, clamp_window)[0]


@_kit.public
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
    clamp_window: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_window_attention3d` on six separate (B, D, H, W, heads, head_dim) tensors
    (any strides; q_a/q_b, k_a/k_b and v_a/v_b are copied to contiguous when their strides
    differ, since the kernels address both directions with one set of strides per role).
    Returns (out_a, out_b)."""
    tensors = [q_a, k_a, v_a, q_b, k_b, v_b]
    out_a, out_b, _ = _run(_CROSS_OP, ("q_a", "k_a", "v_a", "q_b", "k_b", "v_b"), tensors, window, shift,
                           rel_bias_table, pad_kv, mask_value, scale, mask_padded, backend, clamp_window)
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


@_kit.public
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
    clamp_window: bool = True,
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
        window, shift, rel_bias_table, mask_value, scale, pad_kv, mask_padded, backend,
            clamp_window: as :func:`window_attention3d` (SwinCross: ``clamp_window=False``).

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
                                             mask_value, scale, pad_kv, mask_padded, backend, clamp_window)


def window_attention3d_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """The backend ``window_attention3d`` would run for q (for benchmarks and reports)."""
    return _DISPATCH.select(backend, q.device, q.dtype, head_dim=q.shape[5])
