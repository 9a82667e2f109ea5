/* The params structs' field lists: one X-macro per struct, the single place where a field is named.
 *
 * medkernels/fields/<family>.h defines, per params struct, MK_<STRUCT>_FIELDS(F), which expands
 * F(kind, type, name, arg) once per field in layout order. The kinds:
 *   VAL     type name = arg;        int64_t, int, double, uint64_t, size_t
 *   BOOL    bool name = arg;        (the C ABI mirror holds an int)
 *   ENUM    type name = arg;        an enum class (the C ABI mirror holds an int; Python the enum)
 *   OPCODE  type name = arg;        an enum class that Python reads and writes as an int
 *   PTR     type name = nullptr;    a pointer (Python: an integer address; arg unused)
 *   ARR     type name[arg] = {};    a fixed-size array (Python: a list of exactly arg values)
 *   NESTED  type name;              a params struct (arg: the C ABI mirror's type name)
 * Adding a field is one line in one list: the C++ struct (medkernels/<family>.h, MK_CXX_FIELD
 * below), the Python attributes (python/glue.h), the C ABI mirror struct (medkernels/c_api.h) and
 * the copies between the two (csrc/c_api/common.h) all expand the same list.
 *
 * Plain preprocessor only: medkernels/c_api.h includes the lists from C, NVRTC from device code. */
#ifndef MEDKERNELS_FIELDS_H_
#define MEDKERNELS_FIELDS_H_

/* The C++ member declaration of one field (inside namespace medkernels). */
#define MK_CXX_FIELD(kind, type, name, arg) MK_CXX_FIELD_##kind(type, name, arg)
#define MK_CXX_FIELD_VAL(type, name, arg) type name = arg;
#define MK_CXX_FIELD_BOOL(type, name, arg) type name = arg;
#define MK_CXX_FIELD_ENUM(type, name, arg) type name = arg;
#define MK_CXX_FIELD_OPCODE(type, name, arg) type name = arg;
#define MK_CXX_FIELD_PTR(type, name, arg) type name = nullptr;
#define MK_CXX_FIELD_ARR(type, name, arg) type name[arg] = {};
#define MK_CXX_FIELD_NESTED(type, name, arg) type name;

#endif /* MEDKERNELS_FIELDS_H_ */
