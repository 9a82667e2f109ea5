"""The CUDA decomposed convolution: it compiles, its kernels compute the reference, and on a GPU
the ``cuda`` backend matches the reference.

Without a GPU the kernels still run: tests/decomp_conv_emulate.cpp executes the same per-thread
bodies (medkernels/detail/decomp_conv_kernels.h) and the same launch plan the .cuh uses, block
by block and thread by thread on the host, the tile kernel's shared memory poisoned with NaN.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import emulate
import pytest
import torch
from emulate import DTYPE_CODE as _DTYPE_CODE
from emulate import INCLUDE, ROOT
from emulate import read as _read
from emulate import write as _write

from medkernels import _environment
from medkernels.reference.decomp_conv import decomp_conv3d_bwd_ref, decomp_conv3d_ref
from medkernels.testing import assert_close

NVCC = shutil.which("nvcc")
HAS_GPU = torch.cuda.is_available()

_ACT_CODE = {None: 0, "gelu": 1, "relu": 2, "silu": 3}
_DT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def _nvcc(src: Path, out: Path, arch: str = "sm_90") -> None:
    cmd = [NVCC, "-std=c++17", f"-arch={arch}", "-O3", "--expt-relaxed-constexpr", f"-I{INCLUDE}", "-c", str(src),
           "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}"
    assert "warning" not in res.stderr.lower(), res.stderr[-4000:]


# --- build ------------------------------------------------------------------------------------------
@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_nvcc_compiles_decomp_conv_cu(tmp_path):
    _nvcc(ROOT / "csrc" / "cuda" / "decomp_conv.cu", tmp_path / "decomp_conv.o")


_CUDA_HEADERS = sorted(h for h in (INCLUDE / "medkernels" / "cuda").iterdir() if h.suffix in (".h", ".cuh"))
_ALL_CUH = sorted(h.stem for h in _CUDA_HEADERS if h.suffix == ".cuh")
_TOOLKIT_FREE = sorted(h for h in (INCLUDE / "medkernels").rglob("*.h") if "cuda" not in h.relative_to(INCLUDE).parts)


def test_every_family_has_a_cuh():
    assert {"decomp_conv", "sigmoid_loss", "window_attention", "diffusion", "group_norm"} <= set(_ALL_CUH), _ALL_CUH


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_every_cuh_links_from_two_translation_units(tmp_path):
    """A header-only .cuh defines nothing with external linkage that is not inline or a template:
    two .cu files that each include every header under medkernels/cuda/ link into one program
    (regression: window_attention's non-inline blocks() and sigmoid_loss's non-template
    sl_finish_kernel were multiply defined)."""
    includes = "".join(f'#include "medkernels/cuda/{h.name}"\n' for h in _CUDA_HEADERS)
    objs = []
    for i in (1, 2):
        src = tmp_path / f"tu{i}.cu"
        src.write_text(includes + f"int mk_tu{i}() {{ return {i}; }}\n")
        objs.append(tmp_path / f"tu{i}.o")
        _nvcc(src, objs[-1])
    main = tmp_path / "main.cu"
    main.write_text("int mk_tu1();\nint mk_tu2();\nint main() { return mk_tu1() + mk_tu2() == 3 ? 0 : 1; }\n")
    objs.append(tmp_path / "main.o")
    _nvcc(main, objs[-1])
    cmd = [NVCC, "-arch=sm_90", *map(str, objs), "-o", str(tmp_path / "linked")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc link failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}"


@pytest.mark.skipif(emulate.CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("header", _TOOLKIT_FREE, ids=lambda h: h.relative_to(INCLUDE / "medkernels").as_posix())
def test_headers_outside_cuda_compile_without_the_toolkit(tmp_path, header):
    """Only medkernels/cuda/ needs the CUDA toolkit: every other header compiles on its own with
    a host compiler and no CUDA include path (regression: detail/cuda_status.h included
    cuda_runtime.h and was installed among the plain headers)."""
    src = tmp_path / "use.cpp"
    src.write_text(f'#include "{header.relative_to(INCLUDE).as_posix()}"\n')
    cmd = [emulate.CXX, "-std=c++17", "-fsyntax-only", "-Wall", f"-I{INCLUDE}", str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_nvcc_compiles_header_only_cuh_standalone(tmp_path):
    src = tmp_path / "standalone.cu"
    src.write_text(
        '#include "medkernels/cuda/decomp_conv.cuh"\n'
        "template cudaError_t medkernels::cuda::launch_decomp_conv_fwd<float>(const medkernels::DecompConvParams&,"
        " cudaStream_t);\n"
    )
    _nvcc(src, tmp_path / "standalone.o")


# --- host emulation of the CUDA kernels ------------------------------------------------------------
@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return emulate.build("decomp_conv", tmp_path_factory, "-O1")


@dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    shape: Tuple[int, int, int, int, int]  # N, C_in, D, H, W
    c_out: int
    k: int
    stride: int = 1
    groups: Optional[int] = None  # None: depthwise
    act: Optional[str] = None
    bias: bool = True
    layout: str = "ncdhw"  # ncdhw | cl (channels-last) | wslice (x[..., 1:]) | wstep (x[..., ::2])
    x_offset: int = 0  # elements: misaligns x for the 16-byte paths
    grad: str = "random"  # random | sum (expanded stride-0 grad_y)
    fwd_kernel: str = ""  # the first kernel line the forward must print

    @property
    def id(self) -> str:
        g = "dw" if self.groups is None else f"g{self.groups}"
        dims = "x".join(map(str, self.shape))
        extra = f"-off{self.x_offset}" if self.x_offset else ""
        return (f"{_DT[self.dtype]}-{dims}-co{self.c_out}-k{self.k}-s{self.stride}-{g}-{self.act or 'id'}-"
                f"{self.layout}{extra}-{self.grad}")


CASES = [
    Case(torch.float32, (2, 4, 5, 6, 12), 4, 3, act="gelu", fwd_kernel="conv_tile mode=0 vec=4"),
    Case(torch.float16, (1, 3, 4, 9, 24), 3, 7, fwd_kernel="conv_tile mode=0 vec=8", grad="sum"),
    Case(torch.bfloat16, (2, 2, 3, 5, 19), 2, 5, act="silu", x_offset=1, fwd_kernel="conv_tile mode=0 vec=1"),
    Case(torch.float64, (1, 2, 3, 40, 150), 2, 3, act="relu", fwd_kernel="conv_tile mode=0 vec=2"),
    Case(torch.float32, (2, 8, 4, 5, 6), 8, 3, act="gelu", layout="cl", fwd_kernel="conv_cl_vec mode=0 vec=4"),
    Case(torch.float16, (1, 8, 3, 4, 5), 8, 5, layout="cl", fwd_kernel="conv_cl_vec mode=0 vec=8"),
    Case(torch.float16, (1, 6, 3, 4, 5), 6, 3, layout="cl", fwd_kernel="conv_generic mode=0 channels_inner=1"),
    Case(torch.float64, (2, 4, 5, 7, 6), 4, 3, stride=2, layout="cl", act="silu",
         fwd_kernel="conv_cl_vec mode=0 vec=2"),
    Case(torch.float64, (2, 3, 7, 6, 9), 3, 5, stride=2, act="silu", fwd_kernel="conv_generic mode=0 channels_inner=0"),
    Case(torch.float32, (1, 4, 4, 5, 7), 6, 3, groups=2, act="relu", fwd_kernel="conv_generic mode=0 channels_inner=0"),
    Case(torch.float32, (2, 4, 4, 5, 7), 6, 3, groups=2, layout="cl",
         fwd_kernel="conv_generic mode=0 channels_inner=1"),
    Case(torch.float64, (1, 1, 9, 10, 11), 4, 7, stride=4, groups=1, bias=False,
         fwd_kernel="conv_generic mode=0 channels_inner=0"),
    Case(torch.float64, (1, 3, 4, 5, 9), 3, 3, layout="wslice", act="gelu", fwd_kernel="conv_tile mode=0 vec=1"),
    Case(torch.float32, (1, 3, 4, 5, 9), 3, 3, layout="wstep", fwd_kernel="conv_tile mode=0 vec=1"),
    Case(torch.float32, (1, 2, 3, 4, 8), 2, 15, act="gelu", fwd_kernel="conv_tile mode=0 vec=4"),
    Case(torch.float32, (1, 2, 3, 4, 5), 2, 1, bias=False, fwd_kernel="conv_tile mode=0 vec=1"),
    # enough rows that each weight-gradient split reduces several of them
    Case(torch.float32, (1, 64, 16, 16, 8), 64, 7, act="gelu", fwd_kernel="conv_tile mode=0 vec=4"),
    Case(torch.bfloat16, (1, 3, 5, 6, 7), 6, 3, stride=2, groups=3, act="gelu", layout="cl",
         fwd_kernel="conv_generic mode=0 channels_inner=1"),
]


def _random_cases(count: int, seed: int):
    """Seeded sweep: every dtype, layout, stride, groups pattern and odd kernel, odd sizes."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        dtype = rng.choice(list(_DTYPE_CODE))
        layout = rng.choice(["ncdhw", "ncdhw", "cl", "cl", "wslice", "wstep"])
        k = rng.choice([1, 3, 3, 5, 7, 9, 15])
        stride = rng.choice([1, 1, 2, 4])
        kind = rng.choice(["dw", "dw", "dw", "grouped", "dense"])
        c_in = rng.choice([1, 2, 3, 4, 8, 16])
        if kind == "dw":
            groups, c_out = None, c_in
        elif kind == "grouped":
            groups = rng.choice([g for g in (1, 2, 4) if c_in % g == 0])
            c_out = groups * rng.choice([1, 2, 3])
        else:
            groups, c_out = 1, rng.choice([1, 3, 4])
        shape = (rng.choice([1, 2]), c_in, *(rng.choice([1, 2, 3, 5, 8, 13, 16, 24]) for _ in range(3)))
        out.append(Case(dtype, shape, c_out, k, stride, groups, rng.choice([None, "gelu", "relu", "silu"]),
                        rng.random() < 0.7, layout, rng.choice([0, 0, 0, 1]), rng.choice(["random", "sum"])))
    return out


