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
// One entry point per device,
// optim_step(dtype, state_dtype, rule, tensors, sizes, hyper, scalars, rounding[, stream]):
//   dtype    the parameters' (and gradients') dtype, an entry of OptimDtypes below ("float32",
//            "float64", "bfloat16", "float16"): it says how they are stored and what the math
//            runs in (float32, or float64 for float64).
//   state_dtype  how the state is stored, one of the dtype entry's `states`: the parameters'
//            dtype, "float32", "bfloat16", or "int8" (codes + a float32 absmax per block of
//            kQuantBlock elements, optim_math.h; not for rules whose Op is not kQuantizable).
//   rule     an entry of OptimRules below ("sgd", "adagrad", "rmsprop", "adam", "rprop").
//   tensors  the raw addresses list by list: all parameters, then all gradients, then each state
//            list in the order of the rule's Op in optim_math.h; with int8 state each state
//            list is two lists, its codes (one byte per element) then its absmaxes (float32,
//            ceil(size / kQuantBlock) per tensor). All tensors of a call live on one device;
//            the lists may not overlap, except that a gradient may be its own parameter (each
//            element is read before written).
//   sizes    each tensor's element count, so tensors.size() == lists * sizes.size().
//   hyper    the rule's hyperparameters as doubles (flags 0 or 1), in the order its entry's kArgs
//            names them: the order of RULES[rule].kernel_args in fastnn/optim/functional.py
//            (the binding exports kArgs as fastnn._C.optim_rules; tests/test_optim.py checks
//            that the two agree). A count that differs from kArgs' is an invalid_argument.
//   scalars  null, or capturable mode's [lr, step] (below).
//   rounding bfloat16 state's rounding (StateRounding below): to nearest even, or stochastic.
//
// lr and step: `step` counts updates from 1 (this call's update included). When `scalars` is
// not null (capturable mode) it points to two float64 values [lr, step] in the tensors' memory
// space: the call first adds 1 to scalars[1], then reads lr and step from there, so the lr and
// step in `hyper` are ignored and a captured CUDA graph stays correct when replayed.
//
// Adding a rule touches its Hyper and Op (optim_math.h), its entry in OptimRules here, and on
// the Python side its reference, its class and its RULES entry; the entry points, their device
// loops and the binding stay as they are. Adding a storage combination (e.g. float16 state for
// float32 parameters) is one more type in a dtype entry's `states`, given widen and narrow for
// it (optim_math.h).
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

// How bfloat16 state is rounded: to nearest even, or (stochastic) by the random bits of
// element i of stream (tensor index in the call) * 4 + (state list) at `step` under `seed`
// (optim_math.h). In capturable mode the step is the device's counted step instead.
struct StateRounding {
  bool stochastic = false;
  uint64_t seed = 0;
  uint64_t step = 0;
};

// The one check C++ makes on the tensors: the tables are as long as the rule and the storage
// need (Python validates the rest).
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

// What every device's `run` holds: the tensor lists, the capturable [lr, step] array (null
// outside capturable mode) and the state's rounding. A device's run(OpTag<Op, Types>{}, hyper,
// lr, step) builds the Op and applies it to the tensors, stored as Types says
// (csrc/cpu/optim.cpp, csrc/cuda/multi_tensor.cuh).
struct RunArgs {
  const char* rule;
  const TensorPointers& tensors;
  const TensorSizes& sizes;
  double* scalars;
  StateRounding rounding;
};

// Whether Types keeps its state as int8 blocks (two pointer lists per state list).
template <class Types>
constexpr bool kQuantized = std::is_same_v<typename Types::state, Int8Blocks>;

// The pointer lists a call of Op with Types' storage takes.
template <class Types, class Op>
constexpr int pointer_lists() {
  return kQuantized<Types> ? 2 + 2 * (Op::kLists - 2) : Op::kLists;
}

// The int8 error a rule without quantizable state gives.
inline std::invalid_argument not_quantizable(const char* rule) {
  return std::invalid_argument(std::string("fastnn optim_step: rule '") + rule +
                               "' with these options takes no int8 state");
}

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

// The dtypes, each named as NumPy (or torch, for bfloat16) names the parameters' dtype. An
// OptimTypes says how each list is stored (parameters, gradients, state) and what the Ops
// compute in: a float32 or float64 call computes in its own dtype, bfloat16 and float16 ones in
// float32 (torch's fused CPU kernels do the same). Gradients are stored as the parameters;
// the state as one of the entry's `states`, the first being the parameters' own dtype (torch's
// layout).
template <class Param, class Grad, class State, class Compute>
struct OptimTypes {
  using param = Param;
  using grad = Grad;
  using state = State;
  using compute = Compute;
};

