"""Build medkernels: setuptools drives CMake for the C++/CUDA kernels and the pybind11 glue.

Build-time environment (read here, at build time only):
  MEDKERNELS_CUDA        auto (default: CUDA when nvcc is found) | 1 (require) | 0 (CPU only)
  MEDKERNELS_CUDA_ARCHS  semicolon list, default "80;90;90a"
  MEDKERNELS_BUILD_JOBS  parallel compile jobs, default: the CPU count
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("medkernels needs CMake >= 3.18 to build (apt-get install cmake, or pip install cmake)")
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A persistent build folder in the source tree keeps rebuilds incremental.
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("MEDKERNELS_CUDA", "auto").lower()
        cuda = {"1": "ON", "on": "ON", "0": "OFF", "off": "OFF"}.get(cuda, "AUTO")
        args = [
            f"-DMK_OUTPUT_DIR={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DMEDKERNELS_CUDA={cuda}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if "MEDKERNELS_CUDA_ARCHS" in os.environ:
            args.append(f"-DMEDKERNELS_CUDA_ARCHS={os.environ['MEDKERNELS_CUDA_ARCHS']}")
        if shutil.which("ninja") and not (build_dir / "Makefile").exists():
            args.append("-GNinja")
        jobs = os.environ.get("MEDKERNELS_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_C", "medkernels_capi", "-j", jobs], check=True)
        # The CMake package (headers, libmedkernels_core.a, libmedkernels_capi.so, medkernelsConfig.cmake)
        # goes into the package folder next to _C: medkernels/{include,lib}, shipped in the wheel.
        # (build_ext --inplace / editable builds into build_lib, then copies only _C: install there too.)
        prefixes = {out_dir}
        if getattr(self, "_mk_inplace", False):
            prefixes.add(ROOT / "medkernels")
        for prefix in sorted(prefixes):
            subprocess.run(
                [cmake, "--install", str(build_dir), "--prefix", str(prefix), "--component", "medkernels"],
                check=True,
                stdout=subprocess.DEVNULL,
            )

    def run(self):
        self._mk_inplace = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()


setup(ext_modules=[CMakeExtension("medkernels._C")], cmdclass={"build_ext": CMakeBuild})
