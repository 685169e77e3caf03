// Fused optimizers: the C++ API the bindings call. Every rule updates many tensors of one dtype
// in one call, reading each parameter, gradient and state element once and writing the
// parameter and state once (one pass over memory).
//
//   sgd      g' = ±g + wd p
//            momentum: b = first_step ? g' : mu b + (1 - dampening) g'
//                      g' = nesterov ? g' + mu b : b
//            p -= lr g'
//   adagrad  g' = ±g + wd p;  clr = lr / (1 + (step - 1) lr_decay)
//            s += g'^2;  p -= clr g' / (sqrt(s) + eps)
//   rmsprop  g' = ±g + wd p;  v = alpha v + (1 - alpha) g'^2
//            centered: a = a + (1 - alpha) (g' - a);  d = sqrt(v - a^2) + eps, else sqrt(v) + eps
//            momentum > 0: b = mu b + g' / d;  p -= lr b,  else p -= lr g' / d
//   adam     g' = ±g;  decoupled: p *= 1 - lr wd,  else g' += wd p
//            m = m + (1 - beta1) (g' - m);  v = beta2 v + (1 - beta2) g'^2
//            amsgrad: vmax = max(vmax, v), used for v below
//            p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
//   rprop    g' = ±g;  f = etaplus if g' prev > 0, etaminus if < 0, else 1
//            size = clamp(size f, step_size_min, step_size_max);  g' = 0 where g' prev < 0
//            p -= sign(g') size;  prev = g'
// (±g: -g when maximizing.) Everything here is "=": parameters and state are overwritten.
//
// Tensor lists: `tensors` holds the raw addresses list by list (all parameters, then all
// gradients, then each state list in the order of the rule's Op in optim_math.h); `sizes`
// holds each tensor's element count, so tensors.size() == lists * sizes.size(). All tensors
// of a call have the dtype T and live on one device.
//
// lr and step: `step` counts updates from 1 (this call's update included). When `scalars` is
// not null (capturable mode) it points to two float64 values [lr, step] in the tensors' memory
// space: the call first adds 1 to scalars[1], then reads lr and step from there, so lr and
// step arguments are ignored and a captured CUDA graph stays correct when replayed.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "optim_math.h"

namespace fastnn {

using TensorPointers = std::vector<uintptr_t>;
using TensorSizes = std::vector<int64_t>;

// The one check C++ makes: the tables are as long as the rule needs (Python validates the rest).
inline void check_tensor_lists(const char* rule, const TensorPointers& tensors,
                               const TensorSizes& sizes, int lists) {
  if (tensors.size() != sizes.size() * size_t(lists))
    throw std::invalid_argument(std::string("fastnn ") + rule + ": expected " +
                                std::to_string(lists) + " pointers per tensor, got " +
                                std::to_string(tensors.size()) + " for " +
                                std::to_string(sizes.size()) + " tensors");
}

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a compile-time one.
template <class F>
void with_flag(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

// Each rule's hyperparameters and flags choose its Op; `run(OpTag<Op>{}, hyper)` then applies
// it to the tensors (csrc/cpu/optim.cpp and csrc/cuda/optim.cu provide `run`, a RunArgs with
// that call operator).
template <class Op>
struct OpTag {
  using type = Op;
};

// What a rule's call hands to its `run`: the tensor lists, lr and step from the host, and the
// capturable [lr, step] array (null outside capturable mode).
struct RunArgs {
  const char* rule;
  const TensorPointers& tensors;
  const TensorSizes& sizes;
  double lr;
  double step;
  double* scalars;
};

template <class T, class Run>
void dispatch_sgd(Run&& run, double momentum, double dampening, double weight_decay,
                  bool nesterov, bool maximize, bool first_step) {
  const SgdHyper h{momentum, dampening, weight_decay, nesterov, maximize, first_step};
  with_flag(momentum != 0, [&](auto m) { run(OpTag<SgdOp<T, decltype(m)::value>>{}, h); });
}

template <class T, class Run>
void dispatch_adagrad(Run&& run, double lr_decay, double weight_decay, double eps, bool maximize) {
  run(OpTag<AdagradOp<T>>{}, AdagradHyper{lr_decay, weight_decay, eps, maximize});
}

template <class T, class Run>
void dispatch_rmsprop(Run&& run, double alpha, double eps, double weight_decay, double momentum,
                      bool centered, bool maximize) {
  const RmspropHyper h{alpha, eps, weight_decay, momentum, maximize};
  with_flag(momentum > 0, [&](auto m) {
    with_flag(centered, [&](auto c) {
      run(OpTag<RmspropOp<T, decltype(m)::value, decltype(c)::value>>{}, h);
    });
  });
}

template <class T, class Run>
void dispatch_adam(Run&& run, double beta1, double beta2, double eps, double weight_decay,
                   bool amsgrad, bool decoupled, bool maximize) {
  const AdamHyper h{beta1, beta2, eps, weight_decay, decoupled, maximize};
  with_flag(amsgrad, [&](auto a) { run(OpTag<AdamOp<T, decltype(a)::value>>{}, h); });
}

template <class T, class Run>
void dispatch_rprop(Run&& run, double etaminus, double etaplus, double step_size_min,
                    double step_size_max, bool maximize) {
  run(OpTag<RpropOp<T>>{}, RpropHyper{etaminus, etaplus, step_size_min, step_size_max, maximize});
}

namespace cpu {
template <class T>
void sgd(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double momentum,
         double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step,
         double* scalars);
template <class T>
void adagrad(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double lr_decay,
             double weight_decay, double eps, int64_t step, bool maximize, double* scalars);
template <class T>
void rmsprop(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double alpha,
             double eps, double weight_decay, double momentum, bool centered, bool maximize,
             double* scalars);
template <class T>
void adam(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double beta1,
          double beta2, double eps, double weight_decay, int64_t step, bool amsgrad,
          bool decoupled, bool maximize, double* scalars);
template <class T>
void rprop(const TensorPointers& tensors, const TensorSizes& sizes, double etaminus,
           double etaplus, double step_size_min, double step_size_max, bool maximize,
           double* scalars);
}  // namespace cpu

namespace cuda {
template <class T>
void sgd(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double momentum,
         double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step,
         double* scalars, Stream stream);
template <class T>
void adagrad(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double lr_decay,
             double weight_decay, double eps, int64_t step, bool maximize, double* scalars,
             Stream stream);
template <class T>
void rmsprop(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double alpha,
             double eps, double weight_decay, double momentum, bool centered, bool maximize,
             double* scalars, Stream stream);
template <class T>
void adam(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double beta1,
          double beta2, double eps, double weight_decay, int64_t step, bool amsgrad,
          bool decoupled, bool maximize, double* scalars, Stream stream);
template <class T>
void rprop(const TensorPointers& tensors, const TensorSizes& sizes, double etaminus,
           double etaplus, double step_size_min, double step_size_max, bool maximize,
           double* scalars, Stream stream);
}  // namespace cuda

}  // namespace fastnn
