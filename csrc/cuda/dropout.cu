// Dropout on the GPU. Formulas in dropout.h, the generator in rng.h.
//
// One thread per Philox block: it draws the four words inside the kernel (nothing is read but
// the input) and applies them to its four consecutive elements, with one 4-element vector load
// and store when the arrays allow. p = 0 is a device-to-device copy. With counter_at, every
// thread reads the counter from that device word when the kernel runs (a captured graph sees
// the value of each replay); dropout_next_counter advances it in a one-thread kernel.
#include "cuda/common.cuh"
#include "dropout.h"
#include "rng.h"

namespace fastnn::cuda {
namespace {

// Four consecutive elements: one Philox block's worth (16 bytes of float, 32 of double).
template <class T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// out = in * (keep ? scale : 0), keep = word > below (word >= threshold). Multiplying rather
// than selecting 0 keeps NaN and signed zeros as PyTorch's x * mask / (1 - p) does.
template <class T>
__global__ void dropout_kernel(const T* in, T* out, int64_t n, uint32_t below, T scale,
                               uint64_t seed, uint64_t counter, const uint64_t* counter_at,
                               bool vec) {
  if (counter_at != nullptr) counter = *counter_at;
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    const Philox4x32 r = philox_block(seed, counter, uint64_t(b));
    const int64_t i = 4 * b;
    if (vec && i + 4 <= n) {
      Quad<T> q = reinterpret_cast<const Quad<T>*>(in)[b];
#pragma unroll
      for (int k = 0; k < 4; ++k) q.v[k] *= r.v[k] > below ? scale : T(0);
      reinterpret_cast<Quad<T>*>(out)[b] = q;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (i + k < n) out[i + k] = in[i + k] * (r.v[k] > below ? scale : T(0));
    }
  }
}

__global__ void dropout_next_counter_kernel(uint64_t* counters) {
  const uint64_t next = counters[0];
  counters[1] = next;
  counters[0] = next + 1;
}

__global__ void dropout_mask_kernel(uint8_t* mask, int64_t n, uint32_t below, uint64_t seed,
                                    uint64_t counter) {
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    const Philox4x32 r = philox_block(seed, counter, uint64_t(b));
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (4 * b + k < n) mask[4 * b + k] = r.v[k] > below ? 1 : 0;
  }
}

template <class T>
void apply_dropout(const T* in, T* out, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                   uint64_t counter, const uint64_t* counter_at, Stream stream, const char* name) {
  if (n <= 0) return;
  const cudaStream_t s = to_stream(stream);
  if (threshold == 0) {
    if (in != out)
      check(cudaMemcpyAsync(out, in, size_t(n) * sizeof(T), cudaMemcpyDeviceToDevice, s), name);
    return;
  }
  const bool vec = (reinterpret_cast<uintptr_t>(in) % sizeof(Quad<T>)) == 0 &&
                   (reinterpret_cast<uintptr_t>(out) % sizeof(Quad<T>)) == 0;
  // threshold <= 2^32, so the 32-bit compare word > threshold - 1 is word >= threshold.
  dropout_kernel<T><<<grid_for((n + 3) / 4), kBlock, 0, s>>>(
      in, out, n, uint32_t(threshold - 1), scale, seed, counter, counter_at, vec);
  check_launch(name);
}

}  // namespace

template <class T>
void dropout_forward(const T* x, T* y, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                     uint64_t counter, const uint64_t* counter_at, Stream stream) {
  apply_dropout(x, y, n, threshold, scale, seed, counter, counter_at, stream, "dropout_forward");
}

template <class T>
void dropout_backward(const T* dy, T* dx, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                      uint64_t counter, const uint64_t* counter_at, Stream stream) {
  apply_dropout(dy, dx, n, threshold, scale, seed, counter, counter_at, stream,
                "dropout_backward");
}

void dropout_next_counter(uint64_t* counters, Stream stream) {
  dropout_next_counter_kernel<<<1, 1, 0, to_stream(stream)>>>(counters);
  check_launch("dropout_next_counter");
}

void dropout_mask(uint8_t* mask, int64_t n, uint64_t threshold, uint64_t seed, uint64_t counter,
                  Stream stream) {
  if (n <= 0) return;
  const cudaStream_t s = to_stream(stream);
  if (threshold == 0) {
    check(cudaMemsetAsync(mask, 1, size_t(n), s), "dropout_mask");
    return;
  }
  dropout_mask_kernel<<<grid_for((n + 3) / 4), kBlock, 0, s>>>(mask, n, uint32_t(threshold - 1),
                                                               seed, counter);
  check_launch("dropout_mask");
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void dropout_forward<T>(const T*, T*, int64_t, uint64_t, T, uint64_t, uint64_t,    \
                                   const uint64_t*, Stream);                                   \
  template void dropout_backward<T>(const T*, T*, int64_t, uint64_t, T, uint64_t, uint64_t,   \
                                    const uint64_t*, Stream);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
