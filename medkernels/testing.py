"""Helpers shared by the tests and benchmarks: tolerances per dtype, errors judged against the
reference's own low-precision error, poisoned outputs, readable failure reports."""

from __future__ import annotations

from typing import Optional

import torch

# Relative-error tolerances (of the max-norm of the difference over the max-norm of the oracle).
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Floor added to "2 x the reference's own low-precision error" (flash-attention's rule).
LOWP_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    a = actual.detach().double()
    e = expected.detach().double()
    den = e.abs().max().item()
    num = (a - e).abs().max().item()
    return num / den if den > 0 else num


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so a kernel that skips an element cannot pass."""
    return t.fill_(float("nan"))


def _report(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float, err: float) -> str:
    a, e = actual.detach().double(), expected.detach().double()
    diff = (a - e).abs()
    bad = diff > tol * e.abs().max().clamp_min(1e-30)
    n_bad = int(bad.sum())
    flat = diff.flatten()
    worst = torch.topk(flat.nan_to_num(float("inf")), min(5, flat.numel())).indices
    rows = []
    for i in worst.tolist():
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), a.shape))
        rows.append(f"    at {idx}: got {a[idx].item():.6g}, expected {e[idx].item():.6g}")
    return (
        f"{name}: relative error {err:.3e} > tolerance {tol:.3e}; {n_bad} of {a.numel()} elements differ "
        f"(shape {tuple(a.shape)}); worst:\n" + "\n".join(rows)
    )


def assert_close(
    name: str,
    actual: torch.Tensor,
    expected64: torch.Tensor,
    lowp_reference: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
) -> None:
    """Assert ``actual`` matches the float64 oracle ``expected64``.

    fp32/fp64: relative error under ``RTOL[dtype]``. fp16/bf16 with ``lowp_reference`` (the
    reference run in the same low precision): our error at most 2x the reference's own error
    plus ``LOWP_FLOOR``; without it, ``RTOL[dtype]``.
    """
    dtype = dtype or actual.dtype
    if actual.shape != expected64.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected64.shape)}")
    if not torch.isfinite(actual).all():
        n = int((~torch.isfinite(actual)).sum())
        raise AssertionError(f"{name}: {n} of {actual.numel()} elements are not finite (poisoned output left?)")
    if not torch.isfinite(expected64).all():
        n = int((~torch.isfinite(expected64)).sum())
        raise AssertionError(f"{name}: the float64 oracle has {n} of {expected64.numel()} non-finite elements; "
                             "a non-finite reference is a test failure, not a NaN tolerance")
    err = rel_err(actual, expected64)
    if lowp_reference is not None and dtype in (torch.float16, torch.bfloat16):
        if lowp_reference.shape != expected64.shape or not torch.isfinite(lowp_reference).all():
            n = int((~torch.isfinite(lowp_reference)).sum())
            raise AssertionError(
                f"{name}: the {dtype} reference (lowp_reference, shape {tuple(lowp_reference.shape)}) must be finite "
                f"and shaped like the oracle {tuple(expected64.shape)}, got {n} non-finite elements; the rule "
                f"'2 x the reference's own error' needs a finite reference (did it overflow in {dtype}?)"
            )
        tol = 2 * rel_err(lowp_reference, expected64) + LOWP_FLOOR[dtype]
    else:
        tol = RTOL[dtype]
    if not err <= tol:
        raise AssertionError(_report(name, actual, expected64, tol, err))
