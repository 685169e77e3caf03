// Batch normalization on the GPU. Formulas in batchnorm.h.
//
// Layout: x is (n, c) row-major. A block is a tile of kCols adjacent columns (one per lane, so
// every warp reads a contiguous row segment) by kRows thread rows; the grid is (column tiles,
// splits), each split a contiguous range of rows_per_split rows. Per-split results go to the
// workspace as ws[(split * 2 + k) * c + column]; the next kernel combines them in split order,
// so results are repeatable bit for bit (no atomics).
//
// forward, training: stats kernel (per split: mean and centred sum of squares about the split's
//   first row, in double), then normalize kernel (every block merges the splits with Chan's
//   pairwise formula, split 0 updates the running statistics and writes saved_*, all write y).
// forward, eval: normalize kernel only, from the running statistics.
// backward: sums kernel (per split: sum dz and sum dz (x - mean); in eval it also writes dx),
//   then the dx kernel (merges the sums, split 0 adds dgamma and dbeta, training writes dx;
//   in eval it runs one block row and only adds the parameter gradients).
#include <algorithm>
#include <type_traits>

#include "batchnorm.h"
#include "cuda/common.cuh"

namespace fastnn::cuda {
namespace {

constexpr int kCols = 32;
constexpr int kRows = 8;
constexpr int64_t kTargetBlocks = 1024;  // enough to fill any current GPU several times
constexpr int64_t kMinRowsPerSplit = 64;
constexpr int64_t kMaxSplits = 1024;

struct Layout {
  int64_t tiles;
  int64_t splits;
  int64_t rows_per_split;
};

// A function of (n, c) only, so the workspace size can be asked before any launch.
Layout layout(int64_t n, int64_t c) {
  const int64_t tiles = (c + kCols - 1) / kCols;
  int64_t splits = (kTargetBlocks + tiles - 1) / std::max<int64_t>(tiles, 1);
  splits = std::min(splits, (n + kMinRowsPerSplit - 1) / kMinRowsPerSplit);
  splits = std::clamp<int64_t>(splits, 1, kMaxSplits);
  const int64_t rows_per_split = std::max<int64_t>(1, (n + splits - 1) / splits);
  splits = std::max<int64_t>(1, (n + rows_per_split - 1) / rows_per_split);
  return {tiles, splits, rows_per_split};
}

// The rows [begin, end) of this block's split, and its column.
struct Tile {
  int64_t col;
  int64_t begin;
  int64_t end;
  __device__ Tile(int64_t n, int64_t rows_per_split) {
    col = int64_t(blockIdx.x) * kCols + threadIdx.x;
    begin = int64_t(blockIdx.y) * rows_per_split;
    end = min(n, begin + rows_per_split);
  }
};

// (mean, m2, count) of a set of rows merged with another's (Chan, Golub & LeVeque 1979).
__device__ __forceinline__ void chan_merge(double& mean, double& m2, double& count, double mean_b,
                                           double m2_b, double count_b) {
  if (count_b == 0.0) return;
  const double total = count + count_b;
  const double delta = mean_b - mean;
  mean += delta * (count_b / total);
  m2 += m2_b + delta * delta * (count * count_b / total);
  count = total;
}

// Sums a pair of per-thread values over the block's kRows thread rows, in row order (so the
// result is the same bits every run); the totals are valid in thread row 0. Every thread of the
// block must call it, once per kernel.
__device__ __forceinline__ void sum_thread_rows(double& a, double& b) {
  __shared__ double a_part[kRows][kCols];
  __shared__ double b_part[kRows][kCols];
  a_part[threadIdx.y][threadIdx.x] = a;
  b_part[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y != 0) return;
  a = 0.0;
  b = 0.0;
  for (int k = 0; k < kRows; ++k) {
    a += a_part[k][threadIdx.x];
    b += b_part[k][threadIdx.x];
  }
}

// Per split and column: the mean and the sum of squared deviations from it, accumulated about
// the split's first row (a sample close to the mean, so the squares do not cancel).
template <class T>
__global__ void __launch_bounds__(kCols* kRows)
    batchnorm_stats_kernel(const T* x, int64_t n, int64_t c, int64_t rows_per_split, double* ws) {
  const Tile t(n, rows_per_split);
  double shift = 0.0, s1 = 0.0, s2 = 0.0;
  if (t.col < c) {
    shift = double(x[t.begin * c + t.col]);
#pragma unroll 4
    for (int64_t r = t.begin + threadIdx.y; r < t.end; r += kRows) {
      const double d = double(x[r * c + t.col]) - shift;
      s1 += d;
      s2 += d * d;
    }
  }
  sum_thread_rows(s1, s2);
  if (threadIdx.y != 0 || t.col >= c) return;
  const double count = double(t.end - t.begin);
  ws[(blockIdx.y * 2 + 0) * c + t.col] = shift + s1 / count;
  ws[(blockIdx.y * 2 + 1) * c + t.col] = s2 - s1 * s1 / count;
}

template <class T, bool kRelu>
__global__ void __launch_bounds__(kCols* kRows)
    batchnorm_normalize_kernel(const T* x, const T* gamma, const T* beta, T* running_mean,
                               T* running_var, T* y, T* saved_mean, T* saved_invstd, int64_t n,
                               int64_t c, int64_t rows_per_split, int64_t splits, bool training,
                               double momentum, double eps, const double* ws) {
  __shared__ double mean_part[kRows][kCols];
  __shared__ double m2_part[kRows][kCols];
  __shared__ double count_part[kRows][kCols];
  __shared__ T shift_s[kCols];
  __shared__ T scale_s[kCols];
  __shared__ T beta_s[kCols];
  const Tile t(n, rows_per_split);
  const bool active = t.col < c;
  if (training) {
    double mean = 0.0, m2 = 0.0, count = 0.0;
    if (active)
      for (int64_t s = threadIdx.y; s < splits; s += kRows)
        chan_merge(mean, m2, count, ws[(s * 2 + 0) * c + t.col], ws[(s * 2 + 1) * c + t.col],
                   double(min(rows_per_split, n - s * rows_per_split)));
    mean_part[threadIdx.y][threadIdx.x] = mean;
    m2_part[threadIdx.y][threadIdx.x] = m2;
    count_part[threadIdx.y][threadIdx.x] = count;
  }
  __syncthreads();
  if (threadIdx.y == 0 && active) {
    double mean, var;
    if (training) {
      double m2 = 0.0, count = 0.0;
      mean = 0.0;
      for (int k = 0; k < kRows; ++k)
        chan_merge(mean, m2, count, mean_part[k][threadIdx.x], m2_part[k][threadIdx.x],
                   count_part[k][threadIdx.x]);
      var = m2 / double(n);
    } else {
      mean = double(running_mean[t.col]);
      var = double(running_var[t.col]);
    }
    const double invstd = 1.0 / sqrt(var + eps);
    shift_s[threadIdx.x] = T(mean);
    scale_s[threadIdx.x] = T(double(gamma[t.col]) * invstd);
    beta_s[threadIdx.x] = beta[t.col];
    if (blockIdx.y == 0) {
      saved_mean[t.col] = T(mean);
      saved_invstd[t.col] = T(invstd);
      if (training && running_mean != nullptr) {
        running_mean[t.col] = T((1.0 - momentum) * double(running_mean[t.col]) + momentum * mean);
        running_var[t.col] = T((1.0 - momentum) * double(running_var[t.col]) +
                               momentum * var * double(n) / double(n - 1));
      }
    }
  }
  __syncthreads();
  if (!active) return;
  const T shift = shift_s[threadIdx.x], scale = scale_s[threadIdx.x], b = beta_s[threadIdx.x];
#pragma unroll 4
  for (int64_t r = t.begin + threadIdx.y; r < t.end; r += kRows) {
    const T v = (x[r * c + t.col] - shift) * scale + b;
    y[r * c + t.col] = kRelu && v < T(0) ? T(0) : v;
  }
}

template <bool kRelu, class T>
__device__ __forceinline__ T masked(const T* dy, const T* y, int64_t i) {
  if constexpr (kRelu) return y[i] > T(0) ? dy[i] : T(0);
  return dy[i];
}

// Per split and column: sum dz and sum dz (x - mean). In eval, dx = dz gamma invstd as well.
template <class T, bool kRelu, bool kTraining>
__global__ void __launch_bounds__(kCols* kRows)
    batchnorm_backward_sums_kernel(const T* dy, const T* x, const T* gamma, const T* saved_mean,
                                   const T* saved_invstd, const T* y, T* dx, int64_t n, int64_t c,
                                   int64_t rows_per_split, double* ws) {
  const Tile t(n, rows_per_split);
  double s1 = 0.0, s2 = 0.0;
  if (t.col < c) {
    const T mean = saved_mean[t.col];
    const T k = T(double(gamma[t.col]) * double(saved_invstd[t.col]));
#pragma unroll 4
    for (int64_t r = t.begin + threadIdx.y; r < t.end; r += kRows) {
      const int64_t i = r * c + t.col;
      const T dz = masked<kRelu>(dy, y, i);
      s1 += double(dz);
      s2 += double(dz) * double(x[i] - mean);
      if constexpr (!kTraining) dx[i] = dz * k;
    }
  }
  sum_thread_rows(s1, s2);
  if (threadIdx.y != 0 || t.col >= c) return;
  ws[(blockIdx.y * 2 + 0) * c + t.col] = s1;
  ws[(blockIdx.y * 2 + 1) * c + t.col] = s2;
}

// Merges the sums, adds the parameter gradients (split 0) and, in training, writes dx =
// k dz + q (x - mean) + r with k = gamma invstd, q = -k invstd sum(dz xhat) / n,
// r = -k sum(dz) / n.
template <class T, bool kRelu, bool kTraining>
__global__ void __launch_bounds__(kCols* kRows)
    batchnorm_backward_dx_kernel(const T* dy, const T* x, const T* gamma, const T* saved_mean,
                                 const T* saved_invstd, const T* y, T* dx, T* dgamma, T* dbeta,
                                 int64_t n, int64_t c, int64_t rows_per_split, int64_t splits,
                                 const double* ws) {
  __shared__ T k_s[kCols];
  __shared__ T q_s[kCols];
  __shared__ T r_s[kCols];
  const Tile t(n, rows_per_split);
  const bool active = t.col < c;
  double s1 = 0.0, s2 = 0.0;
  if (active)
    for (int64_t s = threadIdx.y; s < splits; s += kRows) {
      s1 += ws[(s * 2 + 0) * c + t.col];
      s2 += ws[(s * 2 + 1) * c + t.col];
    }
  sum_thread_rows(s1, s2);
  if (threadIdx.y == 0 && active) {
    const double invstd = double(saved_invstd[t.col]);
    const double sum_dz_xhat = s2 * invstd;
    if (blockIdx.y == 0) {
      dbeta[t.col] += T(s1);
      dgamma[t.col] += T(sum_dz_xhat);
    }
    const double k = double(gamma[t.col]) * invstd;
    k_s[threadIdx.x] = T(k);
    q_s[threadIdx.x] = T(-k * invstd * sum_dz_xhat / double(n));
    r_s[threadIdx.x] = T(-k * s1 / double(n));
  }
  if constexpr (!kTraining) return;
  __syncthreads();
  if (!active) return;
  const T mean = saved_mean[t.col];
  const T k = k_s[threadIdx.x], q = q_s[threadIdx.x], r0 = r_s[threadIdx.x];
#pragma unroll 4
  for (int64_t r = t.begin + threadIdx.y; r < t.end; r += kRows) {
    const int64_t i = r * c + t.col;
    dx[i] = k * masked<kRelu>(dy, y, i) + q * (x[i] - mean) + r0;
  }
}

template <class F>
void with_flag(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

}  // namespace

int64_t batchnorm_workspace_size(int64_t n, int64_t c) { return 2 * layout(n, c).splits * c; }

template <class T>
void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, T* y, T* saved_mean, T* saved_invstd, int64_t n,
                       int64_t c, bool training, double momentum, double eps, bool relu,
                       double* workspace, Stream stream) {
  if (c <= 0) return;
  const Layout l = layout(n, c);
  const cudaStream_t s = to_stream(stream);
  const dim3 block(kCols, kRows);
  const dim3 grid(unsigned(l.tiles), unsigned(l.splits));
  if (training) {
    batchnorm_stats_kernel<T><<<grid, block, 0, s>>>(x, n, c, l.rows_per_split, workspace);
    check_launch("batchnorm_forward (statistics)");
  }
  with_flag(relu, [&](auto kRelu) {
    batchnorm_normalize_kernel<T, decltype(kRelu)::value><<<grid, block, 0, s>>>(
        x, gamma, beta, running_mean, running_var, y, saved_mean, saved_invstd, n, c,
        l.rows_per_split, l.splits, training, momentum, eps, workspace);
  });
  check_launch("batchnorm_forward (normalize)");
}

template <class T>
void batchnorm_backward(const T* dy, const T* x, const T* gamma, const T* saved_mean,
                        const T* saved_invstd, const T* y, T* dx, T* dgamma, T* dbeta,
                        int64_t n, int64_t c, bool training, bool relu, double* workspace,
                        Stream stream) {
  if (c <= 0) return;
  const Layout l = layout(n, c);
  const cudaStream_t s = to_stream(stream);
  const dim3 block(kCols, kRows);
  const dim3 grid(unsigned(l.tiles), unsigned(l.splits));
  with_flag(relu, [&](auto kRelu) {
    with_flag(training, [&](auto kTraining) {
      constexpr bool R = decltype(kRelu)::value;
      constexpr bool TR = decltype(kTraining)::value;
      batchnorm_backward_sums_kernel<T, R, TR><<<grid, block, 0, s>>>(
          dy, x, gamma, saved_mean, saved_invstd, y, dx, n, c, l.rows_per_split, workspace);
      check_launch("batchnorm_backward (sums)");
      const dim3 dx_grid(unsigned(l.tiles), TR ? unsigned(l.splits) : 1u);
      batchnorm_backward_dx_kernel<T, R, TR><<<dx_grid, block, 0, s>>>(
          dy, x, gamma, saved_mean, saved_invstd, y, dx, dgamma, dbeta, n, c, l.rows_per_split,
          l.splits, workspace);
      check_launch("batchnorm_backward (dx)");
    });
  });
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void batchnorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, T*, T*,        \
                                     int64_t, int64_t, bool, double, double, bool, double*,    \
                                     Stream);                                                  \
  template void batchnorm_backward<T>(const T*, const T*, const T*, const T*, const T*,       \
                                      const T*, T*, T*, T*, int64_t, int64_t, bool, bool,      \
                                      double*, Stream);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
