// Dropout on the CPU. Formulas in dropout.h, the generator in rng.h.
//
// The elements are walked in chunks of kChunkBlocks Philox blocks: one SIMD loop fills a small
// stack buffer with the chunk's random words (the 10 Philox rounds vectorize across blocks),
// a second applies the mask to the chunk's 4 * kChunkBlocks contiguous elements. OpenMP splits
// the blocks into contiguous ranges, so every element gets the same word on any thread count.
#include "dropout.h"

#include <algorithm>

#include "cpu/parallel.h"
#include "rng.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kChunkBlocks = 64;

// Calls body(first, last, words) over consecutive element ranges [first, last), where
// words[i - first] is element i's random word.
template <class Body>
void for_each_word(int64_t n, uint64_t seed, uint64_t counter, Body&& body) {
  const int64_t blocks = (n + 3) / 4;
  parallel_for(blocks, kParallelGrain / 4, [&](int64_t begin, int64_t end) {
    alignas(64) uint32_t words[4 * kChunkBlocks];
    for (int64_t b0 = begin; b0 < end; b0 += kChunkBlocks) {
      const int64_t count = std::min(kChunkBlocks, end - b0);
#pragma omp simd
      for (int64_t j = 0; j < count; ++j) {
        const Philox4x32 r = philox_block(seed, counter, uint64_t(b0 + j));
        words[4 * j + 0] = r.v[0];
        words[4 * j + 1] = r.v[1];
        words[4 * j + 2] = r.v[2];
        words[4 * j + 3] = r.v[3];
      }
      body(4 * b0, std::min(n, 4 * (b0 + count)), words);
    }
  });
}

// The per-chunk loops take plain pointers and values: read through a lambda's captures, they
// would be reloaded after every store (which might alias them) and not vectorize.

// out = in * (keep ? scale : 0), keep = word > below. Multiplying (rather than selecting 0)
// keeps NaN and the sign of zero as PyTorch's x * mask / (1 - p) does.
template <class T>
void apply_chunk(const T* in, T* out, const uint32_t* words, int64_t count, uint32_t below,
                 T scale) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) out[i] = in[i] * (words[i] > below ? scale : T(0));
}

void mask_chunk(uint8_t* mask, const uint32_t* words, int64_t count, uint32_t below) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) mask[i] = words[i] > below ? 1 : 0;
}

template <class T>
void apply_dropout(const T* in, T* out, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                   uint64_t counter) {
  if (threshold == 0) {
    if (in != out)
      parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
        std::copy(in + begin, in + end, out + begin);
      });
    return;
  }
  // word >= threshold as a 32-bit compare: threshold <= 2^32, so threshold - 1 fits.
  const uint32_t below = uint32_t(threshold - 1);
  for_each_word(n, seed, counter, [&](int64_t first, int64_t last, const uint32_t* words) {
    apply_chunk(in + first, out + first, words, last - first, below, scale);
  });
}

}  // namespace

template <class T>
void dropout_forward(const T* x, T* y, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                     uint64_t counter, const uint64_t* counter_at) {
  apply_dropout(x, y, n, threshold, scale, seed, counter_at != nullptr ? *counter_at : counter);
}

template <class T>
void dropout_backward(const T* dy, T* dx, int64_t n, uint64_t threshold, T scale, uint64_t seed,
                      uint64_t counter, const uint64_t* counter_at) {
  apply_dropout(dy, dx, n, threshold, scale, seed, counter_at != nullptr ? *counter_at : counter);
}

void dropout_mask(uint8_t* mask, int64_t n, uint64_t threshold, uint64_t seed, uint64_t counter) {
  if (threshold == 0) {
    std::fill(mask, mask + n, uint8_t(1));
    return;
  }
  const uint32_t below = uint32_t(threshold - 1);
  for_each_word(n, seed, counter, [&](int64_t first, int64_t last, const uint32_t* words) {
    mask_chunk(mask + first, words, last - first, below);
  });
}

void dropout_next_counter(uint64_t* counters) {
  counters[1] = counters[0];
  counters[0] += 1;
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void dropout_forward<T>(const T*, T*, int64_t, uint64_t, T, uint64_t, uint64_t,    \
                                   const uint64_t*);                                           \
  template void dropout_backward<T>(const T*, T*, int64_t, uint64_t, T, uint64_t, uint64_t,   \
                                    const uint64_t*);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
