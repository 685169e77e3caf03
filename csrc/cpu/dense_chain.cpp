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
//
// bf16 (medium precision, float32): the GEMMs are oneDNN's bf16 GEMM, one thread each, with
// bf16 operands that the passes the chain makes anyway write beside their float32 results:
// the bias-and-activation pass writes the next layer's input in bf16, the dz pass writes dz
// only in bf16 (its float32 values feed nothing but the bias sums, which it adds itself). The
// weights are rounded once per call, the chain's input once per block; the backward (not the
// fused step, whose forward kept them) rounds each layer's saved input rows per block, where
// it would otherwise read them in float32.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/dense_passes.h"
#include "cpu/parallel.h"
#include "dense.h"
#include "losses.h"

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
void check_chain(const std::vector<ChainLayer<T>>& layers, int64_t n, int64_t block_rows,
                 bool bf16_gemms) {
  if (layers.empty()) throw std::invalid_argument("fastnn: dense chain without layers");
  if (n <= 0 || block_rows <= 0) throw std::invalid_argument("fastnn: dense chain with no rows");
  if (bf16_gemms && !std::is_same_v<T, float>) {
    throw std::invalid_argument("fastnn: bf16 dense chain for a dtype other than float32");
  }
  if (bf16_gemms && !bf16_gemm_available()) {
    throw std::runtime_error("fastnn: bf16 dense chain without oneDNN (set_bf16_gemm)");
  }
  if (!bf16_gemms && !blas_available()) {
    throw std::runtime_error("fastnn: dense chain without a BLAS (set_blas)");
  }
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

// The layers' weights rounded to bf16 once per call, for the bf16 GEMMs.
struct Bf16Weights {
  std::vector<int64_t> at;
  std::vector<bf16> W;

  template <class T>
  explicit Bf16Weights(const std::vector<ChainLayer<T>>& layers) : at(layers.size() + 1, 0) {
    for (size_t i = 0; i < layers.size(); ++i) at[i + 1] = at[i] + layers[i].in * layers[i].out;
    W.resize(at.back());
    if constexpr (std::is_same_v<T, float>) {
      for (size_t i = 0; i < layers.size(); ++i) {
        to_bf16_array(layers[i].W, W.data() + at[i], at[i + 1] - at[i]);
      }
    }
  }
  const bf16* of(size_t i) const { return W.data() + at[i]; }
};

// C = op(A) op(B) (+ C when accumulate), one thread: NumPy's BLAS in T, or, with w16 (bf16
// operands a16, b16 given), oneDNN's bf16 GEMM. False where oneDNN failed.
template <class T>
bool block_gemm(const Bf16Weights* w16, bool trans_a, bool trans_b, int64_t m, int64_t n,
                int64_t k, const T* a, const bf16* a16, int64_t lda, const T* b, const bf16* b16,
                int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (w16 != nullptr) {
      return gemm_bf16(trans_a, trans_b, m, n, k, 1.0f, a16, lda, b16, ldb,
                       accumulate ? 1.0f : 0.0f, c, ldc);
    }
  }
  gemm<T>(trans_a, trans_b, m, n, k, T(1), a, lda, b, ldb, accumulate ? T(1) : T(0), c, ldc);
  return true;
}

