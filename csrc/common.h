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

// Below this many elements a CPU kernel runs on one thread: starting the OpenMP team costs
// more than the work it would share.
constexpr int64_t kParallelGrain = int64_t(1) << 15;

}  // namespace fastnn
