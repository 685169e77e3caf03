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
// One entry point per device, optim_step(dtype, rule, tensors, sizes, hyper, scalars[, stream]):
//   dtype    the parameters' dtype, an entry of OptimDtypes below ("float32", "float64",
//            "bfloat16", "float16"): it says how every list is stored and what the math runs in.
//   rule     an entry of OptimRules below ("sgd", "adagrad", "rmsprop", "adam", "rprop").
//   tensors  the raw addresses list by list: all parameters, then all gradients, then each state
//            list in the order of the rule's Op in optim_math.h. All tensors of a call are
//            stored as `dtype` says and live on one device; the lists may not overlap, except
//            that a gradient may be its own parameter (each element is read before written).
//   sizes    each tensor's element count, so tensors.size() == lists * sizes.size().
//   hyper    the rule's hyperparameters as doubles (flags 0 or 1), in the order its entry's kArgs
//            names them: the order of RULES[rule].kernel_args in fastnn/optim/functional.py
//            (the binding exports kArgs as fastnn._C.optim_rules; tests/test_optim.py checks
//            that the two agree). A count that differs from kArgs' is an invalid_argument.
//   scalars  null, or capturable mode's [lr, step] (below).
//
// lr and step: `step` counts updates from 1 (this call's update included). When `scalars` is
// not null (capturable mode) it points to two float64 values [lr, step] in the tensors' memory
// space: the call first adds 1 to scalars[1], then reads lr and step from there, so the lr and
// step in `hyper` are ignored and a captured CUDA graph stays correct when replayed.
//
// Adding a rule touches its Hyper and Op (optim_math.h), its entry in OptimRules here, and on
// the Python side its reference, its class and its RULES entry; the entry points, their device
// loops and the binding stay as they are. Adding a storage combination (e.g. float32 parameters
// with bfloat16 state) is one more entry in OptimDtypes naming its OptimTypes, given widen and
// narrow for its storage types (optim_math.h); a quantized state (int8 blocks with a scale
// each) also needs the device loops to load and store whole blocks.
#pragma once

#include <cstdint>
#include <iterator>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "optim_math.h"

