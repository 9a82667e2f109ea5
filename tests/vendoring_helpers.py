"""Shared by the vendoring tests (tests/test_vendoring*.py): paths and tools, a direct NumPy decomposed
convolution (float64; the C ABI and CMake tests run without torch, so the torch reference cannot serve
them), the CMake package fixture and ctypes helpers for the C ABI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medkernels

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(medkernels.__file__).resolve().parent
BUILD_DIR = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
EXAMPLES = ROOT / "examples"
CMAKE = shutil.which("cmake")
NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")


def numpy_decomp_conv3d(x, w_d, w_h, w_w, bias=None, stride=1, groups=1, activation=0):
    """y[n, co] = act(bias[co] + sum over the group's ci and the three axes of w[co, ci', j] * x shifted)."""
    x = np.asarray(x, dtype=np.float64)
    n, c_in, *size = x.shape
    c_out, cin_g, k = w_d.shape
    pad = k // 2
    out = [(s - 1) // stride + 1 for s in size]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * 3)
    y = np.zeros((n, c_out, *out))
    cout_g = c_out // groups
    for co in range(c_out):
        g = co // cout_g
        for cl in range(cin_g):
            xc = xp[:, g * cin_g + cl]
            for axis, w in enumerate((w_d, w_h, w_w)):
                for j in range(k):
                    start = [pad] * 3
                    start[axis] = j
                    idx = tuple(slice(start[a], start[a] + (out[a] - 1) * stride + 1, stride) for a in range(3))
                    y[:, co] += float(w[co, cl, j]) * xc[(slice(None),) + idx]
        if bias is not None:
            y[:, co] += float(bias[co])
    if activation == 2:
        y = np.maximum(y, 0)
    elif activation == 3:
        y = y / (1 + np.exp(-y))
    elif activation == 1:
        from math import erf

        y = 0.5 * y * (1 + np.vectorize(erf)(y / np.sqrt(2)))
    return y


def conv_case(seed=0, n=2, c_in=4, c_out=4, size=(5, 6, 7), k=3, groups=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, *size)).astype(dtype)
    ws = [(rng.standard_normal((c_out, c_in // groups, k)) / k).astype(dtype) for _ in range(3)]
    bias = rng.standard_normal(c_out).astype(dtype)
    return x, *ws, bias


@pytest.fixture(scope="session")
def install_prefix(tmp_path_factory):
    """The CMake package: the one shipped in the package (setup.py installs it there), else a fresh
    `cmake --install` of the build folder into a tmp prefix."""
    if (PKG / "lib" / "cmake" / "medkernels" / "medkernelsConfig.cmake").exists():
        return PKG
    if CMAKE is None or not (BUILD_DIR / "cmake_install.cmake").exists():
        pytest.skip("no installed CMake package and no CMake build folder (run setup.py build_ext first)")
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run([CMAKE, "--install", str(BUILD_DIR), "--prefix", str(prefix), "--component", "medkernels"],
                   check=True, capture_output=True)
    return prefix


def capi_lib(install_prefix) -> Path:
    lib = Path(install_prefix) / "lib" / "libmedkernels_capi.so"
    if not lib.exists():
        pytest.skip(f"{lib} not built")
    return lib


def cupy_on_gpu():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install medkernels[cupy])")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU visible to CuPy")
    except Exception as exc:  # no driver
        pytest.skip(f"no GPU visible to CuPy: {exc}")
    return cupy


def ctypes_lib(install_prefix):
    import ctypes

    lib = ctypes.CDLL(str(capi_lib(install_prefix)))
    lib.mk_last_error.restype = ctypes.c_char_p
    return lib


def ptr(a):
    import ctypes

    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def i64s(v):
    import ctypes

    return (ctypes.c_int64 * len(v))(*v)


# --- the params form of the C ABI from ctypes, its layout read from the library (mk_params_fields) ---
PARAMS_STRUCTS = {  # C mirror -> the pybind class of the same C++ struct
    "mk_decomp_conv_params": "DecompConvParams", "mk_decomp_conv_bwd_params": "DecompConvBwdParams",
    "mk_diffusion_params": "DiffusionParams",
    "mk_window_attention_params": "WindowAttentionParams",
    "mk_window_attention_bwd_params": "WindowAttentionBwdParams",
    "mk_sigmoid_loss_params": "SigmoidLossParams", "mk_sigmoid_loss_bwd_params": "SigmoidLossBwdParams",
    "mk_group_norm_params": "GroupNormParams", "mk_group_norm_bwd_params": "GroupNormBwdParams",
}


def params_fields(lib, name):
    """[(name, kind, C type, offset, size, count)] of the C mirror `name` and its sizeof, from the library."""
    import ctypes

    class Field(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("kind", ctypes.c_char_p), ("type", ctypes.c_char_p),
                    ("offset", ctypes.c_size_t), ("size", ctypes.c_size_t), ("count", ctypes.c_size_t)]

    lib.mk_params_fields.restype = ctypes.POINTER(Field)
    lib.mk_params_fields.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
    size = ctypes.c_size_t(0)
    f = lib.mk_params_fields(name.encode(), ctypes.byref(size))
    if not f:
        return None, 0
    rows, i = [], 0
    while f[i].name is not None:
        rows.append((f[i].name.decode(), f[i].kind.decode(), f[i].type.decode(), f[i].offset, f[i].size, f[i].count))
        i += 1
    return rows, size.value


_STRUCTS: dict = {}


def params_struct(lib, name):
    """A ctypes.Structure for the C mirror `name`, built from mk_params_fields (nothing transcribed)."""
    import ctypes

    if (lib._name, name) in _STRUCTS:
        return _STRUCTS[lib._name, name]
    scalar = {"size_t": ctypes.c_size_t, "int": ctypes.c_int, "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64,
              "double": ctypes.c_double}
    rows, _ = params_fields(lib, name)
    fields = []
    for fname, kind, ctype, _, _, count in rows:
        if kind == "NESTED":
            t = params_struct(lib, ctype)
        elif ctype.endswith("*"):
            t = ctypes.c_void_p
        else:
            t = scalar[ctype]
        fields.append((fname, t * count if kind == "ARR" else t))
    cls = type(name, (ctypes.Structure,), {"_fields_": fields})
    _STRUCTS[lib._name, name] = cls
    return cls


def new_params(lib, name):
    """A `name` struct set up by the library's <name>_init (the C++ defaults and struct_size)."""
    import ctypes

    p = params_struct(lib, name)()
    getattr(lib, f"{name}_init")(ctypes.byref(p))
    return p