if _environment.EXTENDED_TESTS:
    CASES = CASES + _random_cases(60, seed=1234)


def _make_x(case: Case, device: str = "cpu") -> torch.Tensor:
    n, c, d, h, w = case.shape
    if case.layout == "wslice":
        return torch.randn(n, c, d, h, w + 2, dtype=torch.float64, device=device).to(case.dtype)[..., 1:-1]
    if case.layout == "wstep":
        return torch.randn(n, c, d, h, 2 * w, dtype=torch.float64, device=device).to(case.dtype)[..., ::2]
    x = torch.randn(case.shape, dtype=torch.float64, device=device).to(case.dtype)
    if case.layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _dense_stride(shape, channels_last: bool):
    t = torch.empty(shape, device="meta")
    return (t.contiguous(memory_format=torch.channels_last_3d) if channels_last else t).stride()


def _emulate(exe: Path, d: Path, case: Case, x, ws, b, gy, y_shape, mode: int):
    groups = case.shape[1] if case.groups is None else case.groups
    channels_last = x.stride(1) == 1 and x.shape[1] > 1
    ys = _dense_stride(y_shape, channels_last)
    gxs = _dense_stride(x.shape, channels_last)
    gys = gy.stride() if gy is not None else ys
    vals = [_DTYPE_CODE[case.dtype], *case.shape[:2], case.c_out, *case.shape[2:], case.k, case.stride, groups,
            _ACT_CODE[case.act], int(b is not None), case.x_offset, *x.stride(), *ys, *gys, *gxs, mode]
    _write(d / "x.bin", x)
    for name, w in zip(("wd", "wh", "ww"), ws):
        _write(d / f"{name}.bin", w)
    if b is not None:
        _write(d / "bias.bin", b)
    if gy is not None:
        _write(d / "gy.bin", gy)
    return emulate.run(exe, d, vals), ys, gxs


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_emulated_cuda_kernels_match_reference(emulator, tmp_path, case: Case):
    torch.manual_seed(0)
    x = _make_x(case)
    groups = case.shape[1] if case.groups is None else case.groups
    cin_g = case.shape[1] // groups
    ws = [(torch.randn(case.c_out, cin_g, case.k, dtype=torch.float64) / case.k).to(case.dtype) for _ in range(3)]
    b = torch.randn(case.c_out, dtype=torch.float64).to(case.dtype) if case.bias else None
    up = [t.double() if t is not None else None for t in (x, *ws, b)]
    y64 = decomp_conv3d_ref(up[0], *up[1:4], up[4], case.stride, groups, case.act)

    # forward
    lines, ys, _ = _emulate(emulator, tmp_path, case, x, ws, b, None, y64.shape, mode=0)
    assert lines and lines[0].startswith(case.fwd_kernel), f"forward ran {lines}, expected {case.fwd_kernel}"
    y = _read(tmp_path / "y.bin", case.dtype, y64.shape, ys)
    assert_close("y", y, y64)

    # backward
    if case.grad == "sum":
        gy = torch.ones(1, dtype=case.dtype).expand(y64.shape)
    else:
        gy = torch.randn(y64.shape, dtype=torch.float64).to(case.dtype)
    lines, _, gxs = _emulate(emulator, tmp_path, case, x, ws, b, gy, y64.shape, mode=1)
    expect = ["dw_partial", "dw_reduce", "wflip" if case.stride == 1 else "dx_gather"]
    assert all(any(ln.startswith(e) for ln in lines) for e in expect), f"backward ran {lines}"
    ref = decomp_conv3d_bwd_ref(gy.double(), up[0], *up[1:4], up[4], case.stride, groups, case.act)
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32
    gx = _read(tmp_path / "gx.bin", case.dtype, x.shape, gxs)
    assert_close("grad_x", gx, ref[0])
    wshape = ws[0].shape
    wstride = ws[0].stride()
    for name, r in zip(("gwd", "gwh", "gww"), ref[1:4]):
        assert_close(name, _read(tmp_path / f"{name}.bin", acc, wshape, wstride), r, dtype=case.dtype)
    if b is not None:
        assert_close("grad_bias", _read(tmp_path / "gb.bin", acc, (case.c_out,), (1,)), ref[4], dtype=case.dtype)


