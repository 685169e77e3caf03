// A chain of dense layers on the CPU, row block by row block.
//
// Layer by layer over the whole batch, a narrow network (64 features, 16K rows: 4 MB per
// activation) streams every activation through memory several times per step: the GEMM writes
// z, a pass adds the bias and applies the activation, the backward pass reads it again, and
// OpenBLAS splits each short GEMM over its threads and joins them. Here each OpenMP thread
// takes a contiguous share of row blocks (about kChainBlockBytes of the widest activation
// each) and carries every block through all layers while it is in its L2 cache: forward, the
// GEMM of each layer then its bias-and-activation pass; backward, from the top, dz, the dW
// GEMM (accumulated per thread), and dz W^T, which the next layer down turns into its dz in
// place. The GEMMs are NumPy's BLAS, called on one thread from each of ours (blas.h).
//
// Each thread's dW accumulates in its own buffer (thread 0's straight into dW), its db in
// float64; they are added into dW and db at the end, so the rounding of the sums depends on
// the number of threads, as a multi-threaded BLAS's does.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/blas.h"
#include "cpu/dense_passes.h"
#include "cpu/parallel.h"
#include "dense.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kChainBlockBytes = int64_t(1) << 18;
constexpr int64_t kRowAlign = 16;

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// The size of the running team, which may be smaller than asked for (a nested region,
// OMP_THREAD_LIMIT, OMP_DYNAMIC): the work is shared over the threads that exist.
int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Thread t's share [begin, end) of `count` items split over `threads`.
std::pair<int64_t, int64_t> share(int64_t count, int64_t t, int64_t threads) {
  return {count * t / threads, count * (t + 1) / threads};
}

template <class T>
void check_chain(const std::vector<ChainLayer<T>>& layers, int64_t n, int64_t block_rows) {
  if (layers.empty()) throw std::invalid_argument("fastnn: dense chain without layers");
  if (n <= 0 || block_rows <= 0) throw std::invalid_argument("fastnn: dense chain with no rows");
  if (!blas_available()) throw std::runtime_error("fastnn: dense chain without a BLAS (set_blas)");
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    with_activation<T>(l.act, l.alpha, [](auto) {});  // throws on an unknown code
    if (i > 0 && l.in != layers[i - 1].out) {
      throw std::invalid_argument("fastnn: dense chain layer " + std::to_string(i) +
                                  " does not take the previous layer's width");
    }
  }
}

template <class T>
int64_t widest_of(const std::vector<ChainLayer<T>>& layers) {
  int64_t w = layers.front().in;
  for (const auto& l : layers) w = std::max(w, l.out);
  return w;
}

}  // namespace

int64_t chain_block_rows(int64_t widest, size_t itemsize) {
  const int64_t rows = kChainBlockBytes / std::max<int64_t>(1, widest * int64_t(itemsize));
  return std::max(kRowAlign, rows / kRowAlign * kRowAlign);
}

template <class T>
void dense_chain_forward(const T* x, int64_t n, const std::vector<ChainLayer<T>>& layers,
                         int64_t block_rows) {
  if (block_rows == 0) block_rows = chain_block_rows(widest_of(layers), sizeof(T));
  check_chain(layers, n, block_rows);
  block_rows = std::min(block_rows, n);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  const int threads = int(std::min<int64_t>(max_threads(), blocks));
  SingleThreadedBlas single;
#pragma omp parallel num_threads(threads)
  {
    const auto [first, last] = share(blocks, thread_index(), team_size());
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      const T* in = x + r0 * layers.front().in;
      for (const auto& l : layers) {
        T* y = l.y + r0 * l.out;
        T* aux = l.aux != nullptr ? l.aux + r0 * l.out : nullptr;
        T* z = aux != nullptr ? aux : y;
        gemm<T>(false, false, rows, l.out, l.in, T(1), in, l.in, l.W, l.out, T(0), z, l.out);
        if (l.b != nullptr || l.act != Activation::identity) {
          // aux already holds x W; it is rewritten only when b is added.
          bias_activation_forward<T>(l.act, z, l.b, y, l.b != nullptr ? aux : nullptr, rows,
                                     l.out, l.alpha);
        }
        in = y;
      }
    }
  }
}

