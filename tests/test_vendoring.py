"""Vendoring (#8): our kernels from outside our Python package.

- the CMake package (`cmake --install`) consumed by examples/vendor_cmake (find_package + medkernels::core);
- the C ABI (libmedkernels_capi.so) from ctypes on NumPy arrays, in a fresh interpreter without torch;
- every header-only CUDA kernel header compiling stand-alone with nvcc;
- DLPack inputs (NumPy, JAX) to the public ops; the CuPy/NVRTC sources; the JAX FFI example.

The expected values come from a direct NumPy evaluation of the decomposed convolution (the C ABI and
CMake tests run without torch, so the torch reference cannot serve them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medkernels
from medkernels._environment import EXTENDED_TESTS as EXTENDED

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(medkernels.__file__).resolve().parent
BUILD_DIR = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
EXAMPLES = ROOT / "examples"
CMAKE = shutil.which("cmake")
NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")


# --- a direct NumPy decomposed convolution (float64) --------------------------------------------
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


def _case(seed=0, n=2, c_in=4, c_out=4, size=(5, 6, 7), k=3, groups=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, *size)).astype(dtype)
    ws = [(rng.standard_normal((c_out, c_in // groups, k)) / k).astype(dtype) for _ in range(3)]
    bias = rng.standard_normal(c_out).astype(dtype)
    return x, *ws, bias


def test_numpy_reference_matches_torch_reference():
    """The NumPy evaluation above agrees with the package's reference (so the tests below judge the kernels)."""
    import torch

    from medkernels.reference.decomp_conv import decomp_conv3d_ref

    x, w_d, w_h, w_w, b = _case(1, c_in=4, c_out=6, groups=2, size=(4, 5, 6), k=3)
    for stride, act in ((1, 0), (2, 3)):
        got = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, 2, act)
        t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
        want = decomp_conv3d_ref(t(x), t(w_d), t(w_h), t(w_w), t(b), stride, 2, [None, "gelu", "relu", "silu"][act])
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


# --- the CMake package ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
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


def test_info_cmake_dir_prints_the_shipped_package():
    out = subprocess.run([sys.executable, "-m", "medkernels.info", "--cmake-dir"], cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"this checkout did not ship the CMake package: {out.stdout.strip()}")
    d = Path(out.stdout.strip())
    assert (d / "medkernelsConfig.cmake").exists() and (d / "medkernelsConfigVersion.cmake").exists()
    assert (d.parents[1] / "libmedkernels_capi.so").exists()
    assert (d.parents[2] / "include" / "medkernels" / "decomp_conv.h").exists()


def test_install_tree_layout(tmp_path):
    if CMAKE is None or not (BUILD_DIR / "cmake_install.cmake").exists():
        pytest.skip("no CMake build folder (run setup.py build_ext first)")
    subprocess.run([CMAKE, "--install", str(BUILD_DIR), "--prefix", str(tmp_path), "--component", "medkernels"],
                   check=True, capture_output=True)
    headers = sorted(p.relative_to(tmp_path / "include").as_posix() for p in (tmp_path / "include").rglob("*.h*"))
    source_headers = sorted(p.relative_to(ROOT / "csrc" / "include").as_posix()
                            for p in (ROOT / "csrc" / "include").rglob("*.h*"))
    assert headers == source_headers
    assert "medkernels/c_api.h" in headers and "medkernels/detail/error.h" in headers
    for f in ("lib/libmedkernels_core.a", "lib/libmedkernels_capi.so", "lib/cmake/medkernels/medkernelsConfig.cmake",
              "lib/cmake/medkernels/medkernelsConfigVersion.cmake", "lib/cmake/medkernels/medkernelsTargets.cmake"):
        assert (tmp_path / f).exists(), f