# --- the real thing, on a GPU ----------------------------------------------------------------------
def _cuda_backend_reason() -> Optional[str]:
    if not HAS_GPU:
        return "no CUDA GPU"
    import medkernels

    if not medkernels.build_info().get("cuda"):
        return "medkernels was built without CUDA"
    return None


GPU_CASES = [c for c in CASES if c.x_offset == 0]


@pytest.mark.skipif(_cuda_backend_reason() is not None, reason=str(_cuda_backend_reason()))
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
def test_cuda_backend_matches_reference(case: Case):
    from medkernels.ops import decomp_conv3d

    torch.manual_seed(0)
    dev = torch.device("cuda")
    x = _make_x(case, "cuda")
    groups = case.shape[1] if case.groups is None else case.groups
    cin_g = case.shape[1] // groups
    ws = [(torch.randn(case.c_out, cin_g, case.k, dtype=torch.float64, device=dev) / case.k).to(case.dtype)
          for _ in range(3)]
    b = torch.randn(case.c_out, dtype=torch.float64, device=dev).to(case.dtype) if case.bias else None
    # x itself (a view for wslice/wstep) is the leaf, so the op sees its strides
    leaves = [x.detach().requires_grad_()] + [w.detach().clone().requires_grad_() for w in ws]
    if case.bias:
        leaves.append(b.clone().requires_grad_())
    bias = leaves[4] if case.bias else None
    y = decomp_conv3d(*leaves[:4], bias, case.stride, case.groups, case.act, backend="cuda")
    up = [t.double() if t is not None else None for t in (x, *ws, b)]
    y64 = decomp_conv3d_ref(up[0], *up[1:4], up[4], case.stride, groups, case.act)
    assert_close("y", y, y64)
    gy = torch.randn(y.shape, dtype=case.dtype, device=dev)
    y.backward(gy)
    ref = decomp_conv3d_bwd_ref(gy.double(), up[0], *up[1:4], up[4], case.stride, groups, case.act)
    for name, leaf, r in zip(("grad_x", "grad_w_d", "grad_w_h", "grad_w_w", "grad_bias"), leaves, ref):
        assert_close(name, leaf.grad, r, dtype=case.dtype)


