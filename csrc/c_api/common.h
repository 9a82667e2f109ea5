// Shared by the C ABI files (csrc/c_api/<family>.cpp, compiled into libmedkernels_capi only):
// the thread's error message, C++ exceptions caught at the boundary, and the params entry points
// generated from the field lists (medkernels/fields/<family>.h).
#pragma once

#include <cstddef>
#include <string>

#include "medkernels/c_api.h"
#include "medkernels/common.h"

namespace mk_capi {

// The message mk_last_error() returns on this thread.
std::string& error();

inline int fail(mk_status st, const std::string& msg) {
  error() = msg;
  return st;
}

// A C++ Status (its message in medkernels::last_error()) as a C status.
inline int from_status(medkernels::Status st) {
  if (st == medkernels::Status::kSuccess) return MK_SUCCESS;
  error() = medkernels::last_error();
  return static_cast<int>(st);
}

// Runs body() with every exception turned into MK_INTERNAL_ERROR.
template <typename F>
int guarded(const char* fn, F&& body) noexcept {
  try {
    error().clear();
    return body();
  } catch (const std::exception& e) {
    return fail(MK_INTERNAL_ERROR, std::string(fn) + ": " + e.what());
  } catch (...) {
    return fail(MK_INTERNAL_ERROR, std::string(fn) + ": unknown C++ exception");
  }
}

[[maybe_unused]] inline int no_cuda(const char* fn) {
  return fail(MK_UNSUPPORTED, std::string(fn) + ": this medkernels library was built without CUDA");
}

// Every ABI dtype as DEF(suffix, storage type, accumulation type, DType).
#define MK_FOR_EACH_DTYPE(DEF)                           \
  DEF(f32, float, float, medkernels::DType::kFloat32)    \
  DEF(f64, double, double, medkernels::DType::kFloat64)  \
  DEF(f16, uint16_t, float, medkernels::DType::kFloat16) \
  DEF(bf16, uint16_t, float, medkernels::DType::kBFloat16)

// ---- the params entry points --------------------------------------------------------------------
// One field of a mirror struct for mk_params_fields(); a table per struct ends with {nullptr}.
// Each family file registers its tables (MK_CAPI_PARAMS below) at load time.
void register_fields(const char* name, const mk_field* fields, size_t size);

// The copies between a C mirror (c_api.h) and its C++ struct, one line per field kind.
#define MK_TO_CXX(kind, type, name, arg) MK_TO_CXX_##kind(type, name, arg)
#define MK_TO_CXX_VAL(type, name, arg) d.name = s.name;
#define MK_TO_CXX_BOOL(type, name, arg) d.name = s.name != 0;
#define MK_TO_CXX_ENUM(type, name, arg) d.name = static_cast<decltype(d.name)>(s.name);
#define MK_TO_CXX_OPCODE(type, name, arg) d.name = static_cast<decltype(d.name)>(s.name);
#define MK_TO_CXX_PTR(type, name, arg) d.name = s.name;
#define MK_TO_CXX_ARR(type, name, arg) \
  for (size_t i = 0; i < (arg); ++i) d.name[i] = s.name[i];
#define MK_TO_CXX_NESTED(type, name, arg) Mirror<arg>::to_cxx(s.name, d.name);

#define MK_TO_C(kind, type, name, arg) MK_TO_C_##kind(type, name, arg)
#define MK_TO_C_VAL(type, name, arg) d.name = s.name;
#define MK_TO_C_BOOL(type, name, arg) d.name = s.name ? 1 : 0;
#define MK_TO_C_ENUM(type, name, arg) d.name = static_cast<int>(s.name);
#define MK_TO_C_OPCODE(type, name, arg) d.name = static_cast<int>(s.name);
#define MK_TO_C_PTR(type, name, arg) d.name = s.name;
#define MK_TO_C_ARR(type, name, arg) \
  for (size_t i = 0; i < (arg); ++i) d.name[i] = s.name[i];
#define MK_TO_C_NESTED(type, name, arg) Mirror<arg>::to_c(s.name, d.name);

// The C spelling of a field's type for mk_params_fields().
#define MK_C_TYPE_VAL(type, arg) #type
#define MK_C_TYPE_BOOL(type, arg) "int"
#define MK_C_TYPE_ENUM(type, arg) "int"
#define MK_C_TYPE_OPCODE(type, arg) "int"
#define MK_C_TYPE_PTR(type, arg) #type
#define MK_C_TYPE_ARR(type, arg) #type
#define MK_C_TYPE_NESTED(type, arg) #arg
#define MK_FIELD_ROW(kind, type, name, arg)                                                     \
  {#name, #kind, MK_C_TYPE_##kind(type, arg), offsetof(MkC, name), sizeof(MkC::name), MK_COUNT_##kind(arg)},
#define MK_COUNT_VAL(arg) 1
#define MK_COUNT_BOOL(arg) 1
#define MK_COUNT_ENUM(arg) 1
#define MK_COUNT_OPCODE(arg) 1
#define MK_COUNT_PTR(arg) 1
#define MK_COUNT_ARR(arg) (arg)
#define MK_COUNT_NESTED(arg) 1

// Mirror<c_name>: the copies between a C mirror and its C++ struct (MK_CAPI_PARAMS specialises it).
template <typename C>
struct Mirror;

// The C mirror `c` as the C++ struct `d`: MK_SUCCESS, or an error naming fn when c is NULL or was
// not set up by this library's mk_*_params_init().
template <typename C, typename Cxx>
int from_c(const char* fn, const char* c_name, const C* c, Cxx& d) {
  if (!c) return fail(MK_INVALID_ARGUMENT, std::string(fn) + ": params must not be NULL");
  if (c->struct_size != sizeof(C))
    return fail(MK_INVALID_ARGUMENT, std::string(fn) + ": params.struct_size must be sizeof(" + c_name + ") = " +
                                         std::to_string(sizeof(C)) + " (set by " + c_name +
                                         "_init() of the c_api.h this library was built from), got " +
                                         std::to_string(c->struct_size));
  Mirror<C>::to_cxx(*c, d);
  return MK_SUCCESS;
}

}  // namespace mk_capi

// Per params struct: the copies both ways, mk_<c_name>_init() and the mk_params_fields() table.
// c_name is the mirror's name in c_api.h, Cxx the C++ struct, LIST its field list.
#define MK_CAPI_PARAMS(c_name, Cxx, LIST)                                                       \
  namespace mk_capi {                                                                           \
  template <>                                                                                   \
  struct Mirror<c_name> {                                                                       \
    static void to_cxx(const c_name& s, Cxx& d) { LIST(MK_TO_CXX) }                             \
    static void to_c(const Cxx& s, c_name& d) {                                                 \
      d.struct_size = sizeof(c_name);                                                           \
      LIST(MK_TO_C)                                                                             \
    }                                                                                           \
  };                                                                                            \
  namespace {                                                                                   \
  struct Register_##c_name {                                                                    \
    Register_##c_name() {                                                                       \
      using MkC = c_name;                                                                       \
      static const mk_field rows[] = {                                                          \
          {"struct_size", "VAL", "size_t", offsetof(MkC, struct_size), sizeof(size_t), 1},      \
          LIST(MK_FIELD_ROW){nullptr, nullptr, nullptr, 0, 0, 0}};                              \
      register_fields(#c_name, rows, sizeof(MkC));                                              \
    }                                                                                           \
  } register_##c_name;                                                                          \
  }                                                                                             \
  }                                                                                             \
  extern "C" void c_name##_init(c_name* p) {                                                    \
    if (p) mk_capi::Mirror<c_name>::to_c(Cxx{}, *p);                                                            \
  }

