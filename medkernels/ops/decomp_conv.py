"""``decomp_conv3d``: the decomposed 3D convolution as a torch custom op with autograd, written on
:mod:`medkernels.ops._kit`.

Backends: ``cuda`` (our CUDA kernels), ``triton``, ``cpu`` (our C++/OpenMP), ``reference``
(three ``F.conv3d``). All compute the same function; ``auto`` picks by device and shape.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from ..reference.decomp_conv import decomp_conv3d_bwd_ref, decomp_conv3d_ref
from . import _kit
from ._common import check_int, check_same, check_tensor, describe, empty_like_layout

ACTIVATIONS = (None, "gelu", "relu", "silu")
MAX_KERNEL = 15


@_kit.options
class ConvOptions:
    stride: int
    groups: int
    activation: str  # "" for none
    out_layout: int  # the output's layout: 0 as x, 1 channels-last, 2 NCDHW


# --- backends: fwd(o, x, w_d, w_h, w_w, bias, out) -> y (out, or a fresh tensor of out's layout);
# --- bwd(o, grad_y, x, w_d, w_h, w_w, bias, grad_x) -> (grad_x, dw_d, dw_h, dw_w, dbias), the
# --- weight and bias gradients in the accumulation dtype
class _Compiled(_kit.Compiled):
    def _params(self, o, x, w_d, w_h, w_w, bias, y_shape):
        p = self.C.DecompConvParams()
        p.dtype = self.dtype(x.dtype)
        p.x, p.w_d, p.w_h, p.w_w, p.bias = x.data_ptr(), w_d.data_ptr(), w_h.data_ptr(), w_w.data_ptr(), _kit.ptr(bias)
        p.batch, p.in_channels, p.out_channels = x.shape[0], x.shape[1], w_d.shape[0]
        p.in_size, p.out_size = list(x.shape[2:]), list(y_shape[2:])
        # a stride past the volume reads position 0 only: the same as stride = the largest size, which
        # fits the C++ int (a huge legal stride was a pybind TypeError)
        p.kernel_size, p.stride, p.groups = w_d.shape[-1], min(o.stride, max(x.shape[2:])), o.groups
        p.activation = getattr(self.C.Activation, o.activation or "none")
        p.x_strides = list(x.stride())
        return p

    def fwd(self, o, x, w_d, w_h, w_w, bias, out):
        p = self._params(o, x, w_d, w_h, w_w, bias, out.shape)
        p.y, p.y_strides = out.data_ptr(), list(out.stride())
        self.launch("fwd", p, x)
        return out

    def bwd(self, o, grad_y, x, w_d, w_h, w_w, bias, grad_x):
        acc = _kit.acc_dtype(x.dtype)
        b = self.C.DecompConvBwdParams()
        b.fwd = self._params(o, x, w_d, w_h, w_w, bias, grad_y.shape)
        gws = [_kit.empty(w_d.shape, dtype=acc, device=x.device) for _ in range(3)]
        gb = _kit.empty(w_d.shape[0], dtype=acc, device=x.device)
        b.grad_y, b.grad_y_strides = grad_y.data_ptr(), list(grad_y.stride())
        b.grad_x, b.grad_x_strides = grad_x.data_ptr(), list(grad_x.stride())
        b.grad_w_d, b.grad_w_h, b.grad_w_w, b.grad_bias = (t.data_ptr() for t in (*gws, gb))
        nbytes = self.query("bwd_workspace", b)
        ws = _kit.scratch(nbytes, x.device)
        b.workspace, b.workspace_bytes = ws.data_ptr(), nbytes
        self.launch("bwd", b, x)
        return (grad_x, *gws, gb)


class _Triton:
    def fwd(self, o, x, w_d, w_h, w_w, bias, out):
        from ..triton.decomp_conv import decomp_conv_fwd

        return decomp_conv_fwd(x, w_d, w_h, w_w, bias, o.stride, o.groups, o.activation or None, out)

    def bwd(self, o, grad_y, x, w_d, w_h, w_w, bias, grad_x):
        from ..triton.decomp_conv import decomp_conv_bwd

        return decomp_conv_bwd(grad_y, x, w_d, w_h, w_w, bias, o.stride, o.groups, o.activation or None, grad_x)


class _Reference:
    """PyTorch's CPU convolutions in 16-bit are slow and, for some shapes, wrong (bf16 channels-last
    weight gradients with the kernel longer than the volume come out garbage in torch 2.13): 16-bit
    CPU inputs are computed in float32. 1-channel inputs are made contiguous: torch 2.13's CPU
    conv3d corrupts the heap on a 1-channel tensor with channels-last strides and a (1,1,7) kernel
    at stride 4."""

    torch_convs = True  # plain PyTorch convolutions (DecompConv3d's batch-statistics path asks)

    def _cast(self, x: torch.Tensor):
        dt = torch.float32 if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        one_channel = x.shape[1] == 1
        return lambda t: None if t is None else (t.to(dt).contiguous() if one_channel else t.to(dt))

    def fwd(self, o, x, w_d, w_h, w_w, bias, out):
        cast = self._cast(x)
        y = decomp_conv3d_ref(cast(x), cast(w_d), cast(w_h), cast(w_w), cast(bias), o.stride, o.groups,
                              o.activation or None)
        if y.dtype == out.dtype and y.stride() == out.stride():
            return y  # a fresh tensor already in the output's layout: no copy
        return out.copy_(y)

    def bwd(self, o, grad_y, x, w_d, w_h, w_w, bias, grad_x):
        cast = self._cast(x)
        gx, *rest = decomp_conv3d_bwd_ref(*(cast(t) for t in (grad_y, x, w_d, w_h, w_w, bias)), o.stride, o.groups,
                                          o.activation or None)
        grad_x.copy_(gx)
        return (grad_x, *rest)


def _cpu_auto(x, groups, c_out, grad=False, **_) -> bool:
    # Depthwise (groups = C): our row / channel-vector kernels. Dense (groups 1, C_out >= 8,
    # float32/16-bit) forward: the register-blocked tap kernel (cpu/vec.cpp dense_taps), about
    # 2x oneDNN on DCFormer's 64->64 k=3 stem layers and its 1->64 k=7 stride-4 layer in
    # benchmarks/bench_decomp_conv.py. Its backward (weight gradients per output channel) is
    # slower than oneDNN's, so with gradients needed, and for other grouped convs, the
    # reference (PyTorch convolutions) runs.
    if groups == x.shape[1] == c_out:
        return True
    return groups == 1 and c_out >= 8 and x.dtype != torch.float64 and not grad


def _symbols(kind: str):
    return {"fwd": f"decomp_conv_fwd_{kind}", "bwd": f"decomp_conv_bwd_{kind}",
            "bwd_workspace": "decomp_conv_bwd_workspace_bytes"}


_DISPATCH = _dispatch.Dispatcher(
    "decomp_conv3d",
    (
        # A CUDA kernel is auto's pick only once it has beaten Triton on a GPU in our benchmarks;
        # benchmarks/results holds no such GPU run yet, so auto runs Triton on GPU tensors.
        _dispatch.Backend("cuda", ("cuda",), machine=_dispatch.cuda_machine("decomp_conv_fwd_cuda"),
                          auto=lambda **_: False, impl=_Compiled(_kit.CUDA, _symbols("cuda"))),
        _dispatch.Backend("triton", _dispatch.triton_devices(), machine=_dispatch.triton_machine,
                          auto=_dispatch.triton_auto, impl=_Triton()),
        _dispatch.Backend("cpu", ("cpu",), machine=_dispatch.cpu_machine("decomp_conv_fwd_cpu"), auto=_cpu_auto,
                          impl=_Compiled(_kit.CPU, _symbols("cpu"))),
        _dispatch.Backend("reference", ("cpu", "cuda"), impl=_Reference()),
    ),
)


# --- the op ---------------------------------------------------------------------------------
def _new_out(o, x: torch.Tensor, w_d: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0], w_d.shape[0], *((s - 1) // o.stride + 1 for s in x.shape[2:]))
    if o.out_layout == 0:
        return empty_like_layout(x, shape)
    fmt = torch.channels_last_3d if o.out_layout == 1 else torch.contiguous_format
    return _kit.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _forward(impl, o, x, w_d, w_h, w_w, bias):
    return [impl.fwd(o, x, w_d, w_h, w_w, bias, _new_out(o, x, w_d))]


def _fake(impl, o, x, w_d, w_h, w_w, bias):
    return [_new_out(o, x, w_d)]


def _backward(impl, o, needs, grads, saved):
    x, w_d, w_h, w_w, bias = saved
    gx, gwd, gwh, gww, gb = impl.bwd(o, grads[0], x, w_d, w_h, w_w, bias, empty_like_layout(x, x.shape))
    return [gx, gwd.to(w_d.dtype), gwh.to(w_h.dtype), gww.to(w_w.dtype), gb.to(x.dtype) if bias is not None else None]


def _backward_fake(impl, o, needs, grads, saved):
    x, w_d, w_h, w_w, bias = saved
    return [empty_like_layout(x, x.shape), *(torch.empty_like(w) for w in (w_d, w_h, w_w)),
            None if bias is None else x.new_empty((w_d.shape[0],))]


_OP = _kit.Op("decomp_conv3d", tensors="Tensor x, Tensor w_d, Tensor w_h, Tensor w_w, Tensor? bias",
              opts=ConvOptions, dispatcher=_DISPATCH, forward=_forward, fake=_fake, backward=_backward,
              backward_fake=_backward_fake, save=lambda tensors, outs: tensors)
_LAYOUTS = {None: 0, True: 1, False: 2}  # channels_last -> ConvOptions.out_layout


# --- the public function -------------------------------------------------------------------
def _weight_3d(name: str, w: torch.Tensor, axis: int, c_out: int) -> torch.Tensor:
    """Accept (C_out, C_in/g, k) or the branch's 5-D conv weight; return contiguous (C_out, C_in/g, k)."""
    check_tensor(name, w, dims=(3, 5))
    if w.dim() == 5:
        spatial = list(w.shape[2:])
        k = spatial[axis]
        expect = [1, 1, 1]
        expect[axis] = k
        if spatial != expect:
            want = ["1", "1", "1"]
            want[axis] = "k"
            raise ValueError(
                f"{name} as a 5-D conv weight must be (C_out, C_in/groups, {', '.join(want)}), got {describe(w)}"
            )
        w = w.reshape(w.shape[0], w.shape[1], k)
    if w.shape[0] != c_out:
        raise ValueError(f"{name} must have {c_out} output channels (as w_d), got {describe(w)}")
    return w.contiguous()


