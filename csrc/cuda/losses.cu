// Losses on the GPU (formulas in losses.h).
//
// Row losses (softmax cross-entropy, hinge): one warp per row, grid-stride over rows; the
// softmax keeps a running (max, sum of e^(x - max)) pair, so a row is read once for the loss
// and once more for the gradient, and logits of any magnitude are safe. Elementwise losses: a
// grid-stride loop. Either way each block leaves its float64 sum (and the first row with a bad
// label) in the workspace, and one block adds the partials in a fixed order into the 0-d loss:
// no atomics, no host sync, the same bits on every run.
#include <climits>

#include "activation_math.h"
#include "cuda/common.cuh"
#include "losses.h"

namespace fastnn::cuda {
namespace {

constexpr int kMaxBlocks = 1024;  // partial sums in the workspace
constexpr int kRowsPerBlock = 8;  // warps per block for the row losses
constexpr int kFinishBlock = 256;

struct Partials {
  double* sums;      // kMaxBlocks
  int64_t* bad_row;  // kMaxBlocks; INT64_MAX when the block saw no bad label
};

Partials partials_in(void* workspace) {
  double* sums = static_cast<double*>(workspace);
  return Partials{sums, reinterpret_cast<int64_t*>(sums + kMaxBlocks)};
}

__device__ __forceinline__ int64_t warp_min(int64_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int64_t o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o < v ? o : v;
  }
  return v;
}

// Block-wide (sum, min) of the per-warp values held by lane 0 of each warp, stored as the
// block's partial by thread 0. All threads must call it.
__device__ void store_block_partial(double sum, int64_t bad, Partials p) {
  __shared__ double sums[32];
  __shared__ int64_t bads[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    sums[warp] = sum;
    bads[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  double s = 0.0;
  int64_t b = INT64_MAX;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) {
    s += sums[w];
    b = bads[w] < b ? bads[w] : b;
  }
  p.sums[blockIdx.x] = s;
  p.bad_row[blockIdx.x] = b;
}

// loss = scale * sum of the partials; status = first bad row or -1 (when status is given).
template <class T>
__global__ void loss_finish_kernel(Partials p, int blocks, double scale, T* loss,
                                   int64_t* status) {
  __shared__ double scratch[32];
  double s = 0.0;
  int64_t bad = INT64_MAX;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) {
    s += p.sums[i];
    bad = p.bad_row[i] < bad ? p.bad_row[i] : bad;
  }
  s = block_sum(s, scratch);
  bad = warp_min(bad);
  __shared__ int64_t bads[32];
  if ((threadIdx.x & 31) == 0) bads[threadIdx.x >> 5] = bad;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) bad = bads[w] < bad ? bads[w] : bad;
  if (loss != nullptr) *loss = bad == INT64_MAX ? T(s * scale) : T(NAN);
  if (status != nullptr) *status = bad == INT64_MAX ? -1 : bad;
}

template <class T>
void finish(Partials p, int blocks, double scale, T* loss, int64_t* status, cudaStream_t stream,
            const char* name) {
  loss_finish_kernel<<<1, kFinishBlock, 0, stream>>>(p, blocks, scale, loss, status);
  check_launch(name);
}

