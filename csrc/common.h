// Definitions shared by every kernel family, on the host and (through nvcc) on the device.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_HD inline
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
