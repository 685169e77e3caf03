// Definitions shared by every kernel family, on the host and (through nvcc) on the device.
#pragma once

#include <cstdint>

// Per-element math called from SIMD loops (and CUDA kernels) is always inlined: a call left in
// a loop stops it vectorizing, and with link-time optimization GCC's inlining budget
// (inline-unit-growth) is shared by the whole module, so code added anywhere else could
// otherwise leave such calls (it did, in the float32 activation loops).
#if defined(_MSC_VER)
#define FASTNN_INLINE __forceinline
#else
#define FASTNN_INLINE inline __attribute__((always_inline))
#endif
#if defined(__CUDACC__)
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_HD FASTNN_INLINE
#endif

namespace fastnn {

// CUDA launchers take the stream as an opaque pointer so that the bindings (compiled by the
// host compiler) need no CUDA header.
using Stream = void*;

// Below this many elements a CPU kernel runs on the calling thread. In a training step these
// kernels (optimizer, batch norm, dropout, activations) run between NumPy's BLAS GEMMs, whose
// worker threads keep their cores for a while after each GEMM; an OpenMP team started then
// waits for them, and on few cores a training step got slower with two threads than with one
// (measured: docs/DECISIONS.md, "CPU threading"). Above this size the work is long enough
// for a second thread to pay (e.g. a 32M-parameter optimizer step).
constexpr int64_t kParallelGrain = int64_t(1) << 21;

}  // namespace fastnn
