// Fused optimizers on the CPU. Formulas and the rule table in optim.h, per-element math in
// optim_math.h.
//
// One call updates a whole list of tensors: the elements of all tensors are treated as one
// range, split in equal contiguous parts over the OpenMP threads (so one large tensor and many
// small ones are shared alike), and each thread walks the pieces of the tensors its part
// covers with a SIMD loop that reads parameter, gradient and state once and writes parameter
// and state once.
#include "optim.h"

#include <algorithm>

#include "cpu/parallel.h"

// No fused multiply-adds: every operation rounds as in torch and the reference, and the vector
// loop and the element-by-element edges of a range give identical bits, so results do not
// depend on where the arrays happen to lie in memory.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace fastnn::cpu {
namespace {

// Elements [lo, hi) of one tensor: v[l] = tensor l's element, updated by op, written back
// (all lists but the gradient, list 1).
// `op` is taken by value: a local copy cannot alias the arrays, so its fields stay in registers.
template <class Op, class T = typename Op::value_type>
void update_simd(const Op op, T* const (&ptr)[Op::kLists], int64_t lo, int64_t hi) {
  constexpr int L = Op::kLists;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    T v[L];
    for (int l = 0; l < L; ++l) v[l] = ptr[l][i];
    op(v);
    for (int l = 0; l < L; ++l)
      if (l != 1) ptr[l][i] = v[l];
  }
}

// Vector loads that straddle two cache lines cost up to half the bandwidth here, so the range
// is split where the parameter's address reaches a 64-byte boundary. Arrays with the same
// offset within a cache line (fastnn allocates the state that way) are then all aligned.
template <class Op, class T = typename Op::value_type>
void update_range(const Op& op, T* const (&ptr)[Op::kLists], int64_t lo, int64_t hi) {
  const int64_t size = int64_t(sizeof(T));
  const int64_t offset = int64_t(reinterpret_cast<uintptr_t>(ptr[0] + lo) % 64);
  const int64_t head = offset % size ? 0 : std::min(hi - lo, (64 - offset) % 64 / size);
  update_simd(op, ptr, lo, lo + head);
  update_simd(op, ptr, lo + head, hi);
}

template <class Op>
void update_all(const Op& op, const TensorPointers& tensors, const TensorSizes& sizes) {
  using T = typename Op::value_type;
  constexpr int L = Op::kLists;
  const int64_t count = int64_t(sizes.size());
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  parallel_for(total, kParallelGrain, [&](int64_t begin, int64_t end) {
    int64_t offset = 0;
    for (int64_t t = 0; t < count && offset < end; offset += sizes[t], ++t) {
      const int64_t lo = std::max(begin, offset) - offset;
      const int64_t hi = std::min(end, offset + sizes[t]) - offset;
      if (lo >= hi) continue;
      T* ptr[L];
      for (int l = 0; l < L; ++l) ptr[l] = reinterpret_cast<T*>(tensors[size_t(l * count + t)]);
      update_range(op, ptr, lo, hi);
    }
  });
}

// run(OpTag<Op>{}, hyper, lr, step) for optim_dispatch (optim.h).
struct Run : RunArgs {
  template <class Op, class Hyper>
  void operator()(OpTag<Op>, const Hyper& h, double lr, double step) const {
    check_tensor_lists(rule, tensors, sizes, Op::kLists);
    if (scalars) {
      scalars[1] += 1;
      update_all(Op(h, scalars[0], scalars[1]), tensors, sizes);
    } else {
      update_all(Op(h, lr, step), tensors, sizes);
    }
  }
};

}  // namespace

void optim_step(const std::string& dtype, const std::string& rule, const TensorPointers& tensors,
                const TensorSizes& sizes, const Hyperparameters& hyper, double* scalars) {
  optim_dispatch(dtype, rule, hyper, Run{{rule.c_str(), tensors, sizes, scalars}});
}

}  // namespace fastnn::cpu