int row_blocks(int64_t rows) {
  const int64_t needed = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t cap = int64_t(multiprocessor_count()) * 4 < kMaxBlocks
                          ? int64_t(multiprocessor_count()) * 4
                          : int64_t(kMaxBlocks);
  return int(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

__device__ __forceinline__ void online_merge(double& m, double& s, double m2, double s2) {
  const double mm = m > m2 ? m : m2;
  const double a = m == -INFINITY ? 0.0 : s * exp(m - mm);
  const double b = m2 == -INFINITY ? 0.0 : s2 * exp(m2 - mm);
  m = mm;
  s = a + b;
}

// The loss of row xr (label y, checked) computed by one warp, returned to lane 0, with the
// gradient row gr (null: none) written as well.
template <class T>
struct SoftmaxCrossEntropyRow {
  // The running max/sum is kept in T per lane and merged in float64 across lanes. A NaN met
  // while a lane's max is still -inf would be lost (the next larger value restarts the sum,
  // and the merge skips lanes whose max is -inf), so NaNs are tracked apart: any NaN makes the
  // row's loss and gradient NaN, as on the CPU.
  __device__ double operator()(const T* xr, int64_t y, T* gr, int64_t cols, int lane,
                               T inv_rows) const {
    T m = -T(INFINITY), s = T(0);
    bool nan = false;
    for (int64_t j = lane; j < cols; j += 32) {
      const T v = xr[j];
      nan = nan || v != v;
      if (v > m) {
        s = (m == -T(INFINITY) ? T(0) : s * math_exp(m - v)) + T(1);
        m = v;
      } else {
        s += math_exp(v - m);
      }
    }
    double md = double(m), sd = double(s);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const double m2 = __shfl_xor_sync(0xffffffffu, md, offset);
      const double s2 = __shfl_xor_sync(0xffffffffu, sd, offset);
      online_merge(md, sd, m2, s2);
    }
    const double lse = __any_sync(0xffffffffu, nan) ? double(NAN) : md + log(sd);
    if (gr != nullptr) {
      const T lse_t = T(lse);
      for (int64_t j = lane; j < cols; j += 32)
        gr[j] = (math_exp(xr[j] - lse_t) - (j == y ? T(1) : T(0))) * inv_rows;
    }
    return lse - double(xr[y]);
  }
};

template <class T>
struct HingeRow {
  __device__ double operator()(const T* sr, int64_t y, T* gr, int64_t cols, int lane,
                               T inv_rows) const {
    const T sy = sr[y];
    T acc = T(0);
    int count = 0;
    for (int64_t j = lane; j < cols; j += 32) {
      const T margin = sr[j] - sy + T(1);
      const bool active = j != y && !(margin <= T(0));  // NaN propagates (see the CPU kernel)
      acc += active ? margin : T(0);
      count += active ? 1 : 0;
      if (gr != nullptr && j != y) gr[j] = active ? inv_rows : T(0);
    }
    acc = warp_sum(acc);
    count = warp_sum(count);
    if (gr != nullptr && lane == 0) gr[y] = -T(count) * inv_rows;
    return double(acc);
  }
};

// One warp per row, grid-stride over rows. A row whose label is outside [0, cols) gets a NaN
// gradient and is recorded instead of summed.
template <class T, class L, class Row>
__global__ void row_loss_kernel(const T* x, const void* labels, T* grad, int64_t rows,
                                int64_t cols, Partials p, Row row_loss) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kRowsPerBlock;
  const T inv_rows = T(1) / T(rows);
  double total = 0.0;
  int64_t bad = INT64_MAX;
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t y = int64_t(static_cast<const L*>(labels)[r]);
    T* gr = grad != nullptr ? grad + r * cols : nullptr;
    if (y < 0 || y >= cols) {  // the same for the whole warp
      if (gr != nullptr)
        for (int64_t j = lane; j < cols; j += 32) gr[j] = T(NAN);
      if (lane == 0) bad = r < bad ? r : bad;
      continue;
    }
    const double loss = row_loss(x + r * cols, y, gr, cols, lane, inv_rows);
    if (lane == 0) total += loss;
  }
  store_block_partial(total, bad, p);
}

template <class T>
struct Bce {
  __device__ T value(T z, T t) const {
    const T a = z < T(0) ? -z : z;
    return (z > T(0) ? z : T(0)) - z * t + log1p(math_exp(-a));
  }
  __device__ T grad(T z, T t) const { return Sigmoid<T>{}.forward(z) - t; }
};

template <class T>
struct Mse {
  __device__ T value(T p, T t) const { return (p - t) * (p - t); }
  __device__ T grad(T p, T t) const { return T(2) * (p - t); }
};

template <class T>
struct L1 {
  __device__ T value(T p, T t) const { return fabs(p - t); }
  __device__ T grad(T p, T t) const { return p > t ? T(1) : (p < t ? T(-1) : T(0)); }
};