@_kit.public
def decomp_conv3d(
    x: torch.Tensor,
    w_d: torch.Tensor,
    w_h: torch.Tensor,
    w_w: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: int = 1,
    groups: Optional[int] = None,
    activation: Optional[str] = None,
    backend: str = "auto",
    channels_last: Optional[bool] = None,
) -> torch.Tensor:
    """Decomposed 3D convolution: ``act(conv_d(x) + conv_h(x) + conv_w(x) + bias)``.

    Args:
        x: (N, C_in, D, H, W), NCDHW or channels-last (NDHWC) memory; the output keeps the layout.
        w_d, w_h, w_w: (C_out, C_in/groups, k) weights of the depth, height and width branches,
            or the 5-D ``Conv3d`` weights (C_out, C_in/groups, k,1,1) / (…,1,k,1) / (…,1,1,k).
            k odd, 1 <= k <= 15; each branch pads k//2 on its own axis.
        bias: (C_out,) summed bias of the three branches (folded BN), or None.
        stride: the same stride on every axis and branch; output size (S - 1) // stride + 1.
        groups: channel groups; None means depthwise (groups = C_in).
        activation: None, "gelu" (exact erf), "relu" or "silu".
        backend: "auto", "cuda", "triton", "cpu" or "reference".
        channels_last: the output's memory layout: None keeps x's (a 1-channel x counts as
            NCDHW, as in PyTorch), True NDHWC, False NCDHW. The kernels write either directly.

    Returns:
        (N, C_out, Do, Ho, Wo) in x's dtype.

    Memory (``cpu`` backend): besides the output, a dense layer (groups 1, C_out >= 8) copies x
    once into a zero-padded float32 channels-last buffer of N C_in (D+k-1)(H+k-1)(W+k-1) x 4
    bytes (twice the bytes of an fp16/bf16 x); the backward holds an fp32 gradient of the
    pre-activation (N C_out Do Ho Wo x 4 bytes) and, at stride 1, pads that once more. When the
    padded copy exceeds the memory the OS reports available, the call raises a RuntimeError
    before allocating instead of being killed.
    """
    check_tensor("x", x, dim=5)
    if x.numel() == 0:
        raise ValueError(f"x must be non-empty, got {describe(x)}")
    c_in = x.shape[1]
    groups = c_in if groups is None else check_int("groups", groups)
    stride = check_int("stride", stride)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_tensor("w_d", w_d, dims=(3, 5))
    c_out = w_d.shape[0]
    w_d = _weight_3d("w_d", w_d, 0, c_out)
    w_h = _weight_3d("w_h", w_h, 1, c_out)
    w_w = _weight_3d("w_w", w_w, 2, c_out)
    k = w_d.shape[-1]
    if k % 2 == 0 or not 1 <= k <= MAX_KERNEL:
        raise ValueError(f"kernel size must be odd and in 1..{MAX_KERNEL}, got k={k} (w_d {describe(w_d)})")
    for name, w in (("w_h", w_h), ("w_w", w_w)):
        if w.shape != w_d.shape:
            raise ValueError(f"{name} must have the shape of w_d {tuple(w_d.shape)}, got {describe(w)}")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide C_in={c_in} (x {describe(x)}) and C_out={c_out}")
    if w_d.shape[1] != c_in // groups:
        raise ValueError(
            f"w_d must be (C_out, C_in/groups={c_in // groups}, k) for x with C_in={c_in} and groups={groups}, "
            f"got {describe(w_d)}"
        )
    if bias is not None:
        check_tensor("bias", bias, dim=1)
        if bias.shape[0] != c_out:
            raise ValueError(f"bias must be ({c_out},), got {describe(bias)}")
        bias = bias.contiguous()
    check_same("x", x, w_d=w_d, w_h=w_h, w_w=w_w, bias=bias)
    grad = _kit.wants_grad(x, w_d, w_h, w_w, bias)
    name = _DISPATCH.select(backend, x.device, x.dtype, x=x, k=k, groups=groups, stride=stride, c_out=c_out, grad=grad)
    if channels_last not in _LAYOUTS:
        raise ValueError(f"channels_last must be None, True or False, got {channels_last!r}")
    return _OP(ConvOptions(stride, groups, activation or "", _LAYOUTS[channels_last]), name, x, w_d, w_h, w_w,
               bias)[0]


def decomp_conv3d_backend(x: torch.Tensor, k: int, groups: int, stride: int = 1, backend: str = "auto",
                          c_out: Optional[int] = None, grad: bool = False) -> str:
    """The backend ``decomp_conv3d`` would run for these inputs (for benchmarks and reports);
    ``c_out`` defaults to C_in; ``grad``: whether a backward will follow."""
    c_out = x.shape[1] if c_out is None else c_out
    return _DISPATCH.select(backend, x.device, x.dtype, x=x, k=k, groups=groups, stride=stride, c_out=c_out, grad=grad)


def decomp_conv3d_uses_torch_convs(x: torch.Tensor, k: int, groups: int, stride: int = 1, backend: str = "auto",
                                   c_out: Optional[int] = None, grad: bool = False) -> bool:
    """Whether ``decomp_conv3d`` would run these inputs as plain PyTorch convolutions (then a
    module that needs each branch's own output calls the branch convs instead)."""
    name = decomp_conv3d_backend(x, k, groups, stride, backend, c_out, grad)
    return getattr(_DISPATCH.impl(name), "torch_convs", False)
