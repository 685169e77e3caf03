// bfloat16 operands of the CPU's medium-precision GEMMs (cpu/blas.h, "medium" in dense.h).
//
// bf16 is the top half of a float32: 8 exponent bits, 7 stored mantissa bits. A float32 is
// rounded to the nearest bf16, ties to even (as torch's .bfloat16() and the AVX512_BF16
// VCVTNEPS2BF16 instruction round): add 0x7fff plus the lowest kept bit, keep the top half.
// NaN stays a (quiet) NaN, which the plain rounding would turn into infinity when only low
// mantissa bits are set. Integer arithmetic, so that `omp simd` loops vectorize it anywhere.
#pragma once

#include <cstdint>
#include <cstring>

namespace fastnn::cpu {

using bf16 = uint16_t;

inline bf16 to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return bf16(nan ? (u >> 16) | 0x40u : rounded);
}

// out[i] = bf16(x[i]) for i < n, over the OpenMP threads (cpu/blas.cpp).
void to_bf16_array(const float* x, bf16* out, int64_t n);

}  // namespace fastnn::cpu
