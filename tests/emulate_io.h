// File plumbing shared by the host emulators of the CUDA block programs (tests/*_emulate.cpp):
// the Python test writes a case directory (params.txt and raw .bin tensors), the emulator reads
// it, runs the kernels' per-thread code on the host and writes its outputs back as .bin files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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

// `prog DIR`: the case directory and the first n numbers of DIR/params.txt; false (after a
// message on stderr) for a bad command line or a short params.txt.
template <typename V>
bool read_case(int argc, char** argv, std::string* dir, V* v, size_t n) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return false;
  }
  *dir = argv[1];
  std::ifstream f(*dir + "/params.txt");
  for (size_t i = 0; i < n; ++i)
    if (!(f >> v[i])) {
      std::fprintf(stderr, "bad params.txt\n");
      return false;
    }
  return true;
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
  int64_t i64() { return static_cast<int64_t>(std::strtoll(next(), &end_, 10)) + check(); }
  uint64_t u64() { return static_cast<uint64_t>(std::strtoull(next(), &end_, 10)) + check(); }
  double f64() { return std::strtod(next(), &end_) + check(); }
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
  int check() {  // 0; records a token that is not entirely a number
    if (*end_ != '\0') ok_ = false;
    return 0;
  }
  std::vector<std::string> tok_;
  std::string cur_;
  char* end_ = nullptr;
  size_t used_ = 0;
  bool ok_ = true;
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
