"""``python -m medkernels.info``: what was built, and each op's backends here with the reasons.

    python -m medkernels.info              # build info and the backend table
    python -m medkernels.info --cmake-dir  # where medkernelsConfig.cmake lives (vendoring)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import medkernels
from medkernels import _environment


def cmake_dir() -> Path:
    """The folder holding ``medkernelsConfig.cmake`` inside the installed package."""
    return Path(medkernels.__file__).resolve().parent / "lib" / "cmake" / "medkernels"


def report() -> str:
    lines = [f"medkernels {medkernels.__version__}  torch {torch.__version__}"]
    try:
        import triton

        lines.append(f"triton {triton.__version__} ({'interpreter' if _environment.TRITON_INTERPRETED else 'GPU'})")
    except ImportError as exc:
        lines.append(f"triton: not importable ({exc})")
    lines.append("build: " + json.dumps(medkernels.build_info()))
    from ._dispatch import cpu_vector_isa

    if medkernels._extension.unavailable_reason is None:
        lines.append(f"CPU kernels' vector ISA on this machine: {cpu_vector_isa()}")
    lines.append(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible to torch'}")
    for op, table in medkernels.backends().items():
        lines.append(f"\n{op}:")
        for name, why in table.items():
            lines.append(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medkernels.info", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cmake-dir", action="store_true", help="print the CMake package folder and exit")
    args = ap.parse_args(argv)
    if args.cmake_dir:
        d = cmake_dir()
        if not (d / "medkernelsConfig.cmake").exists():
            print(f"{d} (not present: this install did not ship the CMake package)")
            return 1
        print(d)
        return 0
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
