"""Vendoring (#8), the package as a whole: the CMake package (`cmake --install`) consumed by
examples/vendor_cmake (find_package + medkernels::core and medkernels::capi), every header-only CUDA kernel
header compiling stand-alone with nvcc, the C ABI header as plain C and its params structs' layouts,
DLPack inputs (NumPy, JAX) to the public ops, and the CuPy/NVRTC sources. The families' own C ABI, JAX
and CuPy checks are in tests/test_vendoring_<family>.py; the shared helpers in tests/vendoring_helpers.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vendoring_helpers import (
    BUILD_DIR,
    CMAKE,
    CXX,
    EXAMPLES,
    NVCC,
    PARAMS_STRUCTS,
    ROOT,
    conv_case,
    ctypes_lib,
    i64s,
    new_params,
    numpy_decomp_conv3d,
    params_fields,
    params_struct,
    ptr,
)

from medkernels._environment import EXTENDED_TESTS as EXTENDED


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
    x, w_d, w_h, w_w, b = conv_case(3, c_in=4, c_out=4, groups=groups, size=(5, 6, 7), k=3)
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
    args = (ptr(x), i64s(x.shape), None, ptr(w), ptr(w), ptr(w), None, ctypes.c_int64(2), ctypes.c_int64(3),
            ctypes.c_int64(1), ctypes.c_int64(2), ctypes.c_int(0), ptr(y), None)
    assert lib.mk_decomp_conv3d_fwd_f32(*args) == 0 and float(y.sum()) == 378.0
    import torch

    if not torch.cuda.is_available():  # host pointers: only where no kernel can run
        st = lib.mk_decomp_conv3d_fwd_f32_cuda(*args, None)
        assert st == (3 if cuda == "ON" else 2), lib.mk_last_error()


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


def test_params_layouts_follow_the_field_lists(install_prefix):
    """Each C mirror struct holds, after struct_size, exactly the attributes of the pybind class of the same
    C++ struct, in layout order (both expand one field list); mk_params_fields reports the offsets and
    sizes a C compiler gives it (ctypes lays it out alike), and <name>_init gives the C++ defaults."""
    import ctypes

    _C = pytest.importorskip("medkernels._C")
    lib = ctypes_lib(install_prefix)
    for c_name, py_name in PARAMS_STRUCTS.items():
        rows, size = params_fields(lib, c_name)
        assert rows is not None, f"{c_name} is not in this libmedkernels_capi"
        cls = getattr(_C, py_name)
        assert [r[0] for r in rows] == ["struct_size", *cls._fields], c_name
        S = params_struct(lib, c_name)
        assert ctypes.sizeof(S) == size, c_name
        for name, _, _, offset, nbytes, _ in rows:
            assert (getattr(S, name).offset, getattr(S, name).size) == (offset, nbytes), f"{c_name}.{name}"
        c, cxx = new_params(lib, c_name), cls()
        assert c.struct_size == size
        for name, kind, *_ in rows[1:]:
            want = getattr(cxx, name)
            if kind in ("VAL", "BOOL", "ENUM", "OPCODE"):
                assert getattr(c, name) == (int(want) if kind in ("ENUM", "BOOL") else want), f"{c_name}.{name}"
            elif kind == "ARR":
                assert list(getattr(c, name)) == want, f"{c_name}.{name}"
            elif kind == "PTR":
                assert not getattr(c, name), f"{c_name}.{name}"
    assert params_fields(lib, "mk_no_such_params") == (None, 0)


def test_params_entry_points_refuse_a_foreign_struct(install_prefix):
    """A struct_size other than this library's (a caller built against another c_api.h) or NULL: the
    documented error, before any field is read."""
    import ctypes

    lib = ctypes_lib(install_prefix)
    p = new_params(lib, "mk_decomp_conv_params")
    p.struct_size -= 8
    assert lib.mk_decomp_conv_fwd(ctypes.byref(p)) == 1
    assert b"mk_decomp_conv_fwd: params.struct_size must be sizeof(mk_decomp_conv_params)" in lib.mk_last_error()
    assert lib.mk_group_norm_fwd(None) == 1 and b"must not be NULL" in lib.mk_last_error()
    lib.mk_decomp_conv_bwd_workspace_bytes.restype = ctypes.c_size_t
    assert lib.mk_decomp_conv_bwd_workspace_bytes(None) == 0 and b"must not be NULL" in lib.mk_last_error()


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


def _dlpack_ops():
    """(public op, NumPy inputs, NumPy expectation) for each family whose op takes DLPack arrays."""
    from medkernels import ops

    x, w_d, w_h, w_w, b = conv_case(11, c_in=3, c_out=3, groups=3, size=(4, 5, 6), k=3)
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


def test_cupy_module_does_not_import_cupy():
    code = "import sys, medkernels.cupy as m; m.source(); assert 'cupy' not in sys.modules; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (NVRTC itself is not needed for this check)")
@pytest.mark.parametrize("prelude", ["nvrtc-prelude", "std-headers"] if EXTENDED else ["nvrtc-prelude"])
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"] if EXTENDED else ["sm_90"])
@pytest.mark.parametrize("family", ["decomp_conv", "diffusion", "window_attention", "group_norm"])
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
