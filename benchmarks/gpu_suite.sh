#!/usr/bin/env bash
# The GPU job, sized for the device tool's machine (one H200, 16 cores, no network, its own torch
# and triton; at most 10 minutes a call, 15 minutes of device time in all, machine start included).
#
#   bash benchmarks/gpu_suite.sh [--dry-run] [--budget SECONDS] [extra args for medkernels.bench]
#
# Phases, each under its own time limit, each streaming its output into the results folder as it
# goes (so a run cut off by the device tool still returns what it did):
#   1. build    only what the device needs: MEDKERNELS_CUDA_ARCHS=90a, all cores
#   2. info     python -m medkernels.info
#   3. gpu-tests  the tests marked `gpu` (they need a CUDA device; tests/conftest.py marks them)
#   4. bench    the default benchmark
#   5. bench-full the extended benchmark (--full), while time remains
#   6. tests    the rest of the test suite, while time remains
# The whole job stays inside --budget seconds (default 510: 9 minutes less a margin for copying
# the results back). Results go to $OUT when the device tool provides one, else
# benchmarks/results/. --dry-run prints the plan and runs no phase (a CPU check of the phase and
# time-limit logic, tested by tests/test_gpu_suite.py).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
budget=510
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --budget) budget="$2"; shift ;;
    *) bench_args+=("$1") ;;
  esac
  shift
done

res="${OUT:-benchmarks/results}"
mkdir -p "$res"
if [ "$dry" -eq 1 ]; then
  name=dry-run
else
  name=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))" 2>/dev/null || echo unknown-gpu)
fi
jobs=$(nproc 2>/dev/null || echo 4)
start=$SECONDS
summary="$res/${name}-phases.txt"
: > "$summary"

# phase NAME LIMIT_S CMD...: run CMD with at most min(LIMIT_S, what is left of the budget)
# seconds, its output streamed to $res/<device>-NAME.txt; a phase with under 10 s left is skipped.
phase() {
  local pname="$1" limit="$2"; shift 2
  local left=$((budget - (SECONDS - start)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "phase $pname: skipped (${left}s of the ${budget}s budget left)" | tee -a "$summary"
    return 0
  fi
  local t0=$SECONDS rc
  echo "phase $pname: limit ${limit}s: $*" | tee -a "$summary"
  if [ "$dry" -eq 1 ]; then
    echo "dry run: $*" > "$res/${name}-${pname}.txt"
  else
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$res/${name}-${pname}.txt"
  fi
  rc=${PIPESTATUS[0]}
  [ "$dry" -eq 1 ] && rc=0
  local how="rc=$rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && how="cut off at its limit"
  echo "phase $pname: $((SECONDS - t0))s, $how (total $((SECONDS - start))s of ${budget}s)" | tee -a "$summary"
  return "$rc"
}

phase build 240 env MEDKERNELS_CUDA=1 MEDKERNELS_CUDA_ARCHS=90a MEDKERNELS_BUILD_JOBS="$jobs" \
  pip install --no-build-isolation --no-deps -e . || { echo "build failed: stopping" | tee -a "$summary"; exit 1; }
phase info 30 python -m medkernels.info
phase gpu-tests 120 python -m pytest -q -m gpu --maxfail=25 --durations=10
phase bench 120 python -m medkernels.bench --device cuda --out "$res" --tag "${name}-default" "${bench_args[@]}"
phase bench-full 150 python -m medkernels.bench --device cuda --full --out "$res" --tag "${name}-full" "${bench_args[@]}"
phase tests 600 python -m pytest -q -m "not gpu" --maxfail=25
echo "done in $((SECONDS - start))s of ${budget}s; results in $res" | tee -a "$summary"
exit 0