// The forward of one block of `rows` rows from its input rows `in`: for each layer, the GEMM
// into its pre-activation (aux) or output, then the bias-and-activation pass. y_of(i),
// aux_of(i): where layer i's rows go (aux null when its activation reads none). With w16
// (bf16), in16_of(i) is where layer i's input rows are in bf16: layer 0's are rounded from
// `in` here, the others written by the pass of the layer below. False where oneDNN failed.
template <class T, class Y, class Aux, class In16>
bool forward_block(const std::vector<ChainLayer<T>>& layers, const T* in, int64_t rows, Y y_of,
                   Aux aux_of, const Bf16Weights* w16, In16 in16_of) {
  bool ok = true;
  const size_t count = layers.size();
  if (w16 != nullptr) {
    bf16* in16 = in16_of(0);
    const int64_t size = rows * layers.front().in;
#pragma omp simd
    for (int64_t e = 0; e < size; ++e) in16[e] = to_bf16(float(in[e]));
  }
  for (size_t i = 0; i < count; ++i) {
    const auto& l = layers[i];
    T* y = y_of(i);
    T* aux = aux_of(i);
    T* z = aux != nullptr ? aux : y;
    const bf16* in16 = w16 != nullptr ? in16_of(i) : nullptr;
    const bf16* W16 = w16 != nullptr ? w16->of(i) : nullptr;
    ok &= block_gemm<T>(w16, false, false, rows, l.out, l.in, in, in16, l.in, l.W, W16, l.out,
                        false, z, l.out);
    bf16* y16 = w16 != nullptr && i + 1 < count ? in16_of(i + 1) : nullptr;
    if (l.b != nullptr || l.act != Activation::identity || y16 != nullptr) {
      // aux already holds x W; it is rewritten only when b is added.
      bias_activation_forward<T>(l.act, z, l.b, y, l.b != nullptr ? aux : nullptr, y16, rows,
                                 l.out, l.alpha);
    }
    in = y;
  }
  return ok;
}

// After a parallel region: oneDNN's failure, reported by a thread, as an exception.
void check_bf16_gemms(bool ok) {
  if (!ok) throw std::runtime_error("fastnn: oneDNN's dnnl_gemm_bf16bf16f32 failed");
}

}  // namespace

int64_t chain_block_rows(int64_t widest, size_t itemsize) {
  const int64_t rows = kChainBlockBytes / std::max<int64_t>(1, widest * int64_t(itemsize));
  return std::max(kRowAlign, rows / kRowAlign * kRowAlign);
}

template <class T>
void dense_chain_forward(const T* x, int64_t n, const std::vector<ChainLayer<T>>& layers,
                         int64_t block_rows, bool bf16_gemms) {
  const int64_t wide = widest_of(layers);
  if (block_rows == 0) block_rows = chain_block_rows(wide, sizeof(T));
  check_chain(layers, n, block_rows, bf16_gemms);
  block_rows = std::min(block_rows, n);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  const int threads = int(std::min<int64_t>(max_threads(), blocks));
  std::unique_ptr<Bf16Weights> w16(bf16_gemms ? new Bf16Weights(layers) : nullptr);
  // Per thread, two (block_rows, wide) bf16 inputs: layer i reads one, its pass writes the other.
  std::vector<bf16> inputs16(bf16_gemms ? size_t(threads) * 2 * block_rows * wide : 0);
  bool ok = true;
  SingleThreadedBlas single;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    const int t = thread_index();
    bf16* mine16 = bf16_gemms ? inputs16.data() + size_t(t) * 2 * block_rows * wide : nullptr;
    const auto [first, last] = share(blocks, t, team_size());
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      ok = forward_block(
               layers, x + r0 * layers.front().in, rows,
               [&](size_t i) { return layers[i].y + r0 * layers[i].out; },
               [&](size_t i) {
                 return layers[i].aux == nullptr ? nullptr : layers[i].aux + r0 * layers[i].out;
               },
               w16.get(), [&](size_t i) { return mine16 + (i % 2) * block_rows * wide; }) &&
           ok;
    }
  }
  check_bf16_gemms(ok);
}

namespace {

// Per-thread partial sums of the parameter gradients: each layer's dW (threads 1.. only;
// thread 0 accumulates straight into dW) and db (float64, every thread), at fixed offsets.
template <class T>
struct Partials {
  std::vector<int64_t> w_at, b_at;
  std::vector<T> dW;
  std::vector<double> db;

