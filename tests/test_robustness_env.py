"""Regression tests for issue 16's environment, distributed and validation items: Triton imported
before medkernels, ranks that disagree in the distributed sigmoid loss, argument checks in the
modules, the low-precision tolerance rule, and the compiled build being loaded when expected."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import medkernels
from medkernels import _environment

ROOT = Path(__file__).resolve().parents[1]

# --- 4: Triton imported before medkernels (open_clip, timm and diffusers do) -------------------
_TRITON_ORDER_SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[1] == "triton_first":
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    import torch
    import medkernels
    from medkernels.ops import decomp_conv3d, sigmoid_loss, window_attention3d
    assert medkernels.backends()["sigmoid_loss"]["triton"] is None, medkernels.backends()["sigmoid_loss"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tp, b = torch.tensor(1.0), torch.tensor(-2.0)
    want = sigmoid_loss(x, y, tp, b, backend="reference")
    got = sigmoid_loss(x, y, tp, b, backend="triton")
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item()), (got, want)
    q = torch.randn(1, 3, 3, 3, 1, 4, generator=g)
    want = window_attention3d(q, q, q, 2, shift=1, backend="reference")
    got = window_attention3d(q, q, q, 2, shift=1, backend="triton")
    assert (got - want).abs().max().item() <= 1e-5, (got - want).abs().max()
    x = torch.randn(1, 2, 3, 4, 5, generator=g)
    w = [torch.randn(2, 1, 3, generator=g) for _ in range(3)]
    want = decomp_conv3d(x, *w, groups=2, activation="silu", backend="reference")
    got = decomp_conv3d(x, *w, groups=2, activation="silu", backend="triton")
    assert (got - want).abs().max().item() <= 1e-5, (got - want).abs().max()
    from medkernels.ops import group_norm_act
    x = torch.randn(2, 4, 3, 5, generator=g)
    want = group_norm_act(x, 2, activation="silu", backend="reference")
    got = group_norm_act(x, 2, activation="silu", backend="triton")
    assert (got - want).abs().max().item() <= 1e-5, (got - want).abs().max()
    print("ok")
""")


@pytest.mark.skipif(not _environment.TRITON_INTERPRETED, reason="checks the interpreter (no GPU) path")
@pytest.mark.parametrize("order", ["triton_first", "medkernels_first"])
def test_triton_ops_work_whatever_the_import_order(order):
    pytest.importorskip("triton")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-c", _TRITON_ORDER_SCRIPT, order], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


# --- 5: distributed ranks that disagree on d, dtype or labels -----------------------------------
@pytest.mark.parametrize("exchange", ["ring", "all_gather"])
@pytest.mark.parametrize("what,message", [("d", r"same d \(the embedding width\), got rank 0: 8, rank 1: 12"),
                                          ("dtype", r"same dtype, got rank 0: torch.float64, rank 1: torch.float32"),
                                          ("labels", r"same labels, got rank 0: None, rank 1: given")])
def test_distributed_ranks_that_disagree_raise_on_every_rank(what, message, exchange):
    import re

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from medkernels.distributed._launch import mismatch_worker, run_gloo

    per_rank = run_gloo(2, mismatch_worker, what, exchange, timeout=120)
    for rank, got in enumerate(per_rank):
        assert re.search(message, got), f"rank {rank}: {got}"


# --- argument checks in the modules --------------------------------------------------------------
def test_decomp_conv_module_groups_must_be_positive():
    from medkernels.nn import DecompConv3d

    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"groups must be a positive int, got"):
            DecompConv3d(4, 4, 3, groups=bad)


def test_window_attention_module_num_heads_must_be_positive():
    from medkernels.nn import WindowAttention3d

    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match=r"num_heads must be a positive int, got"):
            WindowAttention3d(8, bad, 2)


def test_med3dvlm_encode_images_names_input_size():
    from medkernels.models import Med3DVLM

    vlm = Med3DVLM("nano", input_size=(64, 64, 64), llm_dim=16).eval()
    want = r"images must be \(B, C, 64, 64, 64\) \(the input_size .*got \(1, 1, 64, 64, 128\)"
    with pytest.raises(ValueError, match=want):
        vlm.encode_images(torch.randn(1, 1, 64, 64, 128))


# --- medkernels.testing: the low-precision rule needs a finite reference ---------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_assert_close_rejects_a_non_finite_low_precision_reference(bad):
    from medkernels.testing import assert_close

    expected = torch.linspace(-1, 1, 65, dtype=torch.float64)
    actual = expected.to(torch.bfloat16)
    assert_close("x", actual, expected, lowp_reference=actual.clone())  # the finite case passes
    lowp = actual.clone()
    lowp[3] = bad
    with pytest.raises(AssertionError, match=r"lowp_reference.*must be finite.*1 non-finite"):
        assert_close("x", actual, expected, lowp_reference=lowp)
    oracle = expected.clone()
    oracle[0] = bad
    with pytest.raises(AssertionError, match="the float64 oracle has 1 of 65 non-finite"):
        assert_close("x", actual, oracle)


# --- the compiled build is loaded when one is expected ------------------------------------------
def _built_here() -> list:
    return sorted(p.name for p in (ROOT / "medkernels").glob("_C*.so")) + sorted(
        p.name for p in (ROOT / "medkernels").glob("_C*.pyd"))


def test_compiled_extension_loaded_when_expected():
    """With MEDKERNELS_EXPECT_COMPILED=1 (set by .ci/run) or a built ``_C`` in the source tree,
    ``_C`` must load and give every family its cpu backend; otherwise the compiled backends
    would drop out of the capability-generated tests without a word."""
    from medkernels._extension import extension

    built = _built_here()
    if not (_environment.EXPECT_COMPILED or built):
        pytest.skip("no compiled build expected (MEDKERNELS_EXPECT_COMPILED unset, no medkernels/_C*.so)")
    why = "MEDKERNELS_EXPECT_COMPILED=1" if _environment.EXPECT_COMPILED else f"built {built}"
    assert extension.unavailable_reason is None, f"{why}, but {extension.unavailable_reason}"
    missing = {op: reasons["cpu"] for op, reasons in medkernels.backends().items() if reasons.get("cpu")}
    assert not missing, f"{why}, but the compiled cpu backend is unavailable for {missing}"
