"""The benchmark harness behind ``python -m medkernels.bench``.

Each suite is a file ``benchmarks/bench_<family>.py`` with ``cases(device, full)`` yielding
:class:`Case` objects. The runner times every provider of a case in one run (warm-up, median
of repeats, CUDA events on GPU), records peak memory, GB/s or TFLOP/s and % of the device's
measured roofline, and writes a table, JSON and a PNG chart.
"""

from .harness import Case, Roofline, measure_roofline, run_cases, time_fn

__all__ = ["Case", "Roofline", "measure_roofline", "run_cases", "time_fn"]
