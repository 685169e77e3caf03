// Optimizer update rules, one element at a time: shared by the CPU loops (csrc/cpu/optim.cpp)
// and the CUDA multi-tensor kernels (csrc/cuda/optim.cu), so both paths run the same math.
//
// An Op is built once per launch from its Hyper (the group's hyperparameters, doubles, which
// the rule's entry in optim.h fills from the entry point's vector) and the step's lr and step
// count (from the host, or in capturable mode from a device array), then applied to each
// element: v[0] the parameter, v[1] its gradient (read, never written), v[2...] the state,
// updated in place. Arithmetic runs in T: float32 for float32 parameters,
// float64 for float64. The order of operations follows torch.optim's single-tensor code, so
// results agree with PyTorch to rounding. The formulas are in csrc/optim.h.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace fastnn {

// The largest of a and b, NaN if either is NaN (torch.maximum).
template <class T>
FASTNN_HD T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

struct SgdHyper {
  double momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
};

// v = (p, g[, momentum_buffer])
template <class T, bool kMomentum>
struct SgdOp {
  using value_type = T;
  static constexpr int kLists = kMomentum ? 3 : 2;
  T lr, momentum, damp, weight_decay;
  bool nesterov, maximize, first_step;

  SgdOp() = default;
  FASTNN_HD SgdOp(const SgdHyper& h, double lr_, double /*step*/)
      : lr(T(lr_)), momentum(T(h.momentum)), damp(T(1 - h.dampening)),
        weight_decay(T(h.weight_decay)), nesterov(h.nesterov), maximize(h.maximize),
        first_step(h.first_step) {}

  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = maximize ? -v[1] : v[1];
    if (weight_decay != T(0)) g = g + weight_decay * v[0];
    if constexpr (kMomentum) {
      // torch creates the buffer as a copy of the gradient: no decay, no dampening.
      const T buf = first_step ? g : v[2] * momentum + damp * g;
      v[2] = buf;
      g = nesterov ? g + momentum * buf : buf;
    }
    v[0] = v[0] - lr * g;
  }
};

struct AdagradHyper {
  double lr_decay, weight_decay, eps;
  bool maximize;
};

// v = (p, g, sum)
template <class T>
struct AdagradOp {
  using value_type = T;
  static constexpr int kLists = 3;
  T clr, weight_decay, eps;
  bool maximize;

  AdagradOp() = default;
  FASTNN_HD AdagradOp(const AdagradHyper& h, double lr, double step)
      : clr(T(lr / (1 + (step - 1) * h.lr_decay))), weight_decay(T(h.weight_decay)),
        eps(T(h.eps)), maximize(h.maximize) {}

  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = maximize ? -v[1] : v[1];
    if (weight_decay != T(0)) g = g + weight_decay * v[0];
    const T sum = v[2] + g * g;
    v[2] = sum;
    v[0] = v[0] - clr * (g / (std::sqrt(sum) + eps));
  }
};

struct RmspropHyper {
  double alpha, eps, weight_decay, momentum;
  bool maximize;
};

// v = (p, g, square_avg[, momentum_buffer][, grad_avg])
template <class T, bool kMomentum, bool kCentered>
struct RmspropOp {
  using value_type = T;
  static constexpr int kBuffer = 3;
  static constexpr int kGradAvg = kMomentum ? 4 : 3;
  static constexpr int kLists = 3 + int(kMomentum) + int(kCentered);
  T lr, alpha, alpha_c, eps, weight_decay, momentum;
  bool maximize;

