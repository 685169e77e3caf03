// The machine's memory bandwidth as STREAM measures it, for the benchmarks' yardstick
// (fastnn/benchmarks/_harness.py): the triad a = b + s c over float64 arrays far larger than
// the caches, each thread streaming one contiguous share (parallel_for), plain stores.
// STREAM counts 24 bytes per element (b and c read, a written); the cache line of a that a
// plain store first reads (write-allocate) is not counted, as STREAM does not count it.
#include "runtime.h"

#include "cpu/parallel.h"

namespace fastnn::cpu {

void stream_triad(double* a, const double* b, const double* c, double s, int64_t n) {
  parallel_for(n, 0, [=](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) a[i] = b[i] + s * c[i];
  });
}

}  // namespace fastnn::cpu
