// Activations on the GPU. Formulas in activations.h and activation_math.h.
//
// Elementwise forward/backward: the vectorized grid-stride map of common.cuh.
// PReLU: an indexed map for dx, and one block row per channel for dalpha (+=, atomics across
// the blocks of a channel, so its rounding order varies between runs).
// Softmax: online max and sum in one read of the row, then one read-and-write pass; one warp
// per row up to 1024 columns, one block per row beyond.
#include "activations.h"
#include "cuda/common.cuh"

namespace fastnn::cuda {
namespace {

template <class F>
struct ForwardOp {
  F f;
  template <class T>
  __device__ T operator()(T x) const { return f.forward(x); }
};

template <class F>
struct BackwardOp {
  F f;
  template <class T>
  __device__ T operator()(T dy, T saved) const { return f.backward(dy, saved); }
};

template <class T>
__global__ void prelu_forward_kernel(const T* x, const T* alpha, T* y, int64_t n,
                                     int64_t channels, int64_t inner) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T v = x[i];
    y[i] = v > T(0) ? v : alpha[(i / inner) % channels] * v;
  }
}

template <class T>
__global__ void prelu_backward_dx_kernel(const T* dy, const T* x, const T* alpha, T* dx,
                                         int64_t n, int64_t channels, int64_t inner) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = x[i] > T(0) ? dy[i] : alpha[(i / inner) % channels] * dy[i];
}

// grid (channels, splits): block (c, s) sums dy * x over x <= 0 for every `splits`-th slice of
// channel c's outer * inner elements.
template <class T>
__global__ void prelu_backward_dalpha_kernel(const T* dy, const T* x, T* dalpha, int64_t outer,
                                             int64_t channels, int64_t inner) {
  __shared__ T scratch[32];
  const int64_t c = blockIdx.x;
  const int64_t per_channel = outer * inner;
  const int64_t stride = int64_t(gridDim.y) * blockDim.x;
  T s = T(0);
  for (int64_t k = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; k < per_channel; k += stride) {
    const int64_t i = ((k / inner) * channels + c) * inner + k % inner;
    const T v = x[i];
    s += v > T(0) ? T(0) : dy[i] * v;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) atomicAdd(dalpha + c, s);
}

// Running (max, sum of e^(x - max)) pairs, merged so that -inf entries add nothing and NaN
// propagates.
template <class T>
__device__ __forceinline__ void softmax_merge(T& m, T& s, T m2, T s2) {
  const T inf = T(INFINITY);
  const T mm = m > m2 ? m : m2;
  const T a = m == -inf ? T(0) : s * math_exp(m - mm);
  const T b = m2 == -inf ? T(0) : s2 * math_exp(m2 - mm);
  m = mm;
  s = a + b;
}

// Threads that share a row: a warp, or (kBlockPerRow) the whole block.
template <class T, bool kBlockPerRow>
struct RowGroup {
  int64_t row;
  int lane;
  int width;
  __device__ RowGroup() {
    if (kBlockPerRow) {
      row = blockIdx.x;
      lane = threadIdx.x;
      width = blockDim.x;
    } else {
      row = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
      lane = threadIdx.x & 31;
      width = 32;
    }
  }
};

template <class T, bool kBlockPerRow>
__device__ __forceinline__ void row_max_sum(T& m, T& s) {
  __shared__ T sm[32];
  __shared__ T ss[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, offset);
    const T s2 = __shfl_xor_sync(0xffffffffu, s, offset);
    softmax_merge(m, s, m2, s2);
  }
  if (!kBlockPerRow) return;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  m = -T(INFINITY);
  s = T(0);
  for (int w = 0; w < int(blockDim.x >> 5); ++w) softmax_merge(m, s, sm[w], ss[w]);
}

template <class T, bool kBlockPerRow>
__device__ __forceinline__ T row_sum(T v) {
  __shared__ T scratch[32];
  if (kBlockPerRow) return block_sum(v, scratch);
  return warp_sum(v);
}

template <class T, bool kBlockPerRow>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t rows, int64_t cols, bool log) {
  const RowGroup<T, kBlockPerRow> g;
  if (!kBlockPerRow && g.row >= rows) return;  // whole warps leave; no block barrier follows
  const T* xr = x + g.row * cols;
  T* yr = y + g.row * cols;
  T m = -T(INFINITY), s = T(0);
  for (int64_t j = g.lane; j < cols; j += g.width) softmax_merge(m, s, xr[j], T(1));
  row_max_sum<T, kBlockPerRow>(m, s);
  if (log) {
    const T lse = m + ::log(s);
    for (int64_t j = g.lane; j < cols; j += g.width) yr[j] = xr[j] - lse;
  } else {
    const T inv = T(1) / s;
    for (int64_t j = g.lane; j < cols; j += g.width) yr[j] = math_exp(xr[j] - m) * inv;
  }
}

