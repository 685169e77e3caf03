// Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011): a counter-based generator. Four 32-bit words of output are a pure function of a
// 128-bit counter and a 64-bit key, so any element's random number is computed where it is
// needed (on the host or inside a CUDA kernel) without state or a stored mask.
//
//   round:  (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2   (32 x 32 -> 64-bit products)
//           c = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
//   key schedule: (k0, k1) += (W0, W1) before each of rounds 2..10
//
// fastnn's dropout keys element i of a tensor by (seed, counter):
//   key = (seed lo, seed hi),  counter words = (block lo, block hi, counter lo, counter hi),
//   block = i / 4, and element i takes output word i % 4.
// The reference (fastnn/reference/dropout.py) implements the same function in NumPy/CuPy.
#pragma once

#include <cstdint>

#include "common.h"

namespace fastnn {

struct Philox4x32 {
  uint32_t v[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

FASTNN_HD uint32_t philox_mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

// Counter (c0, c1, c2, c3) and key (k0, k1) as in Random123's philox4x32_R(10, ctr, key).
FASTNN_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                   uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint32_t hi0 = philox_mulhi(kPhiloxM0, c0);
    const uint32_t lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = philox_mulhi(kPhiloxM1, c2);
    const uint32_t lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// The four words for elements 4 * block .. 4 * block + 3 of the stream (seed, counter).
FASTNN_HD Philox4x32 philox_block(uint64_t seed, uint64_t counter, uint64_t block) {
  return philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(counter),
                       uint32_t(counter >> 32), uint32_t(seed), uint32_t(seed >> 32));
}

}  // namespace fastnn