@pytest.mark.skipif(_cuda_backend_reason() is not None, reason=str(_cuda_backend_reason()))
def test_cuda_backward_is_deterministic():
    from medkernels.ops import decomp_conv3d

    torch.manual_seed(0)
    x = torch.randn(2, 32, 16, 24, 40, device="cuda", requires_grad=True)
    ws = [torch.randn(32, 1, 7, device="cuda", requires_grad=True) for _ in range(3)]
    b = torch.randn(32, device="cuda", requires_grad=True)
    gy = torch.randn(2, 32, 16, 24, 40, device="cuda")
    grads = []
    for _ in range(2):
        y = decomp_conv3d(x, *ws, b, activation="gelu", backend="cuda")
        grads.append(torch.autograd.grad(y, (x, *ws, b), gy))
    for name, g0, g1 in zip(("grad_x", "grad_w_d", "grad_w_h", "grad_w_w", "grad_bias"), *grads):
        assert torch.equal(g0, g1), f"{name} differs between two identical backward runs"


# === sigmoid (SigLIP) loss ==========================================================================
# tests/sigmoid_loss_emulate.cpp runs the CUDA block programs (medkernels/detail/sigmoid_loss.h) on
# the host, every thread slot of every block, the tensor-core step emulated from the PTX fragment
# layout, shared memory poisoned with NaN: a wrong fragment index, tile mapping or reduction fails here.
@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
# sm_90 (the H200 the GPU suite runs on) always; sm_80 (the same mma.sync code, an A100 build) with
# MEDKERNELS_EXTENDED_TESTS=1: a minute of CI for a second compile of the same source
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"] if _environment.EXTENDED_TESTS else ["sm_90"])
def test_nvcc_compiles_sigmoid_loss_cu(tmp_path, arch):
    _nvcc(ROOT / "csrc" / "cuda" / "sigmoid_loss.cu", tmp_path / "sigmoid_loss.o", arch)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_nvcc_compiles_sigmoid_loss_cuh_standalone(tmp_path):
    src = tmp_path / "standalone_sl.cu"
    src.write_text(
        '#include "medkernels/cuda/sigmoid_loss.cuh"\n'
        "template cudaError_t medkernels::cuda::launch_sigmoid_loss_fwd<medkernels::bfloat16_t>("
        "const medkernels::SigmoidLossParams&, cudaStream_t);\n"
        "template cudaError_t medkernels::cuda::launch_sigmoid_loss_bwd<float>("
        "const medkernels::SigmoidLossBwdParams&, cudaStream_t);\n"
    )
    _nvcc(src, tmp_path / "standalone_sl.o", "sm_80")


