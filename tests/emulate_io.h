// File plumbing shared by the host emulators of the CUDA block programs (tests/*_emulate.cpp):
// the Python test writes a case directory (params.txt and raw .bin tensors), the emulator reads
// it, runs the kernels' per-thread code on the host and writes its outputs back as .bin files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace emulate {

inline std::vector<unsigned char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Exactly n bytes of the file into p; false if it is missing or short.
inline bool read_into(const std::string& path, void* p, size_t n) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  f.read(static_cast<char*>(p), static_cast<std::streamsize>(n));
  return static_cast<size_t>(f.gcount()) == n;
}

inline void write_file(const std::string& path, const void* p, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
}

// n elements of E from the file into *v (resized); false, with a message, if missing or short.
template <typename E>
bool load(const std::string& path, std::vector<E>* v, int64_t n) {
  v->resize(static_cast<size_t>(n));
  if (read_into(path, v->data(), v->size() * sizeof(E))) return true;
  std::fprintf(stderr, "cannot read %lld elements from %s\n", static_cast<long long>(n), path.c_str());
  return false;
}

template <typename E>
void save(const std::string& path, const std::vector<E>& v) {
  write_file(path, v.data(), v.size() * sizeof(E));
}

// A buffer of n elements of E, every byte 0xff (NaN in every float type).
template <typename E>
std::vector<E> poisoned(int64_t n) {
  std::vector<E> v(static_cast<size_t>(n));
  std::memset(v.data(), 0xff, v.size() * sizeof(E));
  return v;
}

// DIR/params.txt as numbers read in order: integers exactly (64-bit), reals through strtod, so
// Python's repr() of any float ("-inf", "nan", "1e-300") comes through. A missing or malformed
// number sets !ok() (checked once, after reading them all).
class Params {
 public:
  explicit Params(const std::string& path) {
    std::ifstream f(path);
    for (std::string t; f >> t;) tok_.push_back(t);
  }
  int64_t i64() {
    const int64_t v = std::strtoll(next(), &end_, 10);
    check();
    return v;
  }
  uint64_t u64() {
    const uint64_t v = std::strtoull(next(), &end_, 10);
    check();
    return v;
  }
  double f64() {
    const double v = std::strtod(next(), &end_);
    check();
    return v;
  }
  bool flag() { return i64() != 0; }
  template <size_t N>
  void i64s(int64_t (&out)[N]) {
    for (size_t i = 0; i < N; ++i) out[i] = i64();
  }
  bool ok() const { return ok_ && used_ == tok_.size(); }

 private:
  const char* next() {
    if (used_ >= tok_.size()) {
      ok_ = false;
      cur_ = "0";
    } else {
      cur_ = tok_[used_++];
    }
    return cur_.c_str();
  }
  void check() {  // a token that is not entirely a number
    if (*end_ != '\0' || end_ == cur_.c_str()) ok_ = false;
  }
  std::vector<std::string> tok_;
  std::string cur_;
  char* end_ = nullptr;
  size_t used_ = 0;
  bool ok_ = true;
};

// The executors' trace (medkernels/detail/exec.h HostExec<Block, Trace>): one line per launch,
// the kernel's kName and its size. An emulator derives from it (with `using Trace::items;` and
// `using Trace::blocks;`) to print more about the kernels it checks.
struct Trace {
  template <class F>
  void items(const F&, int64_t total) {
    std::printf("%s items=%lld\n", F::kName, static_cast<long long>(total));
  }
  template <class F>
  void blocks(const F&, int64_t gx, int64_t gy, int threads) {
    std::printf("%s grid=%lldx%lld threads=%d\n", F::kName, static_cast<long long>(gx), static_cast<long long>(gy),
                threads);
  }
};

// `prog DIR`: the case directory, or false (after a message on stderr) for a bad command line.
inline bool case_dir(int argc, char** argv, std::string* dir) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return false;
  }
  *dir = argv[1];
  return true;
}

}  // namespace emulate
