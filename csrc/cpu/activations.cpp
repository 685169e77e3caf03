// Activations on the CPU: one pass over memory, SIMD loops, OpenMP over large arrays only.
// The formulas are in activations.h and activation_math.h.
#include "activations.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/parallel.h"

namespace fastnn::cpu {

// The loops capture pointers by value: captured by reference they would be reloaded after
// every store (the store might alias them), which stops vectorization.

template <class T>
void activation_forward(Activation act, const T* x, T* y, int64_t n, T alpha) {
  with_activation<T>(act, alpha, [=](auto f) {
    parallel_for(n, kParallelGrain, [=](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) y[i] = f.forward(x[i]);
    });
  });
}

template <class T>
void activation_backward(Activation act, const T* dy, const T* saved, T* dx, int64_t n, T alpha) {
  with_activation<T>(act, alpha, [=](auto f) {
    parallel_for(n, kParallelGrain, [=](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) dx[i] = f.backward(dy[i], saved[i]);
    });
  });
}

// PReLU, x viewed as (outer, channels, inner). With inner == 1 (a batch of feature vectors,
// the dense-network case) the SIMD loop runs along the channels; otherwise along `inner`.

template <class T>
void prelu_forward(const T* x, const T* alpha, T* y, int64_t outer, int64_t channels,
                   int64_t inner) {
  const int64_t rows = outer * (inner == 1 ? 1 : channels);
  const int64_t len = inner == 1 ? channels : inner;
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / len), [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * len;
      T* yr = y + r * len;
      if (inner == 1) {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) yr[j] = xr[j] > T(0) ? xr[j] : alpha[j] * xr[j];
      } else {
        const T a = alpha[r % channels];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) yr[j] = xr[j] > T(0) ? xr[j] : a * xr[j];
      }
    }
  }, 1);
}

template <class T>
void prelu_backward(const T* dy, const T* x, const T* alpha, T* dx, T* dalpha, int64_t outer,
                    int64_t channels, int64_t inner) {
  const int64_t rows = outer * (inner == 1 ? 1 : channels);
  const int64_t len = inner == 1 ? channels : inner;
  // Each thread sums its rows into a private accumulator; the accumulators are added into
  // dalpha one thread at a time. Sums run in float64 whatever T is.
  const int threads = max_threads();
  std::vector<double> partial(size_t(threads) * channels, 0.0);
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / len), [&](int64_t begin, int64_t end) {
#ifdef _OPENMP
    double* acc = partial.data() + size_t(omp_get_thread_num()) * channels;
#else
    double* acc = partial.data();
#endif
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * len;
      const T* dyr = dy + r * len;
      T* dxr = dx + r * len;
      if (inner == 1) {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const bool pos = xr[j] > T(0);
          dxr[j] = pos ? dyr[j] : alpha[j] * dyr[j];
          acc[j] += pos ? 0.0 : double(dyr[j]) * double(xr[j]);
        }
      } else {
        const T a = alpha[r % channels];
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < len; ++j) {
          const bool pos = xr[j] > T(0);
          dxr[j] = pos ? dyr[j] : a * dyr[j];
          s += pos ? 0.0 : double(dyr[j]) * double(xr[j]);
        }
        acc[r % channels] += s;
      }
    }
  }, 1);
  for (int t = 0; t < threads; ++t)
    for (int64_t c = 0; c < channels; ++c) dalpha[c] += T(partial[size_t(t) * channels + c]);
}

// Softmax rows: max, then e^(x - max) and its sum in one pass, then the scaling pass.

template <class T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, bool log) {
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)),
               [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
      for (int64_t j = 0; j < cols; ++j) m = xr[j] > m ? xr[j] : m;
      T s = 0;
      if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < cols; ++j) s += math_exp(xr[j] - m);
        const T lse = m + std::log(s);
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] - lse;
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < cols; ++j) {
          const T e = math_exp(xr[j] - m);
          yr[j] = e;
          s += e;
        }
        const T inv = T(1) / s;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) yr[j] *= inv;
      }
    }
  }, 1);
}

template <class T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool log) {
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)),
               [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* dyr = dy + r * cols;
      const T* yr = y + r * cols;
      T* dxr = dx + r * cols;
      T s = 0;
      if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < cols; ++j) s += dyr[j];
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) dxr[j] = dyr[j] - math_exp(yr[j]) * s;
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < cols; ++j) s += dyr[j] * yr[j];
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - s);
      }
    }
  }, 1);
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void activation_forward<T>(Activation, const T*, T*, int64_t, T);                  \
  template void activation_backward<T>(Activation, const T*, const T*, T*, int64_t, T);       \
  template void prelu_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);          \
  template void prelu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t,     \
                                  int64_t);                                                    \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t, bool);                     \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, bool);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
