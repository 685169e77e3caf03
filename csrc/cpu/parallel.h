// Splitting CPU work over OpenMP threads: contiguous static chunks (one pass over memory per
// thread), and no thread team at all for small work.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"

namespace fastnn::cpu {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

#if defined(__GNUC__)
#define FASTNN_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define FASTNN_NOINLINE __declspec(noinline)
#else
#define FASTNN_NOINLINE
#endif

// body(begin, end), compiled once for both of parallel_for's call sites: two inlined copies
// may be vectorized differently (a libmvec call in one, scalar libm in the other), and
// elementwise results must not depend on the number of threads.
template <class Body>
FASTNN_NOINLINE void run_chunk(Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}

// Calls body(begin, end) over [0, n) split in contiguous chunks, one per thread, each a multiple
// of `align` items (so SIMD loops and cache lines are not split between threads). Runs inline
// on the calling thread when n <= grain.
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body&& body, int64_t align = 16) {
#ifdef _OPENMP
  if (n > grain && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t threads = omp_get_num_threads();
      const int64_t t = omp_get_thread_num();
      int64_t chunk = (n + threads - 1) / threads;
      chunk = (chunk + align - 1) / align * align;
      const int64_t begin = std::min(n, t * chunk);
      const int64_t end = std::min(n, begin + chunk);
      if (begin < end) run_chunk(body, begin, end);
    }
    return;
  }
#endif
  (void)grain;
  (void)align;
  if (n > 0) run_chunk(body, int64_t(0), n);
}

}  // namespace fastnn::cpu