template <class T>
void dense_chain_backward(const T* dy, const T* x, int64_t n,
                          const std::vector<ChainLayer<T>>& layers, T* dx, int64_t block_rows) {
  const int64_t wide = widest_of(layers);
  if (block_rows == 0) block_rows = chain_block_rows(wide, sizeof(T));
  check_chain(layers, n, block_rows);
  block_rows = std::min(block_rows, n);
  const int64_t count = int64_t(layers.size());
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  const int threads = int(std::min<int64_t>(max_threads(), blocks));

  // Offsets of each layer's dW and db in a thread's partial sums.
  std::vector<int64_t> w_at(count + 1, 0), b_at(count + 1, 0);
  for (int64_t i = 0; i < count; ++i) {
    w_at[i + 1] = w_at[i] + layers[i].in * layers[i].out;
    b_at[i + 1] = b_at[i] + layers[i].out;
  }
  std::vector<T> dW_part(size_t(threads - 1) * w_at[count]);  // threads 1.. (0 writes dW)
  std::vector<double> db_part(size_t(threads) * b_at[count], 0.0);
  std::vector<T> scratch(size_t(threads) * (2 * block_rows * wide + wide));

  SingleThreadedBlas single;
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_index();
    const int team = team_size();  // <= threads, the partial sums allocated
    T* buffers[2] = {scratch.data() + t * (2 * block_rows * wide + wide), nullptr};
    buffers[1] = buffers[0] + block_rows * wide;
    T* sums = buffers[1] + block_rows * wide;
    double* db_total = db_part.data() + t * b_at[count];
    const auto [first, last] = share(blocks, t, team);
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      const T* g = dy + r0 * layers.back().out;  // dL/dy of layer i
      T* g_scratch = nullptr;                    // g, when it is one of our buffers
      for (int64_t i = count - 1; i >= 0; --i) {
        const auto& l = layers[i];
        double* total = l.db != nullptr ? db_total + b_at[i] : nullptr;
        const T* dz = g;
        if (l.act == Activation::identity) {
          activation_grad_rows(Identity<T>{}, g, static_cast<const T*>(nullptr),
                               static_cast<T*>(nullptr), total, sums, rows, l.out);
        } else {
          const T* saved = (l.aux != nullptr ? l.aux : l.y) + r0 * l.out;
          T* out = g_scratch != nullptr ? g_scratch : buffers[0];
          with_activation<T>(l.act, l.alpha, [&](auto f) {
            activation_grad_rows(f, g, saved, out, total, sums, rows, l.out);
          });
          dz = out;
        }
        const T* below = (i == 0 ? x : layers[i - 1].y) + r0 * l.in;
        T* dW = t == 0 ? l.dW : dW_part.data() + (t - 1) * w_at[count] + w_at[i];
        const T beta = (t == 0 || blk > first) ? T(1) : T(0);
        gemm<T>(true, false, l.in, l.out, rows, T(1), below, l.in, dz, l.out, beta, dW, l.out);
        if (i > 0) {
          T* next = dz == buffers[0] ? buffers[1] : buffers[0];
          gemm<T>(false, true, rows, l.in, l.out, T(1), dz, l.out, l.W, l.out, T(0), next, l.in);
          g = g_scratch = next;
        } else if (dx != nullptr) {
          gemm<T>(false, true, rows, l.in, l.out, T(1), dz, l.out, l.W, l.out, T(0),
                  dx + r0 * l.in, l.in);
        }
      }
    }
#pragma omp barrier
    // Add the other threads' dW into dW, each thread over its share of every layer's elements.
    for (int64_t i = 0; i < count && team > 1; ++i) {
      const int64_t size = w_at[i + 1] - w_at[i];
      const auto [begin, end] = share(size, t, team);
      T* dW = layers[i].dW;
      for (int64_t s = 1; s < team; ++s) {
        const T* part = dW_part.data() + (s - 1) * w_at[count] + w_at[i];
#pragma omp simd
        for (int64_t e = begin; e < end; ++e) dW[e] += part[e];
      }
    }
    if (t == 0) {
      for (int64_t i = 0; i < count; ++i) {
        if (layers[i].db == nullptr) continue;
        for (int64_t j = 0; j < layers[i].out; ++j) {
          double total = 0.0;
          for (int s = 0; s < team; ++s) total += db_part[s * b_at[count] + b_at[i] + j];
          layers[i].db[j] += T(total);
        }
      }
    }
  }
}

#define FASTNN_INSTANTIATE(T)                                                                   \
  template void dense_chain_forward<T>(const T*, int64_t, const std::vector<ChainLayer<T>>&,    \
                                       int64_t);                                                \
  template void dense_chain_backward<T>(const T*, const T*, int64_t,                           \
                                        const std::vector<ChainLayer<T>>&, T*, int64_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
