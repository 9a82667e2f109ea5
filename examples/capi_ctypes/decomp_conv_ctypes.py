"""Calls medkernels' C ABI (libmedkernels_capi.so) on NumPy arrays with ctypes: no torch, no medkernels package.

    python decomp_conv_ctypes.py LIB IN.npz OUT.npz

IN.npz holds x (N, C_in, D, H, W), w_d, w_h, w_w (C_out, C_in/groups, k), bias (C_out,) as float32 or
float64 and the ints stride, groups, activation; OUT.npz receives y and, for one bad call, the status and
message the library returned. LIB is e.g. ``$(python -m medkernels.info --cmake-dir)/../../libmedkernels_capi.so``.
"""

import ctypes
import sys

import numpy as np

I64P = ctypes.POINTER(ctypes.c_int64)
MK_SUCCESS, MK_INVALID_ARGUMENT, MK_UNSUPPORTED = 0, 1, 2


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.mk_last_error.restype = ctypes.c_char_p
    for name in ("mk_version", "mk_abi_version", "mk_cuda_available"):
        getattr(lib, name).restype = ctypes.c_int
    for suffix in ("f32", "f64", "f32_cuda"):
        fn = getattr(lib, f"mk_decomp_conv3d_fwd_{suffix}")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, I64P, I64P, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_int, ctypes.c_void_p, I64P] + ([ctypes.c_void_p] if suffix.endswith("cuda") else [])
    return lib


def i64(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def elem_strides(a: np.ndarray):
    return i64([s // a.itemsize for s in a.strides])


def decomp_conv3d(lib, x, w_d, w_h, w_w, bias, stride=1, groups=1, activation=0, suffix=None):
    """y = act(conv_d(x) + conv_h(x) + conv_w(x) + bias) through mk_decomp_conv3d_fwd_<f32|f64>."""
    suffix = suffix or {np.float32: "f32", np.float64: "f64"}[x.dtype.type]
    c_out, _, k = w_d.shape
    y = np.empty((x.shape[0], c_out, *((s - 1) // stride + 1 for s in x.shape[2:])), dtype=x.dtype)
    w_d, w_h, w_w = (np.ascontiguousarray(w) for w in (w_d, w_h, w_w))
    fn = getattr(lib, f"mk_decomp_conv3d_fwd_{suffix}")
    extra = [None] if suffix.endswith("cuda") else []
    status = fn(x.ctypes.data, i64(x.shape), elem_strides(x), w_d.ctypes.data, w_h.ctypes.data, w_w.ctypes.data,
                None if bias is None else np.ascontiguousarray(bias).ctypes.data, c_out, k, stride, groups,
                activation, y.ctypes.data, elem_strides(y), *extra)
    if status != MK_SUCCESS:
        raise RuntimeError(f"status {status}: {lib.mk_last_error().decode()}")
    return y


def main(lib_path: str, in_path: str, out_path: str) -> int:
    lib = load(lib_path)
    inp = np.load(in_path)
    x, w_d, w_h, w_w, bias = (inp[k] for k in ("x", "w_d", "w_h", "w_w", "bias"))
    stride, groups, activation = (int(inp[k]) for k in ("stride", "groups", "activation"))
    y = decomp_conv3d(lib, x, w_d, w_h, w_w, bias, stride, groups, activation)
    # channels-last x (a strided view) gives the same y
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
    y_cl = decomp_conv3d(lib, x_cl, w_d, w_h, w_w, bias, stride, groups, activation)
    # a bad call: even kernel size -> MK_INVALID_ARGUMENT and a message, the process lives on
    fn = getattr(lib, "mk_decomp_conv3d_fwd_" + ("f32" if x.dtype == np.float32 else "f64"))
    yb = np.empty_like(y)
    bad = fn(x.ctypes.data, i64(x.shape), None, w_d.ctypes.data, w_h.ctypes.data, w_w.ctypes.data, None,
             w_d.shape[0], 4, 1, groups, 0, yb.ctypes.data, None)
    bad_msg = lib.mk_last_error().decode()
    bad_null = fn(None, i64(x.shape), None, w_d.ctypes.data, w_h.ctypes.data, w_w.ctypes.data, None,
                  w_d.shape[0], w_d.shape[2], 1, groups, 0, yb.ctypes.data, None)
    null_msg = lib.mk_last_error().decode()
    cuda_status = MK_SUCCESS
    if not lib.mk_cuda_available() and x.dtype == np.float32:
        cuda_status = lib.mk_decomp_conv3d_fwd_f32_cuda(x.ctypes.data, i64(x.shape), None, w_d.ctypes.data,
                                                        w_h.ctypes.data, w_w.ctypes.data, None, w_d.shape[0],
                                                        w_d.shape[2], 1, groups, 0, yb.ctypes.data, None, None)
    np.savez(out_path, y=y, y_cl=y_cl, bad_status=bad, bad_msg=bad_msg, null_status=bad_null, null_msg=null_msg,
             cuda_status=cuda_status, version=lib.mk_version(), abi=lib.mk_abi_version(),
             torch_imported="torch" in sys.modules)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
