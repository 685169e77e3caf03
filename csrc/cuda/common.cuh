// Shared CUDA plumbing: errors as exceptions, launch sizes, a vectorized elementwise map and
// warp/block reductions. Every launcher checks its launch; errors reach Python as RuntimeError.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"

namespace fastnn::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastnn: CUDA error in ") + what + ": " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// After a kernel launch: a bad configuration or a sticky error from earlier work.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline cudaStream_t to_stream(Stream s) { return static_cast<cudaStream_t>(s); }

inline int multiprocessor_count() {
  static std::atomic<int> cache[128] = {};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (device >= 128) device = 127;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute(multiProcessorCount)");
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over `items` work items: enough to fill every multiprocessor a
// few times over, never more than the work needs.
inline unsigned grid_for(int64_t items, int block = kBlock, int blocks_per_sm = 4) {
  const int64_t needed = (items + block - 1) / block;
  const int64_t cap = int64_t(multiprocessor_count()) * blocks_per_sm;
  return unsigned(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// 16 bytes of T: one vector load or store (ld.global.v4 / v2).
template <class T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <class T, int N>
struct Inputs {
  const T* p[N];
};

// out[i] = op(in[0][i], ..., in[N-1][i]). `out` may alias an input (same index read, then
// written). With `vec`, 16-byte loads and stores cover all but the last n % Pack::kSize items.
template <class T, int N, class Op>
__global__ void map_kernel(Inputs<T, N> in, T* out, int64_t n, Op op, bool vec) {
  constexpr int V = Pack<T>::kSize;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = vec ? n / V : 0;
  for (int64_t i = tid; i < nvec; i += stride) {
    Pack<T> a[N];
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = reinterpret_cast<const Pack<T>*>(in.p[k])[i];
    Pack<T> r;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if constexpr (N == 1) r.v[j] = op(a[0].v[j]);
      else if constexpr (N == 2) r.v[j] = op(a[0].v[j], a[1].v[j]);
      else r.v[j] = op(a[0].v[j], a[1].v[j], a[2].v[j]);
    }
    reinterpret_cast<Pack<T>*>(out)[i] = r;
  }
  for (int64_t i = nvec * V + tid; i < n; i += stride) {
    if constexpr (N == 1) out[i] = op(in.p[0][i]);
    else if constexpr (N == 2) out[i] = op(in.p[0][i], in.p[1][i]);
    else out[i] = op(in.p[0][i], in.p[1][i], in.p[2][i]);
  }
}

template <class T, int N, class Op>
void launch_map(Inputs<T, N> in, T* out, int64_t n, Op op, Stream stream, const char* name) {
  if (n <= 0) return;
  bool vec = aligned16(out);
  for (int k = 0; k < N; ++k) vec = vec && aligned16(in.p[k]);
  const int64_t items = vec ? (n + Pack<T>::kSize - 1) / Pack<T>::kSize : n;
  map_kernel<T, N, Op><<<grid_for(items), kBlock, 0, to_stream(stream)>>>(in, out, n, op, vec);
  check_launch(name);
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32;
// `scratch` holds 32 values. All threads of the block must call it.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return warp_sum(v);
}

}  // namespace fastnn::cuda
