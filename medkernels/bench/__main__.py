"""``python -m medkernels.bench``: every family's suite on the device present.

    python -m medkernels.bench                 # default cases (minutes on a 2-core CPU)
    python -m medkernels.bench --full          # the large shapes too
    python -m medkernels.bench --only decomp_conv --compare old.json
    python -m medkernels.bench --plot benchmarks/results/cpu-default.json   # the chart of a past run

The chart needs matplotlib (the bench extra: pip install -e ".[bench]"); without it the suite
still writes the table and the JSON and says how to draw the chart later.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from . import harness

REPO = Path(__file__).resolve().parents[2]


def _suites(only):
    bench_dir = REPO / "benchmarks"
    if not bench_dir.is_dir():
        raise SystemExit(f"benchmark suites not found under {bench_dir}: run from a source checkout")
    for path in sorted(bench_dir.glob("bench_*.py")):
        fam = path.stem[len("bench_"):]
        if only and fam not in only:
            continue
        spec = importlib.util.spec_from_file_location(f"medkernels_bench_{fam}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if hasattr(mod, "cases"):
            yield fam, mod


def _plot(json_path: Path) -> int:
    if not json_path.is_file():
        print(f"error: --plot: no such results file: {json_path}", file=sys.stderr)
        return 2
    png = harness.plot_results(json_path, json_path.with_suffix(".png"))
    print(f"chart: {png}" if png else harness.chart_hint(json_path))
    return 0 if png else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medkernels.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="run the large shapes too")
    ap.add_argument("--only", nargs="*", default=None, help="families to run (e.g. decomp_conv)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for JSON and PNG")
    ap.add_argument("--tag", default=None, help="file name stem (default: device and mode)")
    ap.add_argument("--compare", default=None, help="a previous JSON: mark regressions")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--plot", default=None, metavar="JSON", help="only draw the PNG chart of a results JSON")
    args = ap.parse_args(argv)
    if args.plot:
        return _plot(Path(args.plot))

    from tqdm import tqdm

    import medkernels  # noqa: F401  (sets the Triton interpreter up before kernels load)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        print("No GPU: Triton runs in the interpreter here, a correctness path, so it is left out of the timings.")
    roof = harness.measure_roofline(device)
    print(f"device: {roof.device}; measured copy bandwidth {roof.bandwidth_gbs:.1f} GB/s, "
          f"{roof.details.get('flops_dtype')} {roof.gflops:.1f} GFLOP/s")
    cases = []
    for _fam, mod in _suites(args.only):
        cases.extend(mod.cases(device, args.full))
    with tqdm(total=len(cases), desc="benchmarks", file=sys.stderr) as bar:
        rows = harness.run_cases(cases, device, roof, progress=bar, repeats=args.repeats)
    print(harness.format_table(rows))
    tag = args.tag or f"{device.type}-{'full' if args.full else 'default'}"
    path = harness.write_results(rows, roof, Path(args.out), tag)
    png = harness.plot_results(path, path.with_suffix(".png"))
    print(f"results: {path}" + (f", chart: {png}" if png else ""))
    if not png:
        print(harness.chart_hint(path))
    failures = [r for r in rows if r.get("failure")]
    if args.compare:
        for line in harness.compare(rows, Path(args.compare)):
            print(line)
    if failures:
        print(f"{len(failures)} provider runs failed (see the table)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