  Partials(const std::vector<ChainLayer<T>>& layers, int threads)
      : w_at(layers.size() + 1, 0), b_at(layers.size() + 1, 0) {
    for (size_t i = 0; i < layers.size(); ++i) {
      w_at[i + 1] = w_at[i] + layers[i].in * layers[i].out;
      b_at[i + 1] = b_at[i] + layers[i].out;
    }
    dW.resize(size_t(threads - 1) * w_at.back());
    db.assign(size_t(threads) * b_at.back(), 0.0);
  }
  T* dW_of(const std::vector<ChainLayer<T>>& layers, int t, size_t i) {
    return t == 0 ? layers[i].dW : dW.data() + (t - 1) * w_at.back() + w_at[i];
  }
  double* db_of(int t) { return db.data() + t * b_at.back(); }

  // After a barrier, on every thread of the team: the other threads' dW added into dW (each
  // thread over its share of every layer's elements), then, on thread 0, every thread's db.
  void reduce(const std::vector<ChainLayer<T>>& layers, int t, int team) {
    for (size_t i = 0; i < layers.size() && team > 1; ++i) {
      const auto [begin, end] = share(w_at[i + 1] - w_at[i], t, team);
      T* out = layers[i].dW;
      for (int s = 1; s < team; ++s) {
        const T* part = dW.data() + (s - 1) * w_at.back() + w_at[i];
#pragma omp simd
        for (int64_t e = begin; e < end; ++e) out[e] += part[e];
      }
    }
    if (t != 0) return;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (layers[i].db == nullptr) continue;
      for (int64_t j = 0; j < layers[i].out; ++j) {
        double total = 0.0;
        for (int s = 0; s < team; ++s) total += db[s * b_at.back() + b_at[i] + j];
        layers[i].db[j] += T(total);
      }
    }
  }
};

// One thread's scratch for a block's backward: two (block_rows, widest) gradient buffers and
// a row of column sums.
template <class T>
struct BlockScratch {
  T* grad[2];
  T* sums;
  BlockScratch(T* base, int64_t block_rows, int64_t wide)
      : grad{base, base + block_rows * wide}, sums(base + 2 * block_rows * wide) {}
  static int64_t size(int64_t block_rows, int64_t wide) { return 2 * block_rows * wide + wide; }
};

// One thread's bf16 scratch for a block's backward (bf16 chains only): dz (rows, widest) and,
// for the plain backward, a layer's input rows rounded to bf16.
struct BlockScratch16 {
  bf16* dz;
  bf16* input;
  BlockScratch16(bf16* base, int64_t block_rows, int64_t wide)
      : dz(base), input(base + block_rows * wide) {}
  static int64_t size(int64_t block_rows, int64_t wide) { return 2 * block_rows * wide; }
};

