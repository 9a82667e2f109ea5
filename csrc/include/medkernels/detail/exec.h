// The executors every family's CUDA launch plan runs on: the same plan launches on a GPU (CudaExec,
// compiled only under nvcc) and runs on the host in the tests' emulation (HostExec), so the
// kernels' code is tested without a GPU.
//
// A family writes its kernels once, as functors in medkernels/detail/<family>*.h, and one plan
// `<family>_*_run<T>(params, ex)` that calls, for each launch:
//
//   ex.template items<THREADS>(body, total)   body(i) for i in [0, total): a per-item kernel, one
//                                              item per thread in a grid-stride loop (64-bit i),
//                                              THREADS per block.
//   ex.template blocks<MAX_THREADS>(prog, gx, gy, threads, smem)
//                                              prog(bk, pos, smem) for each block of a (gx, gy)
//                                              grid of `threads` (<= MAX_THREADS, the kernel's
//                                              launch bound) threads: a block program with `smem`
//                                              bytes of shared memory (16-byte aligned; NaN bytes
//                                              on the host).
//
// Each returns 0 or an error code (a cudaError_t on the GPU) for the plan to pass on. A block
// program is written phase-major: within a phase it runs its body for each thread slot s in
// [0, bk.slots()), as thread bk.thread(s), and bk.sync() separates the phases. On the GPU a slot
// is the calling thread (slots() == 1, sync() is __syncthreads()); on the host all the block's
// threads run one after the other in each phase. A family whose block programs need more (the
// sigmoid loss's warp lanes and tensor-core step) extends DeviceBlock / HostBlock and names its
// block type as the executor's Block parameter.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "medkernels/common.h"

namespace medkernels {
namespace detail {

// Where a block program runs: block (x, y) of an (nx, ny) grid.
struct BlockPos {
  int64_t x, y, nx, ny;
};

// Blocks for a grid-stride loop over `total` items: the loop covers any total, so the cap only
// bounds the launch.
inline int64_t grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  const int64_t cap = int64_t(1) << 20;
  return blocks < 1 ? 1 : (blocks > cap ? cap : blocks);
}

// Fixed-order block sum, the same tree on every run and on host and GPU: for each k < nsums,
// red[k * ld + t] for t < n (in shared memory, written by the block's threads) is summed into
// red[k * ld] by halving strides from the power of two >= n. Every thread of the block calls it;
// syncs before each step and at the end.
template <class BK>
MK_HD void block_tree_sum(const BK& bk, double* red, int n, int nsums = 1, int ld = 0) {
  int half = 1;
  while (half < n) half <<= 1;
  for (int stride = half / 2; stride > 0; stride >>= 1) {
    bk.sync();
    for (int s = 0; s < bk.slots(); ++s) {
      const int t = bk.thread(s);
      if (t < stride && t + stride < n)
        for (int k = 0; k < nsums; ++k) red[k * ld + t] += red[k * ld + t + stride];
    }
  }
  bk.sync();
}

// --- host ------------------------------------------------------------------------------------------
// The block as a host loop sees it: every thread slot in turn.
struct HostBlock {
  explicit HostBlock(int threads) : threads_(threads) {}
  int slots() const { return threads_; }
  int thread(int slot) const { return slot; }
  void sync() const {}

 private:
  int threads_;
};

// Does nothing; an emulator passes a Trace that prints each launch (see tests/emulate_io.h).
struct NoTrace {
  template <class F>
  void items(const F&, int64_t) {}
  template <class F>
  void blocks(const F&, int64_t, int64_t, int) {}
};

// Runs a plan on the host, launch by launch in its order: every item, or every block (shared memory
// poisoned with 0xff bytes, NaN in every float type, before each block) with all its threads.
template <class Block = HostBlock, class Trace = NoTrace>
struct HostExec {
  Trace trace;

  template <int THREADS = 256, class F>
  int items(const F& body, int64_t total) {
    trace.items(body, total);
    for (int64_t i = 0; i < total; ++i) body(i);
    return 0;
  }

  template <int MAX_THREADS, class F>
  int blocks(const F& prog, int64_t gx, int64_t gy, int threads, size_t smem_bytes) {
    if (gx <= 0 || gy <= 0) return 0;
    if (threads < 1 || threads > MAX_THREADS) return 9;  // cudaErrorInvalidConfiguration
    trace.blocks(prog, gx, gy, threads);
    std::vector<unsigned char> smem(smem_bytes);  // operator new: 16-byte aligned
    const Block bk(threads);
    for (int64_t by = 0; by < gy; ++by)
      for (int64_t bx = 0; bx < gx; ++bx) {
        std::memset(smem.data(), 0xff, smem.size());
        prog(bk, BlockPos{bx, by, gx, gy}, smem.data());
      }
    return 0;
  }
};

}  // namespace detail
}  // namespace medkernels

// --- CUDA (nvcc only) ------------------------------------------------------------------------------
#if defined(__CUDACC__)
#include <cuda_runtime.h>

// for (int64_t i = global thread index; i < total; i += threads in the grid): 64-bit indices
#define MK_GRID_STRIDE(i, total)                                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

namespace medkernels {
namespace detail {

// The block as a CUDA thread sees it: one slot, itself.
struct DeviceBlock {
  __host__ __device__ explicit DeviceBlock(int = 0) {}
  __device__ __forceinline__ int slots() const { return 1; }
  __device__ __forceinline__ int thread(int) const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
};

template <int THREADS, class F>
__global__ void __launch_bounds__(THREADS) mk_items_kernel(const F body, int64_t total) {
  MK_GRID_STRIDE(i, total) body(i);
}

template <int MAX_THREADS, class Block, class F>
__global__ void __launch_bounds__(MAX_THREADS) mk_blocks_kernel(const F prog) {
  extern __shared__ __align__(16) unsigned char mk_smem[];
  prog(Block(), BlockPos{blockIdx.x, blockIdx.y, gridDim.x, gridDim.y}, mk_smem);
}

// Launches a plan on `stream`, one kernel per call, asynchronously.
template <class Block = DeviceBlock>
struct CudaExec {
  cudaStream_t stream = nullptr;

  template <int THREADS = 256, class F>
  int items(const F& body, int64_t total) {
    if (total <= 0) return 0;
    mk_items_kernel<THREADS, F><<<static_cast<unsigned>(grid_for(total, THREADS)), THREADS, 0, stream>>>(body, total);
    return static_cast<int>(cudaGetLastError());
  }

  template <int MAX_THREADS, class F>
  int blocks(const F& prog, int64_t gx, int64_t gy, int threads, size_t smem_bytes) {
    if (gx <= 0 || gy <= 0) return 0;
    if (gx > 0x7fffffffLL || gy > 65535 || threads < 1 || threads > MAX_THREADS)
      return static_cast<int>(cudaErrorInvalidConfiguration);
    if (smem_bytes > 48 * 1024) {  // above the default limit: opt in
      const cudaError_t e = cudaFuncSetAttribute(mk_blocks_kernel<MAX_THREADS, Block, F>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem_bytes));
      if (e != cudaSuccess) return static_cast<int>(e);
    }
    mk_blocks_kernel<MAX_THREADS, Block, F><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)),
                                              static_cast<unsigned>(threads), smem_bytes, stream>>>(prog);
    return static_cast<int>(cudaGetLastError());
  }
};

}  // namespace detail
}  // namespace medkernels
#endif  // __CUDACC__