  RmspropOp() = default;
  FASTNN_HD RmspropOp(const RmspropHyper& h, double lr_, double /*step*/)
      : lr(T(lr_)), alpha(T(h.alpha)), alpha_c(T(1 - h.alpha)), eps(T(h.eps)),
        weight_decay(T(h.weight_decay)), momentum(T(h.momentum)), maximize(h.maximize) {}

  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = maximize ? -v[1] : v[1];
    if (weight_decay != T(0)) g = g + weight_decay * v[0];
    const T sq = v[2] * alpha + alpha_c * g * g;
    v[2] = sq;
    T avg;
    if constexpr (kCentered) {
      const T ga = v[kGradAvg] + alpha_c * (g - v[kGradAvg]);
      v[kGradAvg] = ga;
      avg = std::sqrt(sq - ga * ga);
    } else {
      avg = std::sqrt(sq);
    }
    avg = avg + eps;
    if constexpr (kMomentum) {
      const T buf = v[kBuffer] * momentum + g / avg;
      v[kBuffer] = buf;
      v[0] = v[0] - lr * buf;
    } else {
      v[0] = v[0] - lr * (g / avg);
    }
  }
};

struct AdamHyper {
  double beta1, beta2, eps, weight_decay;
  bool decoupled, maximize;
};

// v = (p, g, exp_avg, exp_avg_sq[, max_exp_avg_sq])
template <class T, bool kAmsgrad>
struct AdamOp {
  using value_type = T;
  static constexpr int kLists = kAmsgrad ? 5 : 4;
  T beta1_c, beta2, beta2_c, eps, weight_decay, decay, step_size, bias_correction2_sqrt;
  bool decoupled, maximize;

  AdamOp() = default;
  // Bias corrections in float64 whatever T is, as torch computes them in Python floats.
  FASTNN_HD AdamOp(const AdamHyper& h, double lr, double step)
      : beta1_c(T(1 - h.beta1)), beta2(T(h.beta2)), beta2_c(T(1 - h.beta2)), eps(T(h.eps)),
        weight_decay(T(h.weight_decay)), decay(T(1 - lr * h.weight_decay)),
        step_size(T(lr / (1 - std::pow(h.beta1, step)))),
        bias_correction2_sqrt(T(std::sqrt(1 - std::pow(h.beta2, step)))),
        decoupled(h.decoupled), maximize(h.maximize) {}

  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = maximize ? -v[1] : v[1];
    T p = v[0];
    if (weight_decay != T(0)) {
      if (decoupled) p = p * decay;
      else g = g + weight_decay * p;
    }
    const T m = v[2] + beta1_c * (g - v[2]);
    T s = v[3] * beta2 + beta2_c * g * g;
    v[2] = m;
    v[3] = s;
    if constexpr (kAmsgrad) {
      s = nan_max(v[4], s);
      v[4] = s;
    }
    v[0] = p - step_size * (m / (std::sqrt(s) / bias_correction2_sqrt + eps));
  }
};

struct RpropHyper {
  double etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;
};

// v = (p, g, prev, step_size)
template <class T>
struct RpropOp {
  using value_type = T;
  static constexpr int kLists = 4;
  T etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;

  RpropOp() = default;
  FASTNN_HD RpropOp(const RpropHyper& h, double /*lr*/, double /*step*/)
      : etaminus(T(h.etaminus)), etaplus(T(h.etaplus)), step_size_min(T(h.step_size_min)),
        step_size_max(T(h.step_size_max)), maximize(h.maximize) {}

  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = maximize ? -v[1] : v[1];
    // The sign of the product, not of each factor: a product that underflows to 0 counts as
    // "no sign information", as in torch.
    const T prod = g * v[2];
    const T factor = prod > T(0) ? etaplus : (prod < T(0) ? etaminus : T(1));
    T size = v[3] * factor;
    size = size < step_size_min ? step_size_min : size;
    size = size > step_size_max ? step_size_max : size;
    v[3] = size;
    // Where the sign flipped the step is skipped and the gradient forgotten, so the next step
    // neither grows nor shrinks this entry's step size.
    if (prod < T(0)) g = T(0);
    const T sign = g > T(0) ? T(1) : (g < T(0) ? T(-1) : T(0));
    v[0] = v[0] - sign * size;
    v[2] = g;
  }
};

}  // namespace fastnn
