// Dense layers on the CPU: the passes around NumPy's BLAS GEMMs (formulas in dense.h).
//
// Each pass reads the GEMM output once: rows split over OpenMP threads, a SIMD loop along the
// row. The bias gradient's column sums go into per-thread accumulators: blocks of kSumBlock
// rows are summed in T, each block total is added in float64, and the threads' totals are
// added into db in thread order (deterministic for a given thread count).
#include "dense.h"

#include <algorithm>
#include <vector>

#include "cpu/parallel.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kSumBlock = 64;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)); }

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace

template <class T>
void bias_activation_forward(Activation act, const T* z, const T* bias, T* y, T* aux,
                             int64_t rows, int64_t cols, T alpha) {
  with_activation<T>(act, alpha, [&](auto f) {
    parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* zr = z + r * cols;
        T* yr = y + r * cols;
        if (aux != nullptr) {
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
    }, 1);
  });
}

template <class T>
void bias_activation_backward(Activation act, const T* dy, const T* saved, T* dz, T* db,
                              int64_t rows, int64_t cols, T alpha) {
  if (db == nullptr && dz == nullptr) return;
  const int threads = max_threads();
  // Per thread: cols float64 totals, then cols block sums in T.
  std::vector<double> totals(db != nullptr ? size_t(threads) * cols : 0, 0.0);
  std::vector<T> blocks(db != nullptr ? size_t(threads) * cols : 0, T(0));
  with_activation<T>(act, alpha, [&](auto f) {
    parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
      double* total = db != nullptr ? totals.data() + size_t(thread_index()) * cols : nullptr;
      T* block = db != nullptr ? blocks.data() + size_t(thread_index()) * cols : nullptr;
      for (int64_t r = begin; r < end; ++r) {
        const T* dyr = dy + r * cols;
        const T* sr = saved != nullptr ? saved + r * cols : dyr;
        if (dz == nullptr) {  // identity: the column sums of dy alone
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) block[j] += dyr[j];
        } else if (db == nullptr) {
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
        if (db != nullptr && ((r - begin + 1) % kSumBlock == 0 || r + 1 == end)) {
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) {
            total[j] += double(block[j]);
            block[j] = T(0);
          }
        }
      }
    }, 1);
  });
  if (db == nullptr) return;
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int t = 0; t < threads; ++t) s += totals[size_t(t) * cols + j];
    db[j] += T(s);
  }
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void bias_activation_forward<T>(Activation, const T*, const T*, T*, T*, int64_t,  \
                                           int64_t, T);                                        \
  template void bias_activation_backward<T>(Activation, const T*, const T*, T*, T*, int64_t,  \
                                            int64_t, T);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