@pytest.fixture(scope="module")
def sl_emulator(tmp_path_factory):
    return emulate.build("sigmoid_loss", tmp_path_factory)


@dataclass(frozen=True)
class SLCase:
    dtype: torch.dtype
    n: int
    m: int
    d: int
    positives: str = "diag"  # diag | labels | mask
    symmetric: bool = False
    layout: str = "rows"  # rows | strided (x[:, ::2]) | transposed (y stored (d, m)) | padded (rows of 16n bytes)
    grad_layout: str = "rows"  # rows | transposed
    diag_offset: int = 0  # positives i - j == diag_offset (the distributed loss's off-diagonal blocks)

    @property
    def id(self) -> str:
        v = "med3dvlm" if self.symmetric else "siglip"
        g = "" if self.grad_layout == "rows" else "-gradT"
        off = f"-off{self.diag_offset}" if self.diag_offset else ""
        return f"{_DT[self.dtype]}-{self.n}x{self.m}x{self.d}-{self.positives}{off}-{v}-{self.layout}{g}"


SL_CASES = [
    SLCase(torch.bfloat16, 70, 70, 40),
    SLCase(torch.float16, 1, 1, 1),
    SLCase(torch.float16, 65, 130, 33, "labels"),
    SLCase(torch.bfloat16, 40, 70, 300, "labels", layout="transposed"),  # two d chunks in the backward
    SLCase(torch.bfloat16, 67, 67, 150, "mask", symmetric=True, layout="strided"),
    SLCase(torch.bfloat16, 64, 64, 16, "labels", symmetric=True, grad_layout="transposed"),
    SLCase(torch.float32, 3, 3, 5, symmetric=True),
    SLCase(torch.float32, 50, 66, 21, "labels", layout="padded"),  # 16-byte staging with a partial vector
    SLCase(torch.float16, 70, 70, 37, "diag", symmetric=True, layout="padded"),
    SLCase(torch.float32, 70, 45, 17, "mask", layout="transposed", grad_layout="transposed"),
    SLCase(torch.float32, 129, 129, 70, "diag"),
    SLCase(torch.bfloat16, 50, 130, 24, "diag", diag_offset=-70),
    SLCase(torch.float32, 100, 30, 12, "diag", diag_offset=75),
    SLCase(torch.float64, 37, 37, 127, "labels"),
    SLCase(torch.float64, 40, 40, 9, "mask", symmetric=True),
]
if _environment.EXTENDED_TESTS:
    SL_CASES += [SLCase(torch.bfloat16, 300, 260, 257, "labels"), SLCase(torch.float16, 200, 200, 300, "diag", True),
                 SLCase(torch.float32, 260, 260, 200, "mask", True, "strided")]