// The backward of one block of `rows` rows, from g = dL/d(last y) (rows, out): for each layer
// from the top, dz (in place when g is scratch), db partial sums, dW += input^T dz, and the
// gradient of the layer below (or dx, when not null). saved(i): what layer i's activation
// derivative reads for these rows; input(i): layer i's input rows (x's for i = 0). With w16
// (bf16): dz is written in bf16 only (s16.dz), and input16(i) gives layer i's input rows in
// bf16. False where oneDNN failed.
template <class T, class Saved, class Input, class Input16>
bool backward_block(const std::vector<ChainLayer<T>>& layers, const T* g, bool g_is_scratch,
                    int64_t rows, BlockScratch<T>& scratch, Partials<T>& partials, int t,
                    bool accumulate, Saved saved, Input input, T* dx, const Bf16Weights* w16,
                    BlockScratch16* s16, Input16 input16) {
  bool ok = true;
  T* g_scratch = g_is_scratch ? const_cast<T*>(g) : nullptr;
  double* db_total = partials.db_of(t);
  for (int64_t i = int64_t(layers.size()) - 1; i >= 0; --i) {
    const auto& l = layers[i];
    double* total = l.db != nullptr ? db_total + partials.b_at[i] : nullptr;
    const T* dz = g;
    bf16* dz16 = w16 != nullptr ? s16->dz : nullptr;
    if (dz16 != nullptr) {
      const T* from = l.act == Activation::identity ? nullptr : saved(i);
      with_activation<T>(l.act, l.alpha, [&](auto f) {
        activation_grad_rows(f, g, from, static_cast<T*>(nullptr), dz16, total, scratch.sums,
                             rows, l.out);
      });
    } else if (l.act == Activation::identity) {
      activation_grad_rows(Identity<T>{}, g, static_cast<const T*>(nullptr),
                           static_cast<T*>(nullptr), static_cast<bf16*>(nullptr), total,
                           scratch.sums, rows, l.out);
    } else {
      T* out = g_scratch != nullptr ? g_scratch : scratch.grad[0];
      const T* from = saved(i);
      with_activation<T>(l.act, l.alpha, [&](auto f) {
        activation_grad_rows(f, g, from, out, static_cast<bf16*>(nullptr), total, scratch.sums,
                             rows, l.out);
      });
      dz = out;
    }
    const bf16* in16 = w16 != nullptr ? input16(i) : nullptr;
    const bf16* W16 = w16 != nullptr ? w16->of(i) : nullptr;
    ok &= block_gemm<T>(w16, true, false, l.in, l.out, rows, input(i), in16, l.in, dz, dz16, l.out,
                        t == 0 || accumulate, partials.dW_of(layers, t, i), l.out);
    // The layer below's gradient goes to the scratch buffer that neither g nor dz is in.
    T* below = dx;
    if (i > 0) {
      below = dz == scratch.grad[0] || g == scratch.grad[0] ? scratch.grad[1] : scratch.grad[0];
    }
    if (below != nullptr) {
      ok &= block_gemm<T>(w16, false, true, rows, l.in, l.out, dz, dz16, l.out, l.W, W16, l.out,
                          false, below, l.in);
    }
    if (i > 0) g = g_scratch = below;
  }
  return ok;
}

}  // namespace

template <class T>
void dense_chain_backward(const T* dy, const T* x, int64_t n,
                          const std::vector<ChainLayer<T>>& layers, T* dx, int64_t block_rows,
                          bool bf16_gemms) {
  const int64_t wide = widest_of(layers);
  if (block_rows == 0) block_rows = chain_block_rows(wide, sizeof(T));
  check_chain(layers, n, block_rows, bf16_gemms);
  block_rows = std::min(block_rows, n);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  const int threads = int(std::min<int64_t>(max_threads(), blocks));
  Partials<T> partials(layers, threads);
  const int64_t per_thread = BlockScratch<T>::size(block_rows, wide);
  std::vector<T> scratch(size_t(threads) * per_thread);
  std::unique_ptr<Bf16Weights> w16(bf16_gemms ? new Bf16Weights(layers) : nullptr);
  const int64_t per_thread16 = bf16_gemms ? BlockScratch16::size(block_rows, wide) : 0;
  std::vector<bf16> scratch16(size_t(threads) * per_thread16);
  bool ok = true;

  SingleThreadedBlas single;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    const int t = thread_index();
    const int team = team_size();  // <= threads, the partial sums allocated
    BlockScratch<T> mine(scratch.data() + t * per_thread, block_rows, wide);
    BlockScratch16 mine16(scratch16.data() + t * per_thread16, block_rows, wide);
    const auto [first, last] = share(blocks, t, team);
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      auto input = [&](int64_t i) { return (i == 0 ? x : layers[i - 1].y) + r0 * layers[i].in; };
      ok = backward_block(
               layers, dy + r0 * layers.back().out, false, rows, mine, partials, t, blk > first,
               [&](int64_t i) {
                 const auto& l = layers[i];
                 return (l.aux != nullptr ? l.aux : l.y) + r0 * l.out;
               },
               input, dx != nullptr ? dx + r0 * layers.front().in : nullptr, w16.get(), &mine16,
               [&](int64_t i) {
                 // The saved input rows, rounded while this block reads them anyway.
                 const T* from = input(i);
                 const int64_t size = rows * layers[i].in;
#pragma omp simd
                 for (int64_t e = 0; e < size; ++e) mine16.input[e] = to_bf16(float(from[e]));
                 return static_cast<const bf16*>(mine16.input);
               }) &&
           ok;
    }