// The name of a state storage type, as state_dtype says it.
template <class S>
constexpr const char* storage_name() {
  if constexpr (std::is_same_v<S, float>) return "float32";
  else if constexpr (std::is_same_v<S, double>) return "float64";
  else if constexpr (std::is_same_v<S, bfloat16>) return "bfloat16";
  else if constexpr (std::is_same_v<S, float16>) return "float16";
  else return "int8";
}

template <class S>
struct StateEntry {
  static constexpr const char* kName = storage_name<S>();
  using type = S;
};

template <class Param, class Compute, class... States>
struct ParamEntry {
  static constexpr const char* kName = storage_name<Param>();
  using states = Table<StateEntry<States>...>;
  template <class State>
  using types = OptimTypes<Param, Param, State, Compute>;
};

// float64 parameters keep float64 state: low-bit state is for memory-bound float32 and half
// precision steps.
using OptimDtypes = Table<ParamEntry<float, float, float, bfloat16, Int8Blocks>,
                          ParamEntry<double, double, double>,
                          ParamEntry<bfloat16, float, bfloat16, float, Int8Blocks>,
                          ParamEntry<float16, float, float16, float, bfloat16, Int8Blocks>>;

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

// The entry points' common body: finds the rule, the dtype and the state dtype, checks the
// hyperparameter count, then the rule's dispatch calls `run` with the Op its flags choose.
template <class Run>
void optim_dispatch(const std::string& dtype, const std::string& state_dtype,
                    const std::string& rule, const Hyperparameters& hyper, const Run& run) {
  const bool known = with_entry(OptimRules{}, rule, [&](auto entry) {
    using Rule = decltype(entry);
    if (hyper.size() != std::size(Rule::kArgs))
      throw std::invalid_argument(
          "fastnn optim_step: rule '" + rule + "' takes " + std::to_string(std::size(Rule::kArgs)) +
          " hyperparameters (" + join_names(std::begin(Rule::kArgs), std::end(Rule::kArgs)) +
          "), got " + std::to_string(hyper.size()));
    const bool typed = with_entry(OptimDtypes{}, dtype, [&](auto d) {
      using Param = decltype(d);
      const bool stored = with_entry(typename Param::states{}, state_dtype, [&](auto s) {
        using Types = typename Param::template types<typename decltype(s)::type>;
        Rule::template dispatch<Types>(run, hyper.data());
      });
      if (!stored)
        throw std::invalid_argument("fastnn optim_step: state_dtype for " + dtype +
                                    " parameters must be one of " +
                                    entry_names(typename Param::states{}) + ", got '" +
                                    state_dtype + "'");
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
void optim_step(const std::string& dtype, const std::string& state_dtype, const std::string& rule,
                const TensorPointers& tensors, const TensorSizes& sizes,
                const Hyperparameters& hyper, double* scalars, const StateRounding& rounding);

// int8 blocks of a float32 array and back (the codes of optim_math.h, as the steps store them):
// codes[i] and absmax[i / kQuantBlock] from x[i], i < n (signed: the signed code, else the
// unsigned one), and out[i] from them.
void quantize_state(bool is_signed, const float* x, uint8_t* codes, float* absmax, int64_t n);
void dequantize_state(bool is_signed, const uint8_t* codes, const float* absmax, float* out,
                      int64_t n);

// Whether the hand-written AVX-512 loops run where the build has them (bfloat16 state rounded by
// AVX512_BF16's VCVTNEPS2BF16; Adam's int8 state with float32 parameters): `enabled` switches
// them, so that tests can compare them with the portable loops. Returns the previous setting.
bool set_optim_avx512_loops(bool enabled);
}  // namespace cpu

namespace cuda {
void optim_step(const std::string& dtype, const std::string& state_dtype, const std::string& rule,
                const TensorPointers& tensors, const TensorSizes& sizes,
                const Hyperparameters& hyper, double* scalars, const StateRounding& rounding,
                Stream stream);
void quantize_state(bool is_signed, const float* x, uint8_t* codes, float* absmax, int64_t n,
                    Stream stream);
void dequantize_state(bool is_signed, const uint8_t* codes, const float* absmax, float* out,
                      int64_t n, Stream stream);
}  // namespace cuda

}  // namespace fastnn