_POS_CODE = {"diag": 0, "labels": 1, "mask": 2}


def _sl_inputs(case: SLCase):
    g = torch.Generator().manual_seed(case.n * 1000 + case.d)
    x = (torch.randn(case.n, case.d, generator=g, dtype=torch.float64) / math.sqrt(case.d)).to(case.dtype)
    y = (torch.randn(case.m, case.d, generator=g, dtype=torch.float64) / math.sqrt(case.d)).to(case.dtype)
    if case.layout == "strided":
        x = torch.zeros(case.n, 2 * case.d, dtype=case.dtype)[:, ::2].copy_(x)
    elif case.layout == "transposed":
        y = y.t().contiguous().t()
    elif case.layout == "padded":
        pad = (case.d + 7) // 8 * 8 + 8
        # NaN beyond d: a vector copy past the last column would poison the result
        x = torch.full((case.n, pad), float("nan"), dtype=case.dtype)[:, :case.d].copy_(x)
        y = torch.full((case.m, pad), float("nan"), dtype=case.dtype)[:, :case.d].copy_(y)
    kw = {}
    if case.positives == "labels":
        kw["labels"] = torch.randint(0, 5, (case.n,), generator=g)
        kw["labels_y"] = torch.randint(0, 5, (case.m,), generator=g)
    elif case.positives == "mask":
        kw["positive_mask"] = torch.rand(case.n, case.m, generator=g) < 0.2
    return x, y, kw