namespace fastnn {

using TensorPointers = std::vector<uintptr_t>;
using TensorSizes = std::vector<int64_t>;
using Hyperparameters = std::vector<double>;

// The one check C++ makes on the tensors: the tables are as long as the rule needs (Python
// validates the rest).
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

// The Op a rule's flags chose, and how the tensors it runs on are stored (an OptimTypes).
template <class Op, class Types>
struct OpTag {
  using type = Op;
  using types = Types;
};

// What every device's `run` holds: the tensor lists, and the capturable [lr, step] array (null
// outside capturable mode). A device's run(OpTag<Op, Types>{}, hyper, lr, step) builds the Op
// and applies it to the tensors, stored as Types says (csrc/cpu/optim.cpp,
// csrc/cuda/multi_tensor.cuh).
struct RunArgs {
  const char* rule;
  const TensorPointers& tensors;
  const TensorSizes& sizes;
  double* scalars;
};

// ---- the tables ----------------------------------------------------------------------------
// A table is a list of entry types, each with a static kName; the entry points look the
// dtype and the rule up by name.

template <class... Entries>
struct Table {};

// f(E{}) for the entry E of the table named `name`; false when there is none.
template <class... E, class F>
bool with_entry(Table<E...>, const std::string& name, F&& f) {
  return ((name == E::kName && (f(E{}), true)) || ...);
}

// f(E{}) for every entry, in order.
template <class... E, class F>
void for_each_entry(Table<E...>, F&& f) {
  (f(E{}), ...);
}

// The dtypes, each named as NumPy (or torch, for bfloat16) names the parameters' dtype. `types`
// says how each list is stored (parameters, gradients, state) and what the Ops compute in: a
// float32 or float64 call computes in its own dtype, bfloat16 and float16 ones in float32, with
// gradients and state stored in the parameters' dtype (torch's fused CPU kernels do the same).
template <class Param, class Grad, class State, class Compute>
struct OptimTypes {
  using param = Param;
  using grad = Grad;
  using state = State;
  using compute = Compute;
};

struct OptimFloat32 {
  static constexpr const char* kName = "float32";
  using types = OptimTypes<float, float, float, float>;
};
struct OptimFloat64 {
  static constexpr const char* kName = "float64";
  using types = OptimTypes<double, double, double, double>;
};
struct OptimBfloat16 {
  static constexpr const char* kName = "bfloat16";
  using types = OptimTypes<bfloat16, bfloat16, bfloat16, float>;
};
struct OptimFloat16 {
  static constexpr const char* kName = "float16";
  using types = OptimTypes<float16, float16, float16, float>;
};
using OptimDtypes = Table<OptimFloat32, OptimFloat64, OptimBfloat16, OptimFloat16>;

// The rules. Each entry names the rule (kName, the key of RULES) and its hyperparameters in
// the order the vector `h` holds them (kArgs), and `dispatch<Types>` builds the rule's Hyper
// from `h`, turns its flags into the template arguments of the Op (computing in
// Types::compute) and calls run(OpTag<Op, Types>{}, hyper, lr, step).
// lr and step travel apart from the Hyper because capturable mode reads them from the device.

struct SgdRule {
  static constexpr const char* kName = "sgd";
  static constexpr const char* kArgs[] = {"lr",       "momentum", "dampening", "weight_decay",
                                          "nesterov", "maximize", "first_step"};
  template <class Types, class Run, class T = typename Types::compute>
  static void dispatch(const Run& run, const double* h) {
    const SgdHyper hyper{h[1], h[2], h[3], h[4] != 0, h[5] != 0, h[6] != 0};
    with_flag(hyper.momentum != 0, [&](auto momentum) {
      run(OpTag<SgdOp<T, decltype(momentum)::value>, Types>{}, hyper, h[0], 0.0);
    });
  }
};

struct AdagradRule {
  static constexpr const char* kName = "adagrad";
  static constexpr const char* kArgs[] = {"lr", "lr_decay", "weight_decay", "eps", "step",
                                          "maximize"};
  template <class Types, class Run, class T = typename Types::compute>
  static void dispatch(const Run& run, const double* h) {
    run(OpTag<AdagradOp<T>, Types>{}, AdagradHyper{h[1], h[2], h[3], h[5] != 0}, h[0], h[4]);
  }
};

struct RmspropRule {
  static constexpr const char* kName = "rmsprop";
  static constexpr const char* kArgs[] = {"lr",       "alpha",    "eps",     "weight_decay",
                                          "momentum", "centered", "maximize"};
  template <class Types, class Run, class T = typename Types::compute>
  static void dispatch(const Run& run, const double* h) {
    const RmspropHyper hyper{h[1], h[2], h[3], h[4], h[6] != 0};
    with_flag(hyper.momentum > 0, [&](auto momentum) {
      with_flag(h[5] != 0, [&](auto centered) {
        using Op = RmspropOp<T, decltype(momentum)::value, decltype(centered)::value>;
        run(OpTag<Op, Types>{}, hyper, h[0], 0.0);
      });
    });
  }
};

struct AdamRule {
  static constexpr const char* kName = "adam";
  static constexpr const char* kArgs[] = {"lr",   "beta1",   "beta2",     "eps",     "weight_decay",
                                          "step", "amsgrad", "decoupled", "maximize"};
  template <class Types, class Run, class T = typename Types::compute>
  static void dispatch(const Run& run, const double* h) {
    const AdamHyper hyper{h[1], h[2], h[3], h[4], h[7] != 0, h[8] != 0};
    with_flag(h[6] != 0, [&](auto amsgrad) {
      run(OpTag<AdamOp<T, decltype(amsgrad)::value>, Types>{}, hyper, h[0], h[5]);
    });
  }
};

struct RpropRule {
  static constexpr const char* kName = "rprop";
  static constexpr const char* kArgs[] = {"etaminus", "etaplus", "step_size_min", "step_size_max",
                                          "maximize"};
  template <class Types, class Run, class T = typename Types::compute>
  static void dispatch(const Run& run, const double* h) {
    run(OpTag<RpropOp<T>, Types>{}, RpropHyper{h[0], h[1], h[2], h[3], h[4] != 0}, 0.0, 0.0);
  }
};

using OptimRules = Table<SgdRule, AdagradRule, RmspropRule, AdamRule, RpropRule>;

// "a, b, c" for error messages.
inline std::string join_names(const char* const* first, const char* const* last) {
  std::string out;
  for (; first != last; ++first) out += (out.empty() ? "" : ", ") + std::string(*first);
  return out;
}

template <class... E>
std::string entry_names(Table<E...>) {
  const char* const names[] = {E::kName...};
  return join_names(std::begin(names), std::end(names));
}

// The entry points' common body: finds the rule and the dtype, checks the hyperparameter
// count, then the rule's dispatch calls `run` with the Op its flags choose.
template <class Run>
void optim_dispatch(const std::string& dtype, const std::string& rule,
                    const Hyperparameters& hyper, const Run& run) {
  const bool known = with_entry(OptimRules{}, rule, [&](auto entry) {
    using Rule = decltype(entry);
    if (hyper.size() != std::size(Rule::kArgs))
      throw std::invalid_argument(
          "fastnn optim_step: rule '" + rule + "' takes " + std::to_string(std::size(Rule::kArgs)) +
          " hyperparameters (" + join_names(std::begin(Rule::kArgs), std::end(Rule::kArgs)) +
          "), got " + std::to_string(hyper.size()));
    const bool typed = with_entry(OptimDtypes{}, dtype, [&](auto d) {
      Rule::template dispatch<typename decltype(d)::types>(run, hyper.data());
    });
    if (!typed)
      throw std::invalid_argument("fastnn optim_step: dtype must be one of " +
                                  entry_names(OptimDtypes{}) + ", got '" + dtype + "'");
  });
  if (!known)
    throw std::invalid_argument("fastnn optim_step: unknown rule '" + rule + "' (expected one of " +
                                entry_names(OptimRules{}) + ")");
}

namespace cpu {
void optim_step(const std::string& dtype, const std::string& rule, const TensorPointers& tensors,
                const TensorSizes& sizes, const Hyperparameters& hyper, double* scalars);
}  // namespace cpu

namespace cuda {
void optim_step(const std::string& dtype, const std::string& rule, const TensorPointers& tensors,
                const TensorSizes& sizes, const Hyperparameters& hyper, double* scalars,
                Stream stream);
}  // namespace cuda

}  // namespace fastnn
