// Dropout: the C++ API the bindings call (pointers, sizes, scalars, a stream).
//
// Inverted dropout on n elements of any shape, flat index i:
//   keep_i = word_i >= threshold,   word_i = Philox4x32-10 output for (seed, counter, i) (rng.h)
//   dropout_forward   y  = keep ? x  * scale : 0   (=)
//   dropout_backward  dx = keep ? dy * scale : 0   (=), the same mask regenerated
//   dropout_mask      mask[i] = keep_i             (=), one byte (0 or 1) per element
// The caller passes threshold = ceil(p 2^32) (so keep_i <=> word_i / 2^32 >= p) and
// scale = 1 / (1 - p). threshold == 0 (p = 0) is a copy with no random numbers drawn.
// Outputs may alias their input. No mask is stored between forward and backward.
//
// The counter on the device: when counter_at is not null the kernels read the counter from
// *counter_at (host memory on the CPU, device memory on the GPU) when they run and ignore
// `counter`, so a CUDA graph that captured them draws the mask of whatever counter that word
// holds at replay. dropout_next_counter advances a layer's pair of such words:
//   counters[1] = counters[0] (=, the counter of this step), counters[0] += 1 (the next one)
// one thread on the GPU, ordered on the stream before the forward that reads counters[1].
#pragma once

#include <cstdint>

#include "common.h"

namespace fastnn {

namespace cpu {
template <class T>
void dropout_forward(const T* x, T* y, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                     uint64_t counter, const uint64_t* counter_at);
template <class T>
void dropout_backward(const T* dy, T* dx, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                      uint64_t counter, const uint64_t* counter_at);
void dropout_mask(uint8_t* mask, int64_t n, uint64_t threshold, uint64_t seed, uint64_t counter);
void dropout_next_counter(uint64_t* counters);
}  // namespace cpu

namespace cuda {
template <class T>
void dropout_forward(const T* x, T* y, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                     uint64_t counter, const uint64_t* counter_at, Stream stream);
template <class T>
void dropout_backward(const T* dy, T* dx, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                      uint64_t counter, const uint64_t* counter_at, Stream stream);
void dropout_mask(uint8_t* mask, int64_t n, uint64_t threshold, uint64_t seed, uint64_t counter,
                  Stream stream);
void dropout_next_counter(uint64_t* counters, Stream stream);
}  // namespace cuda

}  // namespace fastnn