#pragma omp barrier
    partials.reduce(layers, t, team);
  }
  check_bf16_gemms(ok);
}

namespace {

bool needs_pre_activation(Activation act) {
  return act == Activation::leaky_relu || act == Activation::gelu || act == Activation::gelu_tanh;
}

// The mean loss of rows [r0, r0 + rows) into *value and its gradient (scaled for those rows
// alone) into grad, by the loss kernels of cpu/losses.cpp.
template <class T>
void block_loss(ChainLoss kind, const T* pred, const void* labels, bool labels64,
                const T* targets, T* value, T* grad, int64_t r0, int64_t rows, int64_t cols) {
  const void* lab = labels == nullptr
                        ? nullptr
                        : static_cast<const char*>(labels) + r0 * (labels64 ? 8 : 4);
  const T* target = targets == nullptr ? nullptr : targets + r0 * cols;
  switch (kind) {
    case ChainLoss::softmax_cross_entropy:
      softmax_cross_entropy_forward<T>(pred, lab, labels64, value, grad, rows, cols);
      return;
    case ChainLoss::hinge:
      hinge_forward<T>(pred, lab, labels64, value, grad, rows, cols);
      return;
    case ChainLoss::bce_with_logits:
      bce_with_logits_forward<T>(pred, target, value, grad, rows * cols);
      return;
    case ChainLoss::mse:
      mse_forward<T>(pred, target, value, grad, rows * cols);
      return;
    case ChainLoss::l1:
      l1_forward<T>(pred, target, value, grad, rows * cols);
      return;
  }
}

}  // namespace

