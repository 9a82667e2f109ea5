#!/usr/bin/env bash
# The whole GPU job in one call (for the device tool's machine: no network, its own torch and
# triton): build and install without touching its packages, run the tests (the GPU-only ones
# included), run every benchmark suite, and leave the results under benchmarks/results/
# (and $OUT when the device tool provides one).
set -uo pipefail
cd "$(dirname "$0")/.."
name=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))" 2>/dev/null || echo unknown-gpu)
pip install --no-build-isolation --no-deps -e . > build.log 2>&1 || { tail -50 build.log; exit 1; }
python -m medkernels.info | tee "benchmarks/results/${name}-info.txt"
python -m pytest -q --maxfail=25 --durations=15 2>&1 | tee "benchmarks/results/${name}-tests.txt"
python -m medkernels.bench --tag "${name}-default" "$@" 2>&1 | tee "benchmarks/results/${name}-bench.txt"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/"${name}"* "$OUT"/; fi