template <class T, class Op>
__global__ void elementwise_loss_kernel(const T* pred, const T* target, T* grad, int64_t n,
                                        T scale, Op op, Partials p) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  double s = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T a = pred[i], b = target[i];
    s += double(op.value(a, b));
    if (grad != nullptr) grad[i] = op.grad(a, b) * scale;
  }
  s = warp_sum(s);
  store_block_partial(s, INT64_MAX, p);
}

template <class T, class Op>
void elementwise_loss(const T* pred, const T* target, T* loss, T* grad, int64_t n,
                      void* workspace, Stream stream, Op op, const char* name) {
  if (n <= 0) return;
  const cudaStream_t s = to_stream(stream);
  const Partials p = partials_in(workspace);
  const unsigned wanted = grid_for(n);
  const unsigned blocks = wanted < unsigned(kMaxBlocks) ? wanted : unsigned(kMaxBlocks);
  elementwise_loss_kernel<<<blocks, kBlock, 0, s>>>(pred, target, grad, n, T(1) / T(n), op, p);
  check_launch(name);
  if (loss != nullptr) finish<T>(p, int(blocks), 1.0 / double(n), loss, nullptr, s, name);
}

template <class T, class Row>
void row_loss(const T* x, const void* labels, bool labels64, T* loss, T* grad, int64_t rows,
              int64_t cols, int64_t* status, void* workspace, Stream stream, Row row,
              const char* name) {
  if (rows <= 0) return;
  const cudaStream_t s = to_stream(stream);
  const Partials p = partials_in(workspace);
  const int blocks = row_blocks(rows);
  if (labels64)
    row_loss_kernel<T, int64_t><<<blocks, 32 * kRowsPerBlock, 0, s>>>(x, labels, grad, rows, cols, p, row);
  else
    row_loss_kernel<T, int32_t><<<blocks, 32 * kRowsPerBlock, 0, s>>>(x, labels, grad, rows, cols, p, row);
  check_launch(name);
  if (loss != nullptr || status != nullptr)
    finish<T>(p, blocks, 1.0 / double(rows), loss, status, s, name);
}

}  // namespace

size_t loss_workspace_bytes() { return size_t(kMaxBlocks) * (sizeof(double) + sizeof(int64_t)); }

template <class T>
void softmax_cross_entropy_forward(const T* logits, const void* labels, bool labels64, T* loss,
                                   T* grad, int64_t rows, int64_t cols, int64_t* status,
                                   void* workspace, Stream stream) {
  row_loss(logits, labels, labels64, loss, grad, rows, cols, status, workspace, stream,
           SoftmaxCrossEntropyRow<T>{}, "softmax_cross_entropy_forward");
}

template <class T>
void hinge_forward(const T* scores, const void* labels, bool labels64, T* loss, T* grad,
                   int64_t rows, int64_t cols, int64_t* status, void* workspace, Stream stream) {
  row_loss(scores, labels, labels64, loss, grad, rows, cols, status, workspace, stream,
           HingeRow<T>{}, "hinge_forward");
}

template <class T>
void bce_with_logits_forward(const T* logits, const T* targets, T* loss, T* grad, int64_t n,
                             void* workspace, Stream stream) {
  elementwise_loss(logits, targets, loss, grad, n, workspace, stream, Bce<T>{},
                   "bce_with_logits_forward");
}

template <class T>
void mse_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n, void* workspace,
                 Stream stream) {
  elementwise_loss(pred, target, loss, grad, n, workspace, stream, Mse<T>{}, "mse_forward");
}

template <class T>
void l1_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n, void* workspace,
                Stream stream) {
  elementwise_loss(pred, target, loss, grad, n, workspace, stream, L1<T>{}, "l1_forward");
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void softmax_cross_entropy_forward<T>(const T*, const void*, bool, T*, T*, int64_t, \
                                                 int64_t, int64_t*, void*, Stream);            \
  template void hinge_forward<T>(const T*, const void*, bool, T*, T*, int64_t, int64_t,        \
                                 int64_t*, void*, Stream);                                     \
  template void bce_with_logits_forward<T>(const T*, const T*, T*, T*, int64_t, void*, Stream); \
  template void mse_forward<T>(const T*, const T*, T*, T*, int64_t, void*, Stream);            \
  template void l1_forward<T>(const T*, const T*, T*, T*, int64_t, void*, Stream);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