template <class T>
void dense_chain_step(const T* x, int64_t n, const std::vector<ChainLayer<T>>& layers,
                      ChainLoss loss, const void* labels, bool labels64, const T* targets,
                      T* loss_out, T* out, T* dx, int64_t block_rows, bool bf16_gemms) {
  const int64_t wide = widest_of(layers);
  // A thread's block holds every layer's activations (and pre-activations where needed).
  std::vector<int64_t> y_at, aux_at;
  int64_t per_row = 0;
  for (const auto& l : layers) {
    y_at.push_back(per_row);
    per_row += l.out;
    aux_at.push_back(needs_pre_activation(l.act) ? per_row : -1);
    per_row += needs_pre_activation(l.act) ? l.out : 0;
  }
  // bf16: every layer's input rows in bf16 too, kept from the forward for the dW GEMMs.
  std::vector<int64_t> in16_at;
  int64_t per_row16 = 0;
  for (const auto& l : layers) {
    in16_at.push_back(per_row16);
    per_row16 += bf16_gemms ? l.in : 0;
  }
  if (block_rows == 0) block_rows = chain_block_rows(per_row + 2 * wide, sizeof(T));
  check_chain(layers, n, block_rows, bf16_gemms);
  if (int(loss) < 0 || int(loss) > int(ChainLoss::l1)) {
    throw std::invalid_argument("fastnn: unknown chain loss code " + std::to_string(int(loss)));
  }
  const bool classes = loss == ChainLoss::softmax_cross_entropy || loss == ChainLoss::hinge;
  if (classes ? labels == nullptr : targets == nullptr) {
    throw std::invalid_argument("fastnn: the chain's loss needs its labels or targets");
  }
  block_rows = std::min(block_rows, n);
  const int64_t blocks = (n + block_rows - 1) / block_rows;
  const int threads = int(std::min<int64_t>(max_threads(), blocks));
  Partials<T> partials(layers, threads);
  const int64_t per_thread = BlockScratch<T>::size(block_rows, wide) + block_rows * per_row;
  std::vector<T> scratch(size_t(threads) * per_thread);
  std::vector<double> loss_part(threads, 0.0);
  const int64_t classes_out = layers.back().out;
  std::unique_ptr<Bf16Weights> w16(bf16_gemms ? new Bf16Weights(layers) : nullptr);
  const int64_t per_thread16 =
      bf16_gemms ? BlockScratch16::size(block_rows, wide) + block_rows * per_row16 : 0;
  std::vector<bf16> scratch16(size_t(threads) * per_thread16);
  bool ok = true;

  SingleThreadedBlas single;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    const int t = thread_index();
    const int team = team_size();
    T* base = scratch.data() + t * per_thread;
    BlockScratch<T> mine(base, block_rows, wide);
    T* acts = base + BlockScratch<T>::size(block_rows, wide);
    auto y_of = [&](size_t i) { return acts + y_at[i] * block_rows; };
    auto aux_of = [&](size_t i) { return aux_at[i] < 0 ? nullptr : acts + aux_at[i] * block_rows; };
    bf16* base16 = scratch16.data() + t * per_thread16;
    BlockScratch16 mine16(base16, block_rows, wide);
    bf16* inputs16 = base16 + BlockScratch16::size(block_rows, wide);
    auto in16_of = [&](size_t i) { return inputs16 + in16_at[i] * block_rows; };
    const auto [first, last] = share(blocks, t, team);
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t r0 = blk * block_rows;
      const int64_t rows = std::min(block_rows, n - r0);
      ok = forward_block(layers, x + r0 * layers.front().in, rows, y_of, aux_of, w16.get(),
                         in16_of) &&
           ok;
      const T* top = y_of(int64_t(layers.size()) - 1);
      if (out != nullptr) {
        std::copy(top, top + rows * classes_out, out + r0 * classes_out);
      }
      T value = T(0);
      T* grad = mine.grad[0];
      block_loss(loss, top, labels, labels64, targets, &value, grad, r0, rows, classes_out);
      const T scale = T(double(rows) / double(n));  // the block's mean -> the batch's
#pragma omp simd
      for (int64_t e = 0; e < rows * classes_out; ++e) grad[e] *= scale;
      loss_part[t] += double(value) * double(rows);
      ok = backward_block(
               layers, grad, true, rows, mine, partials, t, blk > first,
               [&](int64_t i) -> const T* { return aux_of(i) != nullptr ? aux_of(i) : y_of(i); },
               [&](int64_t i) -> const T* {
                 return i == 0 ? x + r0 * layers.front().in : y_of(i - 1);
               },
               dx != nullptr ? dx + r0 * layers.front().in : nullptr, w16.get(), &mine16,
               [&](int64_t i) -> const bf16* { return in16_of(i); }) &&
           ok;
    }
#pragma omp barrier
    partials.reduce(layers, t, team);
    if (t == 0) {
      double total = 0.0;
      for (int s = 0; s < team; ++s) total += loss_part[s];
      *loss_out = T(total / double(n));
    }
  }
  check_bf16_gemms(ok);
}

#define FASTNN_INSTANTIATE(T)                                                                   \
  template void dense_chain_forward<T>(const T*, int64_t, const std::vector<ChainLayer<T>>&,    \
                                       int64_t, bool);                                          \
  template void dense_chain_backward<T>(const T*, const T*, int64_t,                           \
                                        const std::vector<ChainLayer<T>>&, T*, int64_t, bool); \
  template void dense_chain_step<T>(const T*, int64_t, const std::vector<ChainLayer<T>>&,       \
                                    ChainLoss, const void*, bool, const T*, T*, T*, T*, int64_t, \
                                    bool);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
