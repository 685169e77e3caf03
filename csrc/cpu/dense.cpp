// Dense layers on the CPU: the passes around NumPy's BLAS GEMMs (formulas in dense.h).
//
// Each pass reads the GEMM output once, row by row, with a SIMD loop along the row. They run on
// the calling thread on purpose: they sit between GEMMs that OpenBLAS runs on its own thread
// pool, and an OpenMP team started here keeps spinning after the region (GOMP_SPINCOUNT),
// taking a core from the GEMM that follows (measured: docs/DECISIONS.md, "CPU threading"); a
// pass costs a few percent of the GEMMs around it.
//
// The bias gradient's column sums: blocks of kSumBlock rows summed in T, each block total
// added in float64 (cpu/dense_passes.h).
//
// Medium precision (y16, dz16): the pass that reads the GEMM output also writes the bf16
// operand of the next GEMM, so rounding to bf16 costs no pass of its own.
#include "dense.h"

#include "cpu/dense_passes.h"

#include <vector>

namespace fastnn::cpu {

template <class T>
void bias_activation_forward(Activation act, const T* z, const T* bias, T* y, T* aux,
                             bf16* y16, int64_t rows, int64_t cols, T alpha) {
  with_activation<T>(act, alpha, [&](auto f) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* zr = z + r * cols;
      T* yr = y + r * cols;
      if (y16 != nullptr) {
        bf16* hr = y16 + r * cols;
        T* ar = aux != nullptr ? aux + r * cols : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) {
          const T p = bias != nullptr ? zr[j] + bias[j] : zr[j];
          if (ar != nullptr) ar[j] = p;
          const T v = f.forward(p);
          yr[j] = v;
          hr[j] = to_bf16(float(v));
        }
      } else if (aux != nullptr) {
        T* ar = aux + r * cols;
        if (bias != nullptr) {
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) {
            const T p = zr[j] + bias[j];
            ar[j] = p;
            yr[j] = f.forward(p);
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) {
            const T p = zr[j];
            ar[j] = p;
            yr[j] = f.forward(p);
          }
        }
      } else if (bias != nullptr) {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) yr[j] = f.forward(zr[j] + bias[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) yr[j] = f.forward(zr[j]);
      }
    }
  });
}

template <class T>
void bias_activation_backward(Activation act, const T* dy, const T* saved, T* dz, bf16* dz16,
                              T* db, int64_t rows, int64_t cols, T alpha) {
  if (db == nullptr && dz == nullptr && dz16 == nullptr) return;
  std::vector<double> total(db != nullptr ? cols : 0, 0.0);
  std::vector<T> block(cols, T(0));
  with_activation<T>(act, alpha, [&](auto f) {
    activation_grad_rows(f, dy, saved, dz, dz16, db != nullptr ? total.data() : nullptr,
                         block.data(), rows, cols);
  });
  for (int64_t j = 0; j < cols && db != nullptr; ++j) db[j] += T(total[j]);
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void bias_activation_forward<T>(Activation, const T*, const T*, T*, T*, bf16*,     \
                                           int64_t, int64_t, T);                               \
  template void bias_activation_backward<T>(Activation, const T*, const T*, T*, bf16*, T*,    \
                                            int64_t, int64_t, T);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