// A params entry point `int name(const c_name* p)` running `expr` (of the C++ struct `q`).
#define MK_CAPI_PARAMS_CALL(name, c_name, Cxx, expr)                                            \
  extern "C" int name(const c_name* p) {                                                        \
    return mk_capi::guarded(#name, [&]() -> int {                                               \
      Cxx q;                                                                                    \
      const int st = mk_capi::from_c(#name, #c_name, p, q);                                     \
      return st != MK_SUCCESS ? st : mk_capi::from_status(expr);                                \
    });                                                                                         \
  }

// The _cuda twin `int name(const c_name* p, void* stream)` running cuda_fn(q, stream), or
// MK_UNSUPPORTED from a library built without CUDA.
#ifdef MEDKERNELS_WITH_CUDA
#define MK_CAPI_PARAMS_CALL_CUDA(name, c_name, Cxx, cuda_fn)                                    \
  extern "C" int name(const c_name* p, void* stream) {                                          \
    return mk_capi::guarded(#name, [&]() -> int {                                               \
      Cxx q;                                                                                    \
      const int st = mk_capi::from_c(#name, #c_name, p, q);                                     \
      return st != MK_SUCCESS ? st : mk_capi::from_status(cuda_fn(q, stream));                  \
    });                                                                                         \
  }
#else
#define MK_CAPI_PARAMS_CALL_CUDA(name, c_name, Cxx, cuda_fn)                                    \
  extern "C" int name(const c_name* p, void* stream) {                                          \
    (void)stream;                                                                               \
    return mk_capi::guarded(#name, [&]() -> int {                                               \
      Cxx q;                                                                                    \
      const int st = mk_capi::from_c(#name, #c_name, p, q);                                     \
      return st != MK_SUCCESS ? st : mk_capi::no_cuda(#name);                                   \
    });                                                                                         \
  }
#endif

// A size query `size_t name(const c_name* p)` returning `expr`; 0 with mk_last_error() set when p
// is NULL or not from this library's init.
#define MK_CAPI_PARAMS_SIZE(name, c_name, Cxx, expr)                                            \
  extern "C" size_t name(const c_name* p) {                                                     \
    size_t bytes = 0;                                                                           \
    const int st = mk_capi::guarded(#name, [&]() -> int {                                       \
      Cxx q;                                                                                    \
      const int s = mk_capi::from_c(#name, #c_name, p, q);                                      \
      if (s == MK_SUCCESS) bytes = (expr);                                                      \
      return s;                                                                                 \
    });                                                                                         \
    return st == MK_SUCCESS ? bytes : 0;                                                        \
  }