@pytest.mark.skipif(CMAKE is None, reason="cmake not found")
@pytest.mark.parametrize("stride,groups,activation", [(1, 4, 0), (2, 2, 2)], ids=["depthwise-s1", "g2-s2-relu"])
def test_cmake_consumer_project(install_prefix, tmp_path, stride, groups, activation):
    build = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run([CMAKE, "-S", str(EXAMPLES / "vendor_cmake"), "-B", str(build), *gen,
                          f"-DCMAKE_PREFIX_PATH={install_prefix}", "-DCMAKE_BUILD_TYPE=Release"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run([CMAKE, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    x, w_d, w_h, w_w, b = _case(3, c_in=4, c_out=4, groups=groups, size=(5, 6, 7), k=3)
    k = w_d.shape[-1]
    header = np.array([*x.shape, w_d.shape[0], k, stride, groups, activation], dtype="<i8")
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        for a in (header, x, w_d, w_h, w_w, b):
            f.write(np.ascontiguousarray(a).tobytes())
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, groups, activation)
    results = []
    for app in ("app", "app_c"):  # the C++ API (medkernels::core) and the C ABI from C (medkernels::capi)
        run = subprocess.run([str(build / app), str(inp), str(out)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        results.append(np.fromfile(out, dtype=np.float32).reshape(want.shape))
        np.testing.assert_allclose(results[-1], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.skipif(not EXTENDED, reason="a fresh build of the library (minutes): MEDKERNELS_EXTENDED_TESTS=1")
@pytest.mark.skipif(CMAKE is None, reason="cmake not found")
@pytest.mark.parametrize("cuda", ["OFF", "ON"])
def test_fresh_build_install_and_consume(tmp_path, cuda):
    """Stand-alone CMake build (no Python), install, and the consumer project against it; with CUDA the
    package carries the CUDA kernels and the config re-finds the CUDA toolkit."""
    if cuda == "ON" and NVCC is None:
        pytest.skip("nvcc not found")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    for cmd in ([CMAKE, "-S", str(ROOT), "-B", str(build), *gen, "-DMEDKERNELS_PYTHON=OFF", f"-DMEDKERNELS_CUDA={cuda}",
                 "-DMEDKERNELS_CUDA_ARCHS=90"],
                [CMAKE, "--build", str(build), "-j", "2"],
                [CMAKE, "--install", str(build), "--prefix", str(prefix)],
                [CMAKE, "-S", str(EXAMPLES / "vendor_cmake"), "-B", str(tmp_path / "app"), *gen,
                 f"-DCMAKE_PREFIX_PATH={prefix}"],
                [CMAKE, "--build", str(tmp_path / "app")]):
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, " ".join(cmd) + "\n" + run.stdout[-3000:] + run.stderr[-3000:]
    config = (prefix / "lib" / "cmake" / "medkernels" / "medkernelsConfig.cmake").read_text()
    assert f"set(medkernels_WITH_CUDA {cuda})" in config
    # the C ABI of this build: CPU calls work; a _cuda call either runs or returns a status (on a machine
    # without a GPU: MK_CUDA_ERROR from a CUDA build, MK_UNSUPPORTED from a CPU build), never aborts
    import ctypes

    lib = ctypes.CDLL(str(prefix / "lib" / "libmedkernels_capi.so"))
    lib.mk_last_error.restype = ctypes.c_char_p
    assert lib.mk_cuda_available() == (cuda == "ON")
    x = np.ones((1, 2, 3, 3, 3), np.float32)
    w = np.ones((2, 1, 3), np.float32)
    y = np.empty_like(x)
    args = (_ptr(x), _i64s(x.shape), None, _ptr(w), _ptr(w), _ptr(w), None, ctypes.c_int64(2), ctypes.c_int64(3),
            ctypes.c_int64(1), ctypes.c_int64(2), ctypes.c_int(0), _ptr(y), None)
    assert lib.mk_decomp_conv3d_fwd_f32(*args) == 0 and float(y.sum()) == 378.0
    import torch

    if not torch.cuda.is_available():  # host pointers: only where no kernel can run
        st = lib.mk_decomp_conv3d_fwd_f32_cuda(*args, None)
        assert st == (3 if cuda == "ON" else 2), lib.mk_last_error()


# --- the C ABI through ctypes, torch never imported ----------------------------------------------
def _capi_lib(install_prefix) -> Path:
    lib = Path(install_prefix) / "lib" / "libmedkernels_capi.so"
    if not lib.exists():
        pytest.skip(f"{lib} not built")
    return lib


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_capi_ctypes_without_torch(install_prefix, tmp_path, dtype):
    lib = _capi_lib(install_prefix)
    x, w_d, w_h, w_w, b = _case(5, c_in=6, c_out=6, groups=3, size=(4, 7, 5), k=5, dtype=dtype)
    np.savez(tmp_path / "in.npz", x=x, w_d=w_d, w_h=w_h, w_w=w_w, bias=b, stride=2, groups=3, activation=3)
    # a fresh interpreter that never imports our package (nor torch)
    run = subprocess.run([sys.executable, str(EXAMPLES / "capi_ctypes" / "decomp_conv_ctypes.py"), str(lib),
                          str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr
    out = np.load(tmp_path / "out.npz")
    assert not bool(out["torch_imported"]), "the ctypes path imported torch"
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, 2, 3, 3)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out["y"], want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out["y"], out["y_cl"])
    assert int(out["version"]) == 10000 * 0 + 100 * 1 and int(out["abi"]) == 1
    # documented errors: MK_INVALID_ARGUMENT (1) with a message naming the argument
    assert int(out["bad_status"]) == 1 and "kernel_size must be odd" in str(out["bad_msg"])
    assert int(out["null_status"]) == 1 and "must not be NULL" in str(out["null_msg"])
    if dtype == np.float32 and not medkernels.build_info().get("cuda"):
        assert int(out["cuda_status"]) == 2  # MK_UNSUPPORTED: this build has no CUDA


def test_capi_backward_matches_finite_differences(install_prefix):
    """mk_decomp_conv3d_bwd_f64 on NumPy arrays: the weight/bias/x gradients of sum(y * g)."""
    import ctypes

    lib = ctypes.CDLL(str(_capi_lib(install_prefix)))
    lib.mk_last_error.restype = ctypes.c_char_p
    lib.mk_decomp_conv3d_bwd_workspace_bytes.restype = ctypes.c_size_t
    i64 = lambda v: (ctypes.c_int64 * len(v))(*v)
    x, w_d, w_h, w_w, b = _case(7, n=1, c_in=2, c_out=2, groups=2, size=(3, 4, 5), k=3, dtype=np.float64)
    y = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, 1, 2, 0)
    g = np.random.default_rng(8).standard_normal(y.shape)
    ws_bytes = lib.mk_decomp_conv3d_bwd_workspace_bytes(3, i64(x.shape), 2, 3, 1, 2)
    assert ws_bytes > 0
    ws = np.empty(ws_bytes, np.uint8)
    gx = np.empty_like(x)
    gw = [np.empty_like(w_d) for _ in range(3)]
    gb = np.empty_like(b)
    p = lambda a: ctypes.c_void_p(a.ctypes.data)
    st = lib.mk_decomp_conv3d_bwd_f64(p(g), None, p(x), i64(x.shape), None, p(w_d), p(w_h), p(w_w), p(b),
                                      ctypes.c_int64(2), ctypes.c_int64(3), ctypes.c_int64(1), ctypes.c_int64(2),
                                      ctypes.c_int(0), p(gx), None, p(gw[0]), p(gw[1]), p(gw[2]), p(gb), p(ws),
                                      ctypes.c_size_t(ws_bytes))
    assert st == 0, lib.mk_last_error()
    # linear in every argument: the gradient of sum(y * g) is exact by central differences of the reference
    f = lambda **kw: float((numpy_decomp_conv3d(**{**dict(x=x, w_d=w_d, w_h=w_h, w_w=w_w, bias=b, groups=2), **kw})
                            * g).sum())
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3, 4)), rtol=1e-10)
    e = np.zeros_like(w_h)
    e[1, 0, 2] = 1.0
    np.testing.assert_allclose(gw[1][1, 0, 2], (f(w_h=w_h + e) - f(w_h=w_h - e)) / 2, rtol=1e-8)
    ex = np.zeros_like(x)
    ex[0, 1, 2, 1, 3] = 1.0
    np.testing.assert_allclose(gx[0, 1, 2, 1, 3], (f(x=x + ex) - f(x=x - ex)) / 2, rtol=1e-8)
    # too small a workspace: the documented error, not a crash
    st = lib.mk_decomp_conv3d_bwd_f64(p(g), None, p(x), i64(x.shape), None, p(w_d), p(w_h), p(w_w), p(b),
                                      ctypes.c_int64(2), ctypes.c_int64(3), ctypes.c_int64(1), ctypes.c_int64(2),
                                      ctypes.c_int(0), p(gx), None, p(gw[0]), p(gw[1]), p(gw[2]), p(gb), p(ws),
                                      ctypes.c_size_t(1))
    assert st == 1 and b"workspace" in lib.mk_last_error()


# --- header-only CUDA: every .cuh compiles stand-alone ----------------------------------------------
CUH = sorted((ROOT / "csrc" / "include" / "medkernels" / "cuda").glob("*.cuh"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("header", CUH, ids=[h.stem for h in CUH])
def test_cuda_header_compiles_standalone(header, tmp_path):
    src = tmp_path / f"{header.stem}_standalone.cu"
    src.write_text(f'#include "medkernels/cuda/{header.name}"\n')
    run = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", f"-I{ROOT / 'csrc' / 'include'}", "-c", str(src),
                          "-o", str(tmp_path / "out.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_cuda_headers_link_without_the_library(tmp_path):
    """A program that instantiates the header-only launchers links with nvcc alone (no libmedkernels)."""
    src = tmp_path / "use.cu"
    src.write_text(
        '#include "medkernels/cuda/decomp_conv.cuh"\n'
        '#include "medkernels/cuda/diffusion.cuh"\n'
        "int main() {\n"
        "  medkernels::DecompConvParams p; medkernels::DecompConvBwdParams b; medkernels::DiffusionParams d;\n"
        "  int e = int(medkernels::cuda::launch_decomp_conv_fwd<float>(p, nullptr));\n"
        "  e += int(medkernels::cuda::launch_decomp_conv_bwd<medkernels::bfloat16_t>(b, nullptr));\n"
        "  e += int(medkernels::cuda::launch_diffusion_fwd<medkernels::half_t>(d, nullptr));\n"
        "  return e > 1000;\n"
        "}\n")
    run = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", f"-I{ROOT / 'csrc' / 'include'}", str(src), "-o",
                          str(tmp_path / "use")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.skipif(CXX is None, reason="no C/C++ compiler")
def test_c_api_header_is_plain_c(tmp_path):
    src = tmp_path / "use.c"
    src.write_text('#include "medkernels/c_api.h"\n'
                   "int main(void) { return mk_abi_version() == MK_ABI_VERSION ? 0 : 1; }\n")
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler")
    run = subprocess.run([gcc, "-std=c99", "-Wall", "-Werror", "-pedantic", f"-I{ROOT / 'csrc' / 'include'}", "-c",
                          str(src), "-o", str(tmp_path / "use.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# --- DLPack arrays into the public ops ------------------------------------------------------------
def _dlpack_ops():
    """(public op, NumPy inputs, NumPy expectation) for each family whose op takes DLPack arrays."""
    from medkernels import ops

    x, w_d, w_h, w_w, b = _case(11, c_in=3, c_out=3, groups=3, size=(4, 5, 6), k=3)
    yield ("decomp_conv3d", ops.decomp_conv3d, (x, w_d, w_h, w_w), {"bias": b, "backend": "cpu"},
           numpy_decomp_conv3d(x, w_d, w_h, w_w, b, 1, 3, 0))


DLPACK_CASES = list(_dlpack_ops())


@pytest.mark.parametrize("case", DLPACK_CASES, ids=[c[0] for c in DLPACK_CASES])
def test_numpy_arrays_in_numpy_out(case):
    _, op, args, kwargs, want = case
    got = op(*args, **kwargs)
    assert isinstance(got, np.ndarray), type(got)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # read-only and strided NumPy inputs
    ro = [a.copy() for a in args]
    for a in ro:
        a.flags.writeable = False
    np.testing.assert_allclose(op(*ro, **kwargs), want, rtol=1e-5, atol=1e-5)
    x_cl = np.ascontiguousarray(args[0].transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
    np.testing.assert_allclose(op(x_cl, *args[1:], **kwargs), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", DLPACK_CASES, ids=[c[0] for c in DLPACK_CASES])
def test_jax_arrays_in_jax_out(case):
    jnp = pytest.importorskip("jax.numpy")
    import jax

    _, op, args, kwargs, want = case
    got = op(*(jnp.asarray(a) for a in args), **{k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v)
                                                 for k, v in kwargs.items()})
    assert isinstance(got, jax.Array), type(got)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def _dlpack_consistency_cases():
    """(op, NumPy positional args, kwargs): the other families' public ops, NumPy in vs torch in."""
    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    rng = np.random.default_rng(19)
    q, k, v = (rng.standard_normal((1, 3, 4, 5, 2, 8)).astype(np.float32) for _ in range(3))
    table = rng.standard_normal((3 * 3 * 3, 2)).astype(np.float32)
    yield "window_attention3d", ops.window_attention3d, (q, k, v, 2), {"shift": 1, "rel_bias_table": table,
                                                                       "backend": "cpu"}
    yield ("cross_window_attention3d_separate", ops.cross_window_attention3d_separate, (q, k, v, v, k, q, 2),
           {"backend": "cpu"})
    qkv_a, qkv_b = (rng.standard_normal((1, 3, 4, 5, 3 * 16)).astype(np.float32) for _ in range(2))
    yield "cross_window_attention3d", ops.cross_window_attention3d, (qkv_a, qkv_b, 2, 2), {"shift": 1,
                                                                                          "backend": "cpu"}
    sched = FastDDPMSchedule()
    x, e = (rng.standard_normal((2, 1, 4, 4, 4)).astype(np.float32) for _ in range(2))
    t = np.array([3, 700], dtype=np.int64)
    yield "q_sample", ops.q_sample, (x, t), {"schedule": sched, "seed": 5, "backend": "cpu"}
    yield "ddim_step", ops.ddim_step, (x, e, t, t - 1), {"schedule": sched, "return_x0": True, "backend": "cpu"}
    yield "ddpm_step", ops.ddpm_step, (x, e, t, t - 1), {"schedule": sched, "seed": 3, "backend": "cpu"}
    yield "diffusion_loss", ops.diffusion_loss, (e, x, t, 7), {"schedule": sched, "backend": "cpu"}
    a, b = (rng.standard_normal((5, 8)).astype(np.float32) for _ in range(2))
    yield "sigmoid_loss", ops.sigmoid_loss, (a, b, np.array(2.3, np.float32), -10.0), {"backend": "cpu"}


CONSISTENCY = list(_dlpack_consistency_cases())


@pytest.mark.parametrize("case", CONSISTENCY, ids=[c[0] for c in CONSISTENCY])
def test_numpy_in_matches_torch_in(case):
    import torch

    _, op, args, kwargs = case
    got = op(*args, **kwargs)
    tt = lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    want = op(*map(tt, args), **{k: tt(v) for k, v in kwargs.items()})
    got, want = (r if isinstance(r, tuple) else (r,) for r in (got, want))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray), type(g)
        np.testing.assert_array_equal(g, w.detach().numpy())


def test_torch_tensors_pass_through_untouched():
    import torch

    from medkernels import _dlpack

    seen = []
    f = _dlpack.accepts_dlpack(lambda *a, **k: seen.append((a, k)) or a[0] * 2)
    t = torch.ones(3)
    assert f(t, scale=t) is not None and seen[0][0][0] is t and seen[0][1]["scale"] is t
    assert isinstance(f(np.ones(3)), np.ndarray)
    # bfloat16 results come back to NumPy as float32 (NumPy has no bfloat16)
    g = _dlpack.accepts_dlpack(lambda a: a.to(torch.bfloat16))
    assert g(np.ones(2, np.float32)).dtype == np.float32


# --- JAX: the CPU kernel as an XLA FFI custom call under jax.jit ------------------------------------
@pytest.fixture(scope="module")
def jax_ffi_module(install_prefix, tmp_path_factory):
    jax = pytest.importorskip("jax")
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "include_dir"):
        pytest.skip(f"jax {jax.__version__} has no jax.ffi")
    if CMAKE is None:
        pytest.skip("cmake not found")
    build = tmp_path_factory.mktemp("jax_ffi")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run([CMAKE, "-S", str(EXAMPLES / "jax_ffi"), "-B", str(build), *gen,
                          f"-DCMAKE_PREFIX_PATH={install_prefix}", f"-DXLA_FFI_INCLUDE_DIR={jax.ffi.include_dir()}",
                          "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run([CMAKE, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    sys.path.insert(0, str(EXAMPLES / "jax_ffi"))
    try:
        import decomp_conv_jax
    finally:
        sys.path.remove(str(EXAMPLES / "jax_ffi"))
    decomp_conv_jax.register(str(build / "libmedkernels_jax_ffi.so"))
    return decomp_conv_jax


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stride,groups,activation", [(1, 4, None), (2, 2, "silu")], ids=["dw-s1", "g2-s2-silu"])
def test_jax_ffi_under_jit(jax_ffi_module, dtype, stride, groups, activation):
    import jax

    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", dtype == np.float64 or x64)
    try:
        _check_jax_ffi(jax, jax_ffi_module, dtype, stride, groups, activation)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _check_jax_ffi(jax, jax_ffi_module, dtype, stride, groups, activation):
    x, w_d, w_h, w_w, b = _case(13, c_in=4, c_out=4, groups=groups, size=(5, 4, 6), k=3, dtype=dtype)
    f = jax.jit(jax_ffi_module.decomp_conv3d, static_argnames=("stride", "groups", "activation"))
    y = f(x, w_d, w_h, w_w, b, stride=stride, groups=groups, activation=activation)
    assert y.dtype == dtype
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, groups, {None: 0, "silu": 3}[activation])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(y), want, rtol=tol, atol=tol)
    # composes with other jitted JAX code, no bias
    g = jax.jit(lambda x: (jax_ffi_module.decomp_conv3d(x * 2, w_d, w_h, w_w, groups=groups) ** 2).sum())
    want2 = (numpy_decomp_conv3d(x * 2, w_d, w_h, w_w, None, 1, groups) ** 2).sum()
    np.testing.assert_allclose(float(g(x)), want2, rtol=1e-4)


def test_jax_ffi_bad_arguments_raise(jax_ffi_module):
    x, w_d, w_h, w_w, b = _case(14, c_in=4, c_out=4, groups=4, size=(3, 3, 3), k=3)
    with pytest.raises(Exception, match="groups"):
        jax_ffi_module.decomp_conv3d(x, w_d, w_h, w_w, b, groups=3)


# --- CuPy through NVRTC ------------------------------------------------------------------------------
def test_cupy_module_does_not_import_cupy():
    code = "import sys, medkernels.cupy as m; m.source(); assert 'cupy' not in sys.modules; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (NVRTC itself is not needed for this check)")
@pytest.mark.parametrize("prelude", ["nvrtc-prelude", "std-headers"] if EXTENDED else ["nvrtc-prelude"])
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"] if EXTENDED else ["sm_90"])
@pytest.mark.parametrize("family", ["decomp_conv", "diffusion", "window_attention"])
def test_cupy_source_compiles_with_nvcc(tmp_path, family, arch, prelude):
    """The exact string medkernels.cupy hands NVRTC, compiled by nvcc; 'nvrtc-prelude' takes the branch
    NVRTC sees (our stand-ins for the C++ standard headers)."""
    from medkernels import cupy as mkc

    src = tmp_path / "medkernels_cupy.cu"
    src.write_text(mkc.source(family))
    extra = ["-DMK_NVRTC_PRELUDE_TEST"] if prelude == "nvrtc-prelude" else []
    run = subprocess.run([NVCC, "-std=c++17", f"-arch={arch}", *extra, "-c", str(src), "-o", str(tmp_path / "o.o")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    # extern "C" kernels keep their names: nvcc's host launch stubs carry them into the object
    syms = subprocess.run(["nm", str(tmp_path / "o.o")], capture_output=True, text=True)
    if syms.returncode == 0:
        for name in mkc.KERNELS[family]:
            assert name in syms.stdout, f"{name} missing from the compiled module"


def _cupy_on_gpu():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install medkernels[cupy])")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU visible to CuPy")
    except Exception as exc:  # no driver
        pytest.skip(f"no GPU visible to CuPy: {exc}")
    return cupy


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("stride,groups,activation", [(1, 4, None), (2, 2, "gelu")], ids=["dw-s1", "g2-s2-gelu"])
def test_cupy_decomp_conv3d_on_gpu(dtype, stride, groups, activation):
    cupy = _cupy_on_gpu()
    from medkernels import cupy as mkc

    x, w_d, w_h, w_w, b = _case(17, c_in=4, c_out=4, groups=groups, size=(5, 6, 7), k=3, dtype=dtype)
    want = numpy_decomp_conv3d(x, w_d, w_h, w_w, b, stride, groups, {None: 0, "gelu": 1}[activation])
    tol = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 2e-2}[dtype]
    args = [cupy.asarray(a) for a in (x, w_d, w_h, w_w, b)]
    y = mkc.decomp_conv3d(*args[:4], args[4], stride=stride, groups=groups, activation=activation)
    np.testing.assert_allclose(cupy.asnumpy(y).astype(np.float64), want, rtol=tol, atol=tol)
    x_cl = cupy.ascontiguousarray(args[0].transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
    y_cl = mkc.decomp_conv3d(x_cl, *args[1:4], args[4], stride=stride, groups=groups, activation=activation)
    np.testing.assert_array_equal(cupy.asnumpy(y_cl), cupy.asnumpy(y))


@pytest.mark.parametrize("op", ["q_sample", "ddim_step", "ddpm_step"])
def test_cupy_diffusion_on_gpu(op):
    cupy = _cupy_on_gpu()
    import torch

    from medkernels import cupy as mkc
    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    sched = FastDDPMSchedule()
    rng = np.random.default_rng(31)
    x, e = (rng.standard_normal((3, 2, 5, 4, 7)).astype(np.float32) for _ in range(2))
    t, t_next = np.array([0, 400, 999]), np.array([-1, 300, 900])
    tt = torch.from_numpy
    X, E = cupy.asarray(x), cupy.asarray(e)
    if op == "q_sample":
        got = [mkc.q_sample(X, t, sched, seed=11, offset=2)]
        want = [ops.q_sample(tt(x), tt(t), schedule=sched, seed=11, offset=2, backend="cpu")]
    elif op == "ddim_step":
        got = mkc.ddim_step(X, E, t, t_next, sched, eta=0.5, seed=11, offset=2, return_x0=True)
        want = ops.ddim_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, eta=0.5, seed=11, offset=2,
                             return_x0=True, backend="cpu")
    else:
        got = mkc.ddpm_step(X, E, t, t_next, sched, seed=11, offset=2, return_x0=True)
        want = ops.ddpm_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, seed=11, offset=2, return_x0=True,
                             backend="cpu")
    for g, w in zip(got, want):
        # the same Philox bits; the normals differ from the CPU's only by a few ulps of logf/sinf/cosf
        np.testing.assert_allclose(cupy.asnumpy(g), w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_cupy_window_attention_on_gpu(cross):
    cupy = _cupy_on_gpu()
    import torch

    from medkernels import cupy as mkc
    from medkernels import ops

    rng = np.random.default_rng(47)
    shape = (1, 3, 5, 4, 2, 8)
    arrs = [rng.standard_normal(shape).astype(np.float32) for _ in range(6 if cross else 3)]
    table = rng.standard_normal((27, 2)).astype(np.float32)
    tt = lambda a: torch.from_numpy(a).double()
    kw = dict(shift=1, rel_bias_table=table)
    if cross:
        got = mkc.cross_window_attention3d_separate(*(cupy.asarray(a) for a in arrs), 2, **kw)
        want = ops.cross_window_attention3d_separate(*map(tt, arrs), 2, shift=1, rel_bias_table=tt(table),
                                                     backend="reference")
        # the packed form on the qkv Linear's outputs: the same numbers from views
        qkv_a, qkv_b = (np.concatenate([a.reshape(*shape[:4], -1) for a in t], -1) for t in (arrs[:3], arrs[3:]))
        packed = mkc.cross_window_attention3d(cupy.asarray(qkv_a), cupy.asarray(qkv_b), 2, 2, **kw)
        for g, p in zip(got, packed):
            np.testing.assert_array_equal(cupy.asnumpy(g), cupy.asnumpy(p))
    else:
        got = [mkc.window_attention3d(*(cupy.asarray(a) for a in arrs), 2, **kw)]
        want = [ops.window_attention3d(*map(tt, arrs), 2, shift=1, rel_bias_table=tt(table), backend="reference")]
    for g, w in zip(got, want):
        np.testing.assert_allclose(cupy.asnumpy(g), w.numpy(), rtol=1e-5, atol=1e-5)


# --- the C ABI of the other families (in-process ctypes; checked against our torch ops) --------------
def _ctypes_lib(install_prefix):
    import ctypes

    lib = ctypes.CDLL(str(_capi_lib(install_prefix)))
    lib.mk_last_error.restype = ctypes.c_char_p
    return lib


def _ptr(a):
    import ctypes

    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def _i64s(v):
    import ctypes

    return (ctypes.c_int64 * len(v))(*v)


@pytest.mark.parametrize("op", ["q_sample", "ddim_step", "ddpm_step"])
def test_capi_diffusion_matches_the_cpu_op(install_prefix, op):
    import ctypes

    import torch

    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    lib = _ctypes_lib(install_prefix)
    sched = FastDDPMSchedule()
    rng = np.random.default_rng(23)
    x, e = (rng.standard_normal((3, 2, 4, 4, 5)).astype(np.float32) for _ in range(2))
    t, t_next = np.array([0, 400, 999]), np.array([-1, 300, 900])
    table = sched.alpha_table(torch.device("cpu")).double().numpy()
    T = table.size - 1
    out, x0 = np.empty_like(x), np.empty_like(x)
    common = (_ptr(table), ctypes.c_int64(T), ctypes.c_int64(3), ctypes.c_int64(x[0].size), ctypes.c_uint64(11),
              ctypes.c_uint64(2))
    tt = torch.from_numpy
    if op == "q_sample":
        st = lib.mk_diffusion_q_sample_f32(_ptr(x), None, _ptr(t), *common, _ptr(out))
        want = [ops.q_sample(tt(x), tt(t), schedule=sched, seed=11, offset=2, backend="cpu")]
    elif op == "ddim_step":
        st = lib.mk_diffusion_ddim_step_f32(_ptr(x), _ptr(e), None, _ptr(t), _ptr(t_next), *common,
                                            ctypes.c_double(0.5), _ptr(out), _ptr(x0))
        want = ops.ddim_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, eta=0.5, seed=11, offset=2,
                             return_x0=True, backend="cpu")
    else:
        st = lib.mk_diffusion_ddpm_step_f32(_ptr(x), _ptr(e), None, _ptr(t), _ptr(t_next), *common,
                                            ctypes.c_double(1.0), ctypes.c_int(1), _ptr(out), _ptr(x0))
        want = ops.ddpm_step(tt(x), tt(e), tt(t), tt(t_next), schedule=sched, seed=11, offset=2, clip=1.0,
                             return_x0=True, backend="cpu")
    assert st == 0, lib.mk_last_error()
    for got, w in zip((out, x0), want):
        np.testing.assert_array_equal(got, w.numpy())
    # a timestep out of range: MK_INVALID_ARGUMENT and the reason
    bad = np.array([0, 400, 1000])
    st = lib.mk_diffusion_q_sample_f32(_ptr(x), None, _ptr(bad), *common, _ptr(out))
    assert st == 1 and b"t must be in 0..999" in lib.mk_last_error()
    st = lib.mk_diffusion_q_sample_f32(_ptr(x), None, None, *common, _ptr(out))
    assert st == 1 and b"must not be NULL" in lib.mk_last_error()
    if not lib.mk_cuda_available():
        st = lib.mk_diffusion_q_sample_f32_cuda(_ptr(x), None, _ptr(t), *common, _ptr(out), None)
        assert st == 2 and b"without CUDA" in lib.mk_last_error()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_capi_window_attention_matches_the_reference(install_prefix, dtype):
    import ctypes

    import torch

    from medkernels import ops

    lib = _ctypes_lib(install_prefix)
    rng = np.random.default_rng(29)
    sizes = (2, 3, 5, 4, 2, 8)
    q, k, v = (rng.standard_normal(sizes).astype(dtype) for _ in range(3))
    table = rng.standard_normal((3 * 3 * 3, 2)).astype(dtype)
    # a strided q: a view of a bigger buffer
    q_big = np.zeros((*sizes[:5], 16), dtype)
    q_big[..., :8] = q
    qv = q_big[..., :8]
    out = np.empty(sizes, dtype)
    fn = getattr(lib, f"mk_window_attention3d_fwd_{'f32' if dtype == np.float32 else 'f64'}")
    st = fn(_ptr(q_big), _ptr(k), _ptr(v), _i64s(sizes), _i64s([s // q.itemsize for s in qv.strides]), None, None,
            _i64s([2, 2, 2]), _i64s([1, 1, 1]), _ptr(table), None, ctypes.c_double(0.0), ctypes.c_double(-100.0),
            ctypes.c_int(0), _ptr(out), None, None)
    assert st == 0, lib.mk_last_error()
    tt = lambda a: torch.from_numpy(np.ascontiguousarray(a)).double()
    want = ops.window_attention3d(tt(q), tt(k), tt(v), 2, shift=1, rel_bias_table=tt(table), backend="reference")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want.numpy(), rtol=tol, atol=tol)
    st = fn(_ptr(q), _ptr(k), _ptr(v), _i64s(sizes), None, None, None, _i64s([2, 2, 2]), _i64s([2, 1, 1]), None,
            None, ctypes.c_double(0.0), ctypes.c_double(-100.0), ctypes.c_int(0), _ptr(out), None, None)
    assert st == 1 and b"shift < window" in lib.mk_last_error()
    if not lib.mk_cuda_available():
        fn = getattr(lib, f"mk_window_attention3d_fwd_{'f32' if dtype == np.float32 else 'f64'}_cuda")
        st = fn(_ptr(q), _ptr(k), _ptr(v), _i64s(sizes), None, None, None, _i64s([2, 2, 2]), _i64s([1, 1, 1]), None,
                None, ctypes.c_double(0.0), ctypes.c_double(-100.0), ctypes.c_int(0), _ptr(out), None, None, None)
        assert st == 2 and b"without CUDA" in lib.mk_last_error()


@pytest.mark.parametrize("positives", ["diagonal", "labels", "mask"])
def test_capi_sigmoid_loss_matches_the_reference(install_prefix, positives):
    import ctypes
    import math

    import torch

    from medkernels import ops

    lib = _ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_sigmoid_loss_fwd_f64"):
        pytest.skip("this libmedkernels_capi predates the sigmoid loss entry points")
    rng = np.random.default_rng(37)
    n, d = 6, 16
    x, y = (rng.standard_normal((n, d)) for _ in range(2))
    labels = np.array([0, 1, 1, 2, 0, 3])
    mask = (rng.random((n, n)) < 0.3).astype(np.uint8)
    t_prime, bias = math.log(10.0), -10.0
    loss = np.zeros(1)
    mode = {"diagonal": 0, "labels": 1, "mask": 2}[positives]
    st = lib.mk_sigmoid_loss_fwd_f64(_ptr(x), _ptr(y), ctypes.c_int64(n), ctypes.c_int64(n), ctypes.c_int64(d), None,
                                     None, ctypes.c_double(10.0), ctypes.c_double(bias), ctypes.c_int(0),
                                     ctypes.c_int(mode), ctypes.c_int64(0), _ptr(labels), _ptr(labels), _ptr(mask),
                                     None, _ptr(loss))
    assert st == 0, lib.mk_last_error()
    kw = {"labels": torch.from_numpy(labels)} if positives == "labels" else (
        {"positive_mask": torch.from_numpy(mask.astype(bool))} if positives == "mask" else {})
    want = ops.sigmoid_loss(torch.from_numpy(x), torch.from_numpy(y), t_prime, bias, reduction="sum",
                            backend="reference", **kw)
    np.testing.assert_allclose(loss[0], float(want), rtol=1e-12)
    # positives=labels without labels: the documented error
    st = lib.mk_sigmoid_loss_fwd_f64(_ptr(x), _ptr(y), ctypes.c_int64(n), ctypes.c_int64(n), ctypes.c_int64(d), None,
                                     None, ctypes.c_double(10.0), ctypes.c_double(bias), ctypes.c_int(0),
                                     ctypes.c_int(1), ctypes.c_int64(0), None, None, None, None, _ptr(loss))
    assert st == 1 and b"labels" in lib.mk_last_error()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_capi_decomp_conv_16bit_and_channels_last_output(install_prefix, dtype):
    """16-bit storage through the C ABI (uint16 bits), y written channels-last through y_strides."""
    import ctypes

    lib = _ctypes_lib(install_prefix)
    x, w_d, w_h, w_w, b = _case(41, c_in=4, c_out=4, groups=4, size=(3, 5, 6), k=3)
    if dtype == "f16":
        to_bits = lambda a: a.astype(np.float16).view(np.uint16)
        from_bits = lambda u: u.view(np.float16).astype(np.float64)
    else:  # bfloat16: the high half of float32 (inputs rounded by truncation; the kernel rounds to nearest)
        to_bits = lambda a: (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        from_bits = lambda u: (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    xs, wds, whs, wws, bs = (np.ascontiguousarray(to_bits(a)) for a in (x, w_d, w_h, w_w, b))
    want = numpy_decomp_conv3d(*(from_bits(a) for a in (xs, wds, whs, wws)), from_bits(bs), 1, 4, 0)
    y_cl = np.empty((x.shape[0], *x.shape[2:], 4), np.uint16)  # N D H W C storage
    y_strides = [y_cl.strides[0] // 2, 1, y_cl.strides[1] // 2, y_cl.strides[2] // 2, y_cl.strides[3] // 2]
    fn = getattr(lib, f"mk_decomp_conv3d_fwd_{dtype}")
    st = fn(_ptr(xs), _i64s(x.shape), None, _ptr(wds), _ptr(whs), _ptr(wws), _ptr(bs), ctypes.c_int64(4),
            ctypes.c_int64(3), ctypes.c_int64(1), ctypes.c_int64(4), ctypes.c_int(0), _ptr(y_cl), _i64s(y_strides))
    assert st == 0, lib.mk_last_error()
    got = from_bits(y_cl).transpose(0, 4, 1, 2, 3)
    tol = 1e-2 if dtype == "f16" else 2e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_capi_diffusion_loss_matches_the_cpu_op(install_prefix):
    import ctypes

    import torch

    from medkernels import ops
    from medkernels.diffusion import FastDDPMSchedule

    lib = _ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_diffusion_loss_f32"):
        pytest.skip("this libmedkernels_capi predates mk_diffusion_loss")
    rng = np.random.default_rng(43)
    e = rng.standard_normal((2, 1, 9, 10, 13)).astype(np.float32)  # 1170 elements: two loss blocks per sample
    grad = np.empty_like(e)
    sum_sq = np.zeros(1)
    st = lib.mk_diffusion_loss_f32(_ptr(e), None, ctypes.c_int64(2), ctypes.c_int64(e[0].size), ctypes.c_uint64(9),
                                   ctypes.c_uint64(4), ctypes.c_double(1.0), _ptr(grad), _ptr(sum_sq))
    assert st == 0, lib.mk_last_error()
    et = torch.from_numpy(e)
    want = ops.diffusion_loss(et, et, torch.tensor([1, 2]), 9, offset=4, schedule=FastDDPMSchedule(), backend="cpu")
    np.testing.assert_allclose(sum_sq[0] / 2, float(want), rtol=1e-6)
    from medkernels.ops.diffusion import randn

    z = randn(et, 9, offset=4, backend="cpu").numpy()
    np.testing.assert_allclose(grad, e - z, rtol=1e-6, atol=1e-6)


def test_capi_window_attention_backward_matches_autograd(install_prefix):
    import ctypes

    import torch

    from medkernels import ops
    from medkernels.reference.window_attention import bias_table_grad

    lib = _ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_window_attention3d_bwd_f64"):
        pytest.skip("this libmedkernels_capi predates the window attention backward")
    rng = np.random.default_rng(53)
    sizes = (1, 3, 5, 4, 2, 4)
    q, k, v, g = (rng.standard_normal(sizes) for _ in range(4))
    table = rng.standard_normal((27, 2))
    pad_kv = rng.standard_normal((2, 2, 4))
    out, lse = np.empty(sizes), np.empty(sizes[:5])
    common = (_i64s(sizes), None, None, None, _i64s([2, 2, 2]), _i64s([1, 1, 1]), _ptr(table), _ptr(pad_kv),
              ctypes.c_double(0.0), ctypes.c_double(-100.0), ctypes.c_int(0))
    st = lib.mk_window_attention3d_fwd_f64(_ptr(q), _ptr(k), _ptr(v), *common, _ptr(out), None, _ptr(lse))
    assert st == 0, lib.mk_last_error()
    dq, dk, dv = (np.empty(sizes) for _ in range(3))
    n = 2 * 2 * 2
    pair, dpad = np.empty((2, n, n)), np.empty((2, 2, 4))
    st = lib.mk_window_attention3d_bwd_f64(_ptr(q), _ptr(k), _ptr(v), *common, _ptr(out), None, _ptr(lse), _ptr(g),
                                           None, _ptr(dq), _ptr(dk), _ptr(dv), None, _ptr(pair), _ptr(dpad))
    assert st == 0, lib.mk_last_error()
    tq, tk, tv, tt, tp = (torch.from_numpy(a).requires_grad_() for a in (q, k, v, table, pad_kv))
    y = ops.window_attention3d(tq, tk, tv, 2, shift=1, rel_bias_table=tt, pad_kv=tp, backend="reference")
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    y.backward(torch.from_numpy(g))
    for got, want in ((dq, tq), (dk, tk), (dv, tv), (dpad, tp)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bias_table_grad(torch.from_numpy(pair), 2, n).numpy(), tt.grad.numpy(), rtol=1e-10,
                               atol=1e-10)
    st = lib.mk_window_attention3d_bwd_f64(_ptr(q), _ptr(k), _ptr(v), *common, _ptr(out), None, None, _ptr(g),
                                           None, _ptr(dq), _ptr(dk), _ptr(dv), None, None, None)
    assert st == 1 and b"lse" in lib.mk_last_error()


def test_capi_sigmoid_loss_backward_matches_autograd(install_prefix):
    import ctypes
    import math

    import torch

    from medkernels import ops

    lib = _ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_sigmoid_loss_bwd_f64"):
        pytest.skip("this libmedkernels_capi predates the sigmoid loss backward")
    rng = np.random.default_rng(59)
    n, m, d = 5, 7, 8
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    lx, ly = rng.integers(0, 3, n), rng.integers(0, 3, m)
    gx, gy, gt, gb = np.empty_like(x), np.empty_like(y), np.zeros(1), np.zeros(1)
    st = lib.mk_sigmoid_loss_bwd_f64(_ptr(x), _ptr(y), ctypes.c_int64(n), ctypes.c_int64(m), ctypes.c_int64(d), None,
                                     None, ctypes.c_double(math.exp(1.5)), ctypes.c_double(-2.0), ctypes.c_int(0),
                                     ctypes.c_int(1), ctypes.c_int64(0), _ptr(lx), _ptr(ly), None, None,
                                     ctypes.c_double(0.5), _ptr(gx), None, _ptr(gy), None, _ptr(gt), _ptr(gb))
    assert st == 0, lib.mk_last_error()
    tx, ty = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).requires_grad_()
    tt, tb = torch.tensor(1.5, dtype=torch.float64, requires_grad=True), torch.tensor(-2.0, dtype=torch.float64,
                                                                                   requires_grad=True)
    loss = ops.sigmoid_loss(tx, ty, tt, tb, labels=torch.from_numpy(lx), labels_y=torch.from_numpy(ly),
                            reduction="sum", backend="reference")
    (0.5 * loss).backward()
    for got, want in ((gx, tx), (gy, ty), (gt[0], tt), (gb[0], tb)):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_capi_sigmoid_loss_cuda_entry_points(install_prefix):
    """The _cuda sigmoid-loss entry points exist for every dtype; the workspace query matches the kernels'
    plan; without a GPU a call returns a status (MK_UNSUPPORTED from a CPU build) and never aborts."""
    import ctypes

    import torch

    lib = _ctypes_lib(install_prefix)
    if not hasattr(lib, "mk_sigmoid_loss_cuda_workspace_bytes"):
        pytest.skip("this libmedkernels_capi predates the CUDA sigmoid loss entry points")
    for op in ("fwd", "bwd"):
        for dt in ("f32", "f64", "f16", "bf16"):
            assert hasattr(lib, f"mk_sigmoid_loss_{op}_{dt}_cuda")
    lib.mk_sigmoid_loss_cuda_workspace_bytes.restype = ctypes.c_size_t
    ws = lib.mk_sigmoid_loss_cuda_workspace_bytes
    # forward: one double per (row block of 64, column split); backward: two per row block
    assert ws(ctypes.c_int64(1), ctypes.c_int64(1)) == 16
    assert ws(ctypes.c_int64(100), ctypes.c_int64(100)) == 2 * 2 * 8
    assert ws(ctypes.c_int64(32768), ctypes.c_int64(32768)) == 512 * 2 * 8
    assert ws(ctypes.c_int64(0), ctypes.c_int64(5)) == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: host pointers would reach the kernels (tests/test_sigmoid_loss.py runs them)")
    n, d = 4, 8
    x = np.ones((n, d), np.float32)
    loss = np.zeros(1)
    # a workspace of the size asked for, so the call gets past the argument checks: built with
    # CUDA it then fails at the launch (no GPU here), built without it says unsupported
    nbytes = ws(ctypes.c_int64(n), ctypes.c_int64(n))
    work = np.zeros(max(nbytes, 8) // 8, np.float64)
    st = lib.mk_sigmoid_loss_fwd_f32_cuda(_ptr(x), _ptr(x), ctypes.c_int64(n), ctypes.c_int64(n), ctypes.c_int64(d),
                                          None, None, ctypes.c_double(10.0), ctypes.c_double(-10.0), ctypes.c_int(0),
                                          ctypes.c_int(0), ctypes.c_int64(0), None, None, None, None, _ptr(loss),
                                          _ptr(work), ctypes.c_size_t(nbytes), None)
    assert st == (3 if lib.mk_cuda_available() else 2), lib.mk_last_error()
    assert b"mk_sigmoid_loss_fwd_f32_cuda" in lib.mk_last_error() or lib.mk_cuda_available()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_sigmoid_loss_cuh_links_without_the_library(tmp_path):
    """A program instantiating the header-only sigmoid-loss launchers links with nvcc alone."""
    src = tmp_path / "use_sl.cu"
    src.write_text(
        '#include "medkernels/cuda/sigmoid_loss.cuh"\n'
        "int main() {\n"
        "  medkernels::SigmoidLossParams p; medkernels::SigmoidLossBwdParams b;\n"
        "  int e = int(medkernels::cuda::launch_sigmoid_loss_fwd<medkernels::half_t>(p, nullptr));\n"
        "  e += int(medkernels::cuda::launch_sigmoid_loss_bwd<double>(b, nullptr));\n"
        "  return e > 1000;\n"
        "}\n")
    run = subprocess.run([NVCC, "-std=c++17", "-arch=sm_80", f"-I{ROOT / 'csrc' / 'include'}", str(src), "-o",
                          str(tmp_path / "use_sl")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
