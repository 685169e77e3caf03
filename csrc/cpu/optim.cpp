// Fused optimizers on the CPU. Formulas and the rule table in optim.h, per-element math and the
// storage types in optim_math.h.
//
// One call updates a whole list of tensors: the elements of all tensors are treated as one
// range, split in equal contiguous parts over the OpenMP threads (so one large tensor and many
// small ones are shared alike), and each thread walks the pieces of the tensors its part
// covers with a SIMD loop that reads parameter, gradient and state once and writes parameter
// and state once, widening bfloat16 and float16 to float32 on the way in and rounding on the
// way out.

// No contraction into fused multiply-adds beyond the Ops' explicit ones (madd, where torch
// rounds once too): the SIMD body and the element-by-element edges of a range then give
// identical bits, so results do not depend on where the arrays happen to lie in memory. Set
// before the includes, so that it covers the Ops' code in optim_math.h.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "optim.h"

#include <algorithm>

#include "cpu/parallel.h"

namespace fastnn::cpu {
namespace {

// One tensor's lists, typed as Types stores them: the parameter, its gradient and L - 2 states.
template <class Types, int L>
struct Lists {
  typename Types::param* param;
  const typename Types::grad* grad;
  typename Types::state* state[L > 2 ? L - 2 : 1];
};

// Elements [lo, hi) of one tensor: v[l] = list l's element widened to T, updated by op, and
// written back rounded (all lists but the gradient, list 1).
// `op` is taken by value: a local copy cannot alias the arrays, so its fields stay in registers.
template <class Types, class Op, class T = typename Op::value_type>
void update_simd(const Op op, const Lists<Types, Op::kLists>& ptr, int64_t lo, int64_t hi) {
  constexpr int L = Op::kLists;
  using P = typename Types::param;
  using S = typename Types::state;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    T v[L];
    v[0] = widen<T>(ptr.param[i]);
    v[1] = widen<T>(ptr.grad[i]);
    for (int l = 2; l < L; ++l) v[l] = widen<T>(ptr.state[l - 2][i]);
    op(v);
    ptr.param[i] = narrow<P>(v[0]);
    for (int l = 2; l < L; ++l) ptr.state[l - 2][i] = narrow<S>(v[l]);
  }
}

// Vector loads that straddle two cache lines cost up to half the bandwidth here, so the range
// is split where the parameter's address reaches a 64-byte boundary. Arrays with the same
// offset within a cache line (fastnn allocates the state that way) are then all aligned.
template <class Types, class Op>
void update_range(const Op& op, const Lists<Types, Op::kLists>& ptr, int64_t lo, int64_t hi) {
  const int64_t size = int64_t(sizeof(typename Types::param));
  const int64_t offset = int64_t(reinterpret_cast<uintptr_t>(ptr.param + lo) % 64);
  const int64_t head = offset % size ? 0 : std::min(hi - lo, (64 - offset) % 64 / size);
  update_simd<Types>(op, ptr, lo, lo + head);
  update_simd<Types>(op, ptr, lo + head, hi);
}

template <class Types, class Op>
void update_all(const Op& op, const TensorPointers& tensors, const TensorSizes& sizes) {
  constexpr int L = Op::kLists;
  const int64_t count = int64_t(sizes.size());
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  auto address = [&](int l, int64_t t) { return tensors[size_t(l * count + t)]; };
  parallel_for(total, kParallelGrain, [&](int64_t begin, int64_t end) {
    int64_t offset = 0;
    for (int64_t t = 0; t < count && offset < end; offset += sizes[t], ++t) {
      const int64_t lo = std::max(begin, offset) - offset;
      const int64_t hi = std::min(end, offset + sizes[t]) - offset;
      if (lo >= hi) continue;
      Lists<Types, L> ptr{};
      ptr.param = reinterpret_cast<typename Types::param*>(address(0, t));
      ptr.grad = reinterpret_cast<const typename Types::grad*>(address(1, t));
      for (int l = 2; l < L; ++l)
        ptr.state[l - 2] = reinterpret_cast<typename Types::state*>(address(l, t));
      update_range<Types>(op, ptr, lo, hi);
    }
  });
}

// run(OpTag<Op, Types>{}, hyper, lr, step) for optim_dispatch (optim.h).
struct Run : RunArgs {
  template <class Op, class Types, class Hyper>
  void operator()(OpTag<Op, Types>, const Hyper& h, double lr, double step) const {
    check_tensor_lists(rule, tensors, sizes, Op::kLists);
    if (scalars) {
      scalars[1] += 1;
      update_all<Types>(Op(h, scalars[0], scalars[1]), tensors, sizes);
    } else {
      update_all<Types>(Op(h, lr, step), tensors, sizes);
    }
  }
};

}  // namespace

void optim_step(const std::string& dtype, const std::string& rule, const TensorPointers& tensors,
                const TensorSizes& sizes, const Hyperparameters& hyper, double* scalars) {
  optim_dispatch(dtype, rule, hyper, Run{{rule.c_str(), tensors, sizes, scalars}});
}

}  // namespace fastnn::cpu