template <class T, bool kBlockPerRow>
__global__ void softmax_backward_kernel(const T* dy, const T* y, T* dx, int64_t rows,
                                        int64_t cols, bool log) {
  const RowGroup<T, kBlockPerRow> g;
  if (!kBlockPerRow && g.row >= rows) return;
  const T* dyr = dy + g.row * cols;
  const T* yr = y + g.row * cols;
  T* dxr = dx + g.row * cols;
  T s = T(0);
  for (int64_t j = g.lane; j < cols; j += g.width) s += log ? dyr[j] : dyr[j] * yr[j];
  s = row_sum<T, kBlockPerRow>(s);
  for (int64_t j = g.lane; j < cols; j += g.width)
    dxr[j] = log ? dyr[j] - math_exp(yr[j]) * s : yr[j] * (dyr[j] - s);
}

constexpr int64_t kWarpRowCols = 1024;
constexpr int kRowsPerBlock = 8;  // warps per block in warp-per-row mode

template <bool kForward, class T>
void launch_softmax(const T* a, const T* b, T* out, int64_t rows, int64_t cols, bool log,
                    Stream stream) {
  if (rows <= 0 || cols <= 0) return;
  const cudaStream_t s = to_stream(stream);
  if (cols <= kWarpRowCols) {
    const unsigned grid = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    if constexpr (kForward)
      softmax_forward_kernel<T, false><<<grid, 32 * kRowsPerBlock, 0, s>>>(a, out, rows, cols, log);
    else
      softmax_backward_kernel<T, false><<<grid, 32 * kRowsPerBlock, 0, s>>>(a, b, out, rows, cols, log);
  } else {
    if constexpr (kForward)
      softmax_forward_kernel<T, true><<<unsigned(rows), 512, 0, s>>>(a, out, rows, cols, log);
    else
      softmax_backward_kernel<T, true><<<unsigned(rows), 512, 0, s>>>(a, b, out, rows, cols, log);
  }
  check_launch(kForward ? "softmax_forward" : "softmax_backward");
}

}  // namespace

template <class T>
void activation_forward(Activation act, const T* x, T* y, int64_t n, T alpha, Stream stream) {
  with_activation<T>(act, alpha, [&](auto f) {
    launch_map(Inputs<T, 1>{{x}}, y, n, ForwardOp<decltype(f)>{f}, stream, "activation_forward");
  });
}

template <class T>
void activation_backward(Activation act, const T* dy, const T* saved, T* dx, int64_t n, T alpha,
                         Stream stream) {
  with_activation<T>(act, alpha, [&](auto f) {
    launch_map(Inputs<T, 2>{{dy, saved}}, dx, n, BackwardOp<decltype(f)>{f}, stream,
               "activation_backward");
  });
}

template <class T>
void prelu_forward(const T* x, const T* alpha, T* y, int64_t outer, int64_t channels,
                   int64_t inner, Stream stream) {
  const int64_t n = outer * channels * inner;
  if (n <= 0) return;
  prelu_forward_kernel<<<grid_for(n), kBlock, 0, to_stream(stream)>>>(x, alpha, y, n, channels,
                                                                      inner);
  check_launch("prelu_forward");
}

template <class T>
void prelu_backward(const T* dy, const T* x, const T* alpha, T* dx, T* dalpha, int64_t outer,
                    int64_t channels, int64_t inner, Stream stream) {
  const int64_t n = outer * channels * inner;
  if (n <= 0) return;
  const cudaStream_t s = to_stream(stream);
  prelu_backward_dx_kernel<<<grid_for(n), kBlock, 0, s>>>(dy, x, alpha, dx, n, channels, inner);
  check_launch("prelu_backward (dx)");
  const int64_t per_channel = outer * inner;
  const int64_t want = (per_channel + 8 * kBlock - 1) / (8 * kBlock);
  const unsigned splits = unsigned(want < 1 ? 1 : (want > 1024 ? 1024 : want));
  prelu_backward_dalpha_kernel<<<dim3(unsigned(channels), splits), kBlock, 0, s>>>(
      dy, x, dalpha, outer, channels, inner);
  check_launch("prelu_backward (dalpha)");
}

template <class T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, bool log, Stream stream) {
  launch_softmax<true, T>(x, nullptr, y, rows, cols, log, stream);
}

template <class T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool log,
                      Stream stream) {
  launch_softmax<false, T>(dy, y, dx, rows, cols, log, stream);
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void activation_forward<T>(Activation, const T*, T*, int64_t, T, Stream);          \
  template void activation_backward<T>(Activation, const T*, const T*, T*, int64_t, T, Stream); \
  template void prelu_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, Stream);  \
  template void prelu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t,     \
                                  int64_t, Stream);                                            \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t, bool, Stream);             \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, bool, Stream);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
