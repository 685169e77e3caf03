// The row loop of the dense backward pass, shared by the per-layer kernel (cpu/dense.cpp) and
// the row-blocked chain (cpu/dense_chain.cpp), which supply their own sum buffers.
#pragma once

#include <cstdint>

#include "cpu/bf16.h"

namespace fastnn::cpu {

// Rows of the bias gradient summed in T before each block total is added in float64.
constexpr int64_t kSumBlock = 64;

// dz = dy * f'(saved) (=; skipped when dz is null: then the sums are of dy), and, when total
// is not null, the column sums of dz added into total (float64, cols). block: cols scratch
// values of T. dz may alias dy. With dz16 (bf16, rows x cols; dz then null), dz is written
// rounded to bf16 there instead, for the bf16 GEMMs that read it (float32 only).
template <class T, class F>
void activation_grad_rows(const F& f, const T* dy, const T* saved, T* dz, bf16* dz16,
                          double* total, T* block, int64_t rows, int64_t cols) {
  if (total == nullptr && dz == nullptr && dz16 == nullptr) return;
  for (int64_t j = 0; j < cols && total != nullptr; ++j) block[j] = T(0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    const T* sr = saved != nullptr ? saved + r * cols : dyr;
    if (dz16 != nullptr) {
      bf16* hr = dz16 + r * cols;
      // The sums are added whether or not total wants them: one loop, and block is scratch.
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const T g = f.backward(dyr[j], sr[j]);
        hr[j] = to_bf16(float(g));
        block[j] += g;
      }
    } else if (dz == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) block[j] += dyr[j];
    } else if (total == nullptr) {
      T* dzr = dz + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) dzr[j] = f.backward(dyr[j], sr[j]);
    } else {
      T* dzr = dz + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const T g = f.backward(dyr[j], sr[j]);
        dzr[j] = g;
        block[j] += g;
      }
    }
    if (total != nullptr && ((r + 1) % kSumBlock == 0 || r + 1 == rows)) {
      for (int64_t j = 0; j < cols; ++j) {
        total[j] += double(block[j]);
        block[j] = T(0);
      }
    }
  }
}

}  // namespace fastnn::cpu
