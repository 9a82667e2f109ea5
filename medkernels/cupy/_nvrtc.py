"""The NVRTC side of medkernels.cupy shared by every family: the headers, the prelude that stands in
for the C++ standard library, ``source()`` and the compiled ``cupy.RawModule`` per family. Each family
module registers its extern "C" wrappers with ``register()``."""

from __future__ import annotations

import functools
import re
from pathlib import Path

# The headers: the source tree's csrc/include, or the copy setup.py installs into the package.
_HERE = Path(__file__).resolve().parents[1]
def include_dir() -> Path:
    for d in (_HERE.parent / "csrc" / "include", _HERE / "include"):
        if (d / "medkernels" / "common.h").exists():
            return d
    raise FileNotFoundError(f"medkernels headers not found next to {_HERE} (csrc/include or medkernels/include)")


# NVRTC has no C++ standard library: the few names our headers use on the device side come from
# this prelude; the host-only error paths (std::string messages) get inert stand-ins.
_PRELUDE = r"""
#if defined(__CUDACC_RTC__) || defined(MK_NVRTC_PRELUDE_TEST)
// the LP64 types glibc gives these names (a repeated identical typedef is legal C++)
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef unsigned long uintptr_t;
typedef decltype(sizeof(0)) size_t;
namespace std {
using ::int64_t; using ::uint64_t; using ::int32_t; using ::uint32_t; using ::uint16_t; using ::uint8_t;
using ::size_t; using ::uintptr_t;
struct string {
  string() {}
  string(const char*) {}
  const char* c_str() const { return ""; }
};
inline string operator+(const string&, const string&) { return string(); }
inline string operator+(const char*, const string&) { return string(); }
inline string operator+(const string&, const char*) { return string(); }
template <typename T> inline string to_string(T) { return string(); }
// the host executor's shared-memory poison (detail/exec.h); never called on the device
inline void* memset(void* p, int v, size_t n) {
  unsigned char* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(v);
  return p;
}
}  // namespace std
#else
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#endif
"""

_STD_HEADERS = {"cmath", "cstddef", "cstdint", "cstring", "string"}
_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def _expand(rel: str, root: Path, seen: set) -> str:
    """The header with its medkernels/* includes inlined once each (#pragma once) and the C++
    standard headers dropped (the prelude supplies them)."""
    if rel in seen:
        return ""
    seen.add(rel)
    out = [f"// ---- {rel}"]
    for line in (root / rel).read_text().splitlines():
        m = _INCLUDE.match(line)
        if m and m.group(1) == '"' and m.group(2).startswith("medkernels/"):
            out.append(_expand(m.group(2), root, seen))
        elif m and m.group(1) == "<" and m.group(2) in _STD_HEADERS:
            continue
        elif line.strip() == "#pragma once":
            continue
        else:
            out.append(line)
    return "\n".join(out)


# One extern "C" kernel per op and storage type: name -> (C type, medkernels storage type).
_DTYPES = {"f32": ("float", "float"), "f64": ("double", "double"), "f16": ("medkernels::half_t", "half_t")}


# family -> (the header with its per-thread bodies, the extern "C" wrappers, the wrapper macro)
_FAMILIES: dict = {}
# family -> the extern "C" kernel names its source defines
KERNELS: dict = {}


def register(family: str, header: str, wrappers: str, macro: str, kernels: list) -> None:
    """Adds a family: its per-thread bodies' header, the wrapper source, the macro instantiated once per dtype
    in _DTYPES, and the kernel names that instantiation defines."""
    _FAMILIES[family] = (header, wrappers, macro)
    KERNELS[family] = list(kernels)


@functools.cache
def source(family: str = "decomp_conv") -> str:
    """The self-contained CUDA source NVRTC compiles for ``family`` (all of its kernels)."""
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {sorted(_FAMILIES)}, got {family!r}")
    header, wrappers, macro = _FAMILIES[family]
    body = _expand(header, include_dir(), set())
    inst = "\n".join(f"{macro}({s}, {c})" for s, (c, _) in _DTYPES.items())
    return f"// medkernels.cupy: NVRTC source for {family}\n{_PRELUDE}\n{body}\n{wrappers}\n{inst}\n"


@functools.cache
def _module(family: str):
    import cupy

    return cupy.RawModule(code=source(family), options=("--std=c++17",))


def _elem_strides(a) -> list:
    return [s // a.itemsize for s in a.strides]

