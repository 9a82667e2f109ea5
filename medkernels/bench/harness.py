"""Benchmark runner: one contract for every family.

A suite yields :class:`Case` objects; :func:`run_cases` times every provider of each case in
the same run, so each ratio compares numbers measured side by side.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Case:
    """One benchmarked op at one shape and dtype.

    ``providers`` maps a name (our backends, ``reference``, ``torch.compile``, peers) to a
    zero-argument callable running the op once. ``bytes``/``flops``: the minimum the op must
    move / compute, for GB/s, TFLOP/s and % of roofline. ``check`` returns provider -> max
    relative error against the float64 reference.
    """

    op: str
    shape: str
    dtype: torch.dtype
    providers: Dict[str, Callable[[], object]]
    baseline: str = "reference"
    bytes: Optional[int] = None
    flops: Optional[int] = None
    check: Optional[Callable[[], Dict[str, float]]] = None
    note: str = ""


@dataclass
class Roofline:
    """The device's measured limits: copy bandwidth (GB/s) and FMA rate (GFLOP/s) in fp32."""

    device: str
    bandwidth_gbs: float
    gflops: float
    details: Dict[str, str] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 7,
            min_time_s: float = 0.0) -> List[float]:
    """Milliseconds per call: ``warmup`` calls, then ``repeats`` timed calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all < min_time_s and len(times) < 100):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated while ``fn`` runs (GPU: torch's allocator; CPU: resident-set growth is
    too coarse, so CPU peaks come from torch's profiler memory records)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # replay the allocation events in order to find the high-water mark
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)), key=lambda e: e.time_range.start
    )
    cur = peak = 0
    for e in events:
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    return peak


def measure_roofline(device: torch.device) -> Roofline:
    """Measure copy bandwidth and fp32 matmul rate on ``device`` (a few seconds)."""
    if device.type == "cuda":
        n = 256 * 1024 * 1024 // 4
        a = torch.empty(n, device=device)
        b = torch.empty_like(a)
        ms = statistics.median(time_fn(lambda: b.copy_(a), device, repeats=20))
        bw = 2 * a.numel() * 4 / ms / 1e6
        m = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        ms_mm = statistics.median(time_fn(lambda: m @ m, device, repeats=10))
        gf = 2 * 8192**3 / ms_mm / 1e6
        name = torch.cuda.get_device_name(device)
        return Roofline(name, bw, gf, {"flops_dtype": "bf16 tensor-core matmul"})
    n = 64 * 1024 * 1024 // 4  # 64 MiB: out of cache
    a = torch.randn(n)
    b = torch.empty_like(a)
    ms = statistics.median(time_fn(lambda: b.copy_(a), device, repeats=7))
    bw = 2 * a.numel() * 4 / ms / 1e6
    # the best of several 2048^2 products: smaller or median-timed ones under-read the peak (MKL
    # ramps up), and the roofline is a ceiling
    m = torch.randn(2048, 2048)
    ms_mm = min(time_fn(lambda: m @ m, device, warmup=3, repeats=7))
    gf = 2 * 2048**3 / ms_mm / 1e6
    cpu = platform.processor() or platform.machine()
    return Roofline(f"cpu ({torch.get_num_threads()} threads, {cpu})", bw, gf, {"flops_dtype": "fp32 sgemm"})


def _versions() -> Dict[str, str]:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = "unknown"
    return out


def run_cases(cases, device: torch.device, roofline: Roofline, progress=None, repeats: int = 7) -> List[dict]:
    """Time every provider of every case; return one row per (case, provider)."""
    rows = []
    for case in cases:
        errors = {}
        if case.check is not None:
            try:
                errors = case.check()
            except Exception as exc:  # a failing check is reported, not hidden
                errors = {"error": f"{type(exc).__name__}: {exc}"}
        timings = {}
        for name, fn in case.providers.items():
            try:
                t = time_fn(fn, device, repeats=repeats, min_time_s=0.2)
                timings[name] = (statistics.median(t), (max(t) - min(t)) / 2, None)
            except Exception as exc:
                timings[name] = (float("nan"), float("nan"), f"{type(exc).__name__}: {str(exc)[:200]}")
        base = timings.get(case.baseline, (float("nan"),))[0]
        for name, (ms, spread, failure) in timings.items():
            peak = None
            if failure is None:
                try:
                    peak = _peak_memory(case.providers[name], device)
                except Exception:
                    peak = None
            gbs = case.bytes / ms / 1e6 if case.bytes and ms == ms else None
            tflops = case.flops / ms / 1e9 if case.flops and ms == ms else None
            pct_bw = 100 * gbs / roofline.bandwidth_gbs if gbs else None
            pct_fl = 100 * tflops * 1e3 / roofline.gflops if tflops else None
            rows.append({
                "op": case.op, "shape": case.shape, "dtype": str(case.dtype).replace("torch.", ""),
                "provider": name, "ms": ms, "spread_ms": spread, "speedup": base / ms if ms == ms else None,
                "gbs": gbs, "tflops": tflops, "pct_bandwidth": pct_bw, "pct_flops": pct_fl,
                "pct_roofline": max(p for p in (pct_bw, pct_fl, 0.0) if p is not None) or None,
                "peak_mem_mb": peak / 2**20 if peak is not None else None,
                "max_rel_err": errors.get(name), "failure": failure or errors.get("error"), "note": case.note,
            })
        if progress is not None:
            progress.update(1)
    return rows


def format_table(rows: List[dict]) -> str:
    cols = [("op", "op", "{}"), ("shape", "shape", "{}"), ("dtype", "dtype", "{}"), ("provider", "backend", "{}"),
            ("ms", "ms", "{:.3f}"), ("speedup", "x ref", "{:.2f}"), ("gbs", "GB/s", "{:.1f}"),
            ("tflops", "TFLOP/s", "{:.3f}"), ("pct_roofline", "% roof", "{:.1f}"),
            ("peak_mem_mb", "peak MB", "{:.1f}"), ("max_rel_err", "max err", "{:.1e}")]
    table = [[h for _, h, _ in cols]]
    for r in rows:
        line = []
        for key, _, fmt in cols:
            v = r.get(key)
            line.append("-" if v is None or (isinstance(v, float) and v != v) else fmt.format(v))
        if r.get("failure"):
            line[-1] = "FAILED: " + r["failure"][:60]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    out = []
    for i, row in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_results(rows: List[dict], roofline: Roofline, out_dir: Path, tag: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{tag}.json"
    payload = {"device": roofline.device, "roofline": roofline.__dict__, "versions": _versions(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "rows": rows}
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def plot_results(json_path: Path, png_path: Path) -> Optional[Path]:
    """Speed-up over the reference per case and provider, drawn from the JSON file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = json.loads(Path(json_path).read_text())
    rows = [r for r in data["rows"] if r["provider"] != "reference" and r.get("speedup")]
    if not rows:
        return None
    labels = [f"{r['op']} {r['shape']} {r['dtype']} [{r['provider']}]" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.5))
    ax.barh(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the eager reference (same run)")
    ax.set_title(f"medkernels on {data['device']}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


CHART_INSTALL = 'pip install matplotlib (it is in the bench extra: pip install -e ".[bench]")'


def chart_hint(json_path: Path) -> str:
    """Why :func:`plot_results` drew no chart for ``json_path``, and how to get one."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (f"no chart: matplotlib is not installed. To draw it from these results: {CHART_INSTALL}, "
                f"then python -m medkernels.bench --plot {json_path}")
    return "no chart: no case has a speed-up over the reference to draw"


def compare(rows: List[dict], old_json: Path, threshold: float = 0.9) -> List[str]:
    """Lines naming every (op, shape, dtype, provider) now slower than ``threshold`` x before."""
    old_rows = json.loads(Path(old_json).read_text())["rows"]
    old = {(r["op"], r["shape"], r["dtype"], r["provider"]): r["ms"] for r in old_rows}
    out = []
    for r in rows:
        key = (r["op"], r["shape"], r["dtype"], r["provider"])
        if key in old and old[key] and r["ms"] == r["ms"] and old[key] / r["ms"] < threshold:
            out.append(f"REGRESSION {' '.join(key)}: {old[key]:.3f} ms -> {r['ms']:.3f} ms")
    return out
