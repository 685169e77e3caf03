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
#pragma once

#include <cstdint>

#include "common.h"

namespace fastnn {

namespace cpu {
template <class T>
void dropout_forward(const T* x, T* y, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                     uint64_t counter);
template <class T>
void dropout_backward(const T* dy, T* dx, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                      uint64_t counter);
void dropout_mask(uint8_t* mask, int64_t n, uint64_t threshold, uint64_t seed, uint64_t counter);
}  // namespace cpu

namespace cuda {
template <class T>
void dropout_forward(const T* x, T* y, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                     uint64_t counter, Stream stream);
template <class T>
void dropout_backward(const T* dy, T* dx, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                      uint64_t counter, Stream stream);
void dropout_mask(uint8_t* mask, int64_t n, uint64_t threshold, uint64_t seed, uint64_t counter,
                  Stream stream);
}  // namespace cuda

}  // namespace fastnn
