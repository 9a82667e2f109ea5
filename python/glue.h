// Shared pybind11 helpers for the family glue files: pointers travel as integers
// (tensor.data_ptr()), fixed-size arrays as lists, and a non-success Status becomes a Python
// exception carrying last_error(). Only this directory sees Python.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "medkernels/common.h"

namespace py = pybind11;

namespace medkernels_glue {

inline void check(medkernels::Status st) {
  if (st == medkernels::Status::kSuccess) return;
  const std::string msg = medkernels::last_error();
  if (st == medkernels::Status::kInvalidArgument) throw py::value_error(msg);
  throw std::runtime_error(msg);
}

// A void* field exposed to Python as an integer address.
#define MK_PTR_PROP(cls, Struct, field)                                                        \
  cls.def_property(                                                                            \
      #field, [](const Struct& s) { return reinterpret_cast<std::uintptr_t>(s.field); },       \
      [](Struct& s, std::uintptr_t v) {                                                        \
        s.field = reinterpret_cast<decltype(s.field)>(v);                                      \
      })

// A fixed-size int64 array field exposed as a list.
#define MK_ARRAY_PROP(cls, Struct, field)                                                      \
  cls.def_property(                                                                            \
      #field,                                                                                  \
      [](const Struct& s) {                                                                    \
        return std::vector<int64_t>(std::begin(s.field), std::end(s.field));                   \
      },                                                                                       \
      [](Struct& s, const std::vector<int64_t>& v) {                                           \
        constexpr size_t n = sizeof(s.field) / sizeof(s.field[0]);                             \
        if (v.size() != n)                                                                     \
          throw py::value_error(std::string(#field) + " takes " + std::to_string(n) +          \
                                " values, got " + std::to_string(v.size()));                   \
        for (size_t i = 0; i < n; ++i) s.field[i] = v[i];                                      \
      })

// Run a kernel entry point without the GIL and raise on failure.
template <typename F>
void call(F&& f) {
  medkernels::Status st;
  {
    py::gil_scoped_release release;
    st = f();
  }
  check(st);
}

}  // namespace medkernels_glue