def _sl_emulate(exe: Path, d: Path, case: SLCase, x, y, kw, t: float, b: float, c: float, mode: int):
    gx = torch.empty(case.d, case.n).t() if case.grad_layout == "transposed" else torch.empty(case.n, case.d)
    gy = torch.empty(case.d, case.m).t() if case.grad_layout == "transposed" else torch.empty(case.m, case.d)
    mask = kw.get("positive_mask")
    ms = mask.stride() if mask is not None else (0, 0)
    vals = [_DTYPE_CODE[case.dtype], case.n, case.m, case.d, *x.stride(), *y.stride(), math.exp(t), float(b),
            case.symmetric, _POS_CODE[case.positives], case.diag_offset, *ms, float(c), *gx.stride(), *gy.stride(),
            mode]
    _write(d / "x.bin", x)
    _write(d / "y.bin", y)
    if case.positives == "labels":
        _write(d / "labels_x.bin", kw["labels"])
        _write(d / "labels_y.bin", kw["labels_y"])
    elif mask is not None:
        _write(d / "mask.bin", mask.view(torch.uint8))
    return emulate.run(exe, d, vals), gx.stride(), gy.stride()


@pytest.mark.parametrize("case", SL_CASES, ids=lambda c: c.id)
def test_emulated_cuda_sigmoid_loss_matches_reference(sl_emulator, tmp_path, case: SLCase):
    from medkernels.reference.sigmoid_loss import sigmoid_loss_ref

    x, y, kw = _sl_inputs(case)
    t, b, c = 1.3, -2.5, 0.37
    x64, y64 = x.double(), y.double()
    variant = "med3dvlm" if case.symmetric else "siglip"
    # the kernels compute in fp32 (fp64) from the rounded inputs: the oracle is the float64
    # reference of those inputs, to fp32 accuracy for the loss and the scalar gradients
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32

    lines, _, _ = _sl_emulate(sl_emulator, tmp_path, case, x, y, kw, t, b, c, mode=0)
    mma = int(case.dtype in (torch.float16, torch.bfloat16))
    # rows whose pitch is a multiple of 16 bytes (and unit column stride) are staged 16 bytes at a time
    vec = "".join(str(int(t.stride(1) == 1 and t.stride(0) * t.element_size() % 16 == 0)) for t in (x, y))
    assert lines[0].startswith("fwd grid=") and lines[0].endswith(f"vec={vec} sym={int(case.symmetric)} mma={mma}"), \
        lines
    assert lines[-1].startswith("finish"), lines
    loss = torch.frombuffer(bytearray((tmp_path / "loss.bin").read_bytes()), dtype=torch.float64)[0]
    t64, b64 = torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    kw = dict(kw, diag_offset=case.diag_offset) if case.diag_offset else kw
    ref = sigmoid_loss_ref(x64, y64, t64, b64, reduction="sum", variant=variant, **kw)
    assert_close("loss", loss.reshape(()), ref, dtype=acc)

    lines, gxs, gys = _sl_emulate(sl_emulator, tmp_path, case, x, y, kw, t, b, c, mode=1)
    assert sum(ln.startswith("bwd grid=") for ln in lines) == (1 if case.symmetric else 2), lines
    leaves = [v.clone().requires_grad_() for v in (x64, y64, t64, b64)]
    out = sigmoid_loss_ref(*leaves, reduction="sum", variant=variant, **kw) * c
    gref = torch.autograd.grad(out, leaves)
    gx = _read(tmp_path / "gx.bin", case.dtype, (case.n, case.d), gxs)
    gy = _read(tmp_path / "gy.bin", case.dtype, (case.m, case.d), gys)
    sums = torch.frombuffer(bytearray((tmp_path / "sums.bin").read_bytes()), dtype=torch.float64)
    assert_close("grad_x", gx, gref[0])
    assert_close("grad_y", gy, gref[1])
    assert_close("grad_t_prime", sums[0].reshape(()), gref[2], dtype=acc)
    assert_close("grad_bias", sums[1].reshape(()), gref[3], dtype=acc)
