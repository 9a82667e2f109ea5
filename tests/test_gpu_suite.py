"""benchmarks/gpu_suite.sh: the GPU job's phases and time limits, checked on CPU with --dry-run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.sh"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash script")


def _dry_run(tmp_path, *args):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_phases_in_order_with_limits_inside_nine_minutes(tmp_path):
    out = _dry_run(tmp_path)
    planned = re.findall(r"^phase (\S+): limit (\d+)s: (.*)$", out, re.M)
    assert [p[0] for p in planned] == ["build", "info", "gpu-tests", "bench", "bench-full", "tests"]
    commands = {name: cmd for name, _, cmd in planned}
    # only what the device needs, with every core
    assert "MEDKERNELS_CUDA_ARCHS=90a" in commands["build"] and "MEDKERNELS_BUILD_JOBS=" in commands["build"]
    assert "--no-build-isolation --no-deps" in commands["build"]
    assert "-m gpu" in commands["gpu-tests"]
    assert "--full" not in commands["bench"] and "--full" in commands["bench-full"]
    # each phase is bounded by its own limit and by what is left of the 510 s budget
    assert "done in" in out and "of 510s" in out
    assert all(int(limit) <= 510 for _, limit, _ in planned)
    # every phase streamed a file into $OUT, and the summary is there too
    for name, _, _ in planned:
        assert (tmp_path / f"dry-run-{name}.txt").exists()
    assert "phase tests" in (tmp_path / "dry-run-phases.txt").read_text()


def test_a_small_budget_skips_late_phases_instead_of_overrunning(tmp_path):
    out = _dry_run(tmp_path, "--budget", "5")
    assert re.search(r"^phase build: skipped", out, re.M) and "phase tests: skipped" in out


def test_conftest_marks_gpu_tests():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "gpu",
                           str(Path(__file__).parent / "test_decomp_conv.py")],
                          capture_output=True, text=True, timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids and all("triton" in i or "cuda" in i or "gpu" in i.lower() for i in ids), proc.stdout[-2000:]
