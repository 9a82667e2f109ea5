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

// A params struct as a Python class, its attributes generated from the struct's field list
// (medkernels/fields/<family>.h): MK_PY_PARAMS(m, DecompConvParams, MK_DECOMP_CONV_PARAMS_FIELDS).
// Values, bools, enums and nested structs read and write as themselves, OPCODE enums as ints,
// pointers as integer addresses (tensor.data_ptr()), fixed-size arrays as lists of exactly their
// length. copy.copy() copies the struct; <class>._fields lists the attributes in layout order.
#define MK_PY_PARAMS(m, Struct, LIST)                                                            \
  [&]() {                                                                                        \
    using MkS = Struct;                                                                          \
    auto mk_cls = py::class_<MkS>(m, #Struct).def(py::init<>());                                 \
    mk_cls.def("__copy__", [](const MkS& s) { return MkS(s); });                                 \
    LIST(MK_PY_FIELD)                                                                            \
    py::list mk_names;                                                                           \
    LIST(MK_PY_FIELD_NAME)                                                                       \
    mk_cls.attr("_fields") = py::tuple(mk_names);                                                \
    return mk_cls;                                                                               \
  }()

#define MK_PY_FIELD(kind, type, name, arg) MK_PY_FIELD_##kind(type, name, arg)
#define MK_PY_FIELD_NAME(kind, type, name, arg) mk_names.append(#name);
#define MK_PY_FIELD_VAL(type, name, arg) mk_cls.def_readwrite(#name, &MkS::name);
#define MK_PY_FIELD_BOOL(type, name, arg) mk_cls.def_readwrite(#name, &MkS::name);
#define MK_PY_FIELD_ENUM(type, name, arg) mk_cls.def_readwrite(#name, &MkS::name);
#define MK_PY_FIELD_NESTED(type, name, arg) mk_cls.def_readwrite(#name, &MkS::name);
#define MK_PY_FIELD_OPCODE(type, name, arg)                                                      \
  mk_cls.def_property(                                                                           \
      #name, [](const MkS& s) { return static_cast<int>(s.name); },                              \
      [](MkS& s, int v) { s.name = static_cast<decltype(s.name)>(v); });
#define MK_PY_FIELD_PTR(type, name, arg)                                                         \
  mk_cls.def_property(                                                                           \
      #name, [](const MkS& s) { return reinterpret_cast<std::uintptr_t>(s.name); },              \
      [](MkS& s, std::uintptr_t v) { s.name = reinterpret_cast<decltype(s.name)>(v); });
#define MK_PY_FIELD_ARR(type, name, arg)                                                         \
  mk_cls.def_property(                                                                           \
      #name, [](const MkS& s) { return medkernels_glue::array_get(s.name); },                    \
      [](MkS& s, const std::vector<int64_t>& v) { medkernels_glue::array_set(s.name, v, #name); });

template <size_t N>
std::vector<int64_t> array_get(const int64_t (&a)[N]) {
  return std::vector<int64_t>(std::begin(a), std::end(a));
}

template <size_t N>
void array_set(int64_t (&a)[N], const std::vector<int64_t>& v, const char* name) {
  if (v.size() != N)
    throw py::value_error(std::string(name) + " takes " + std::to_string(N) + " values, got " +
                          std::to_string(v.size()));
  for (size_t i = 0; i < N; ++i) a[i] = v[i];
}

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
