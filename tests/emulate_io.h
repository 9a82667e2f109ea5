// File plumbing shared by the host emulators of the CUDA block programs (tests/*_emulate.cpp):
// the Python test writes a case directory (params.txt and raw .bin tensors), the emulator reads
// it, runs the kernels' per-thread code on the host and writes its outputs back as .bin files.
#pragma once

#include <cstddef>
#include <cstdio>
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

}  // namespace emulate
