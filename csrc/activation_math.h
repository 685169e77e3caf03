// Elementwise activations: the math, written once for the CPU loops and the CUDA kernels.
//
// Each activation is a functor with
//   forward(x)        -> y
//   backward(dy, s)   -> dx, where s is the saved tensor: the forward output y for sigmoid and
//                        tanh (cheaper and exact), the forward input x for all others
//                        (`kSavesOutput` says which).
//
//   relu        y = max(x, 0)                       dx = dy * [x > 0]
//   leaky_relu  y = x > 0 ? x : a x                 dx = dy * (x > 0 ? 1 : a)
//   sigmoid     y = 1 / (1 + e^-x)                  dx = dy * y (1 - y)
//   tanh        y = tanh x                          dx = dy * (1 - y^2)
//   gelu        y = x Phi(x) = x/2 erfc(-x/sqrt2)   dx = dy * (Phi(x) + x phi(x))
//   gelu_tanh   y = x/2 (1 + tanh u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//               dx = dy * (1/2 (1 + t) + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)), t = tanh u
// Derivatives at the kinks follow PyTorch (relu'(0) = 0, leaky_relu'(0) = a).
//
// On the device the functions come from CUDA's libdevice. On the host float32 uses the
// branch-free exp and tanh below, so that loops calling them vectorize (glibc's vector math is
// only declared under -ffast-math); float64 uses libm.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.h"

namespace fastnn {

// Exported as fastnn._C.Activation (csrc/bindings.cpp, which lists every value), where
// fastnn/functional/activations.py reads the codes.
enum class Activation : int {
  identity = 0,
  relu = 1,
  leaky_relu = 2,
  sigmoid = 3,
  tanh = 4,
  gelu = 5,
  gelu_tanh = 6,
};

#if !defined(__CUDA_ARCH__)
// e^x for float32: Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2, e^r from the Cephes
// minimax polynomial (about 1 ulp), 2^n built in the exponent bits as 2^(n-1) * 2 so that
// n = 128 still overflows to +inf correctly. Inputs below -87 return e^-87 (1.6e-38) rather
// than a denormal; NaN propagates.
// lo: a small correction added to x after the reduction (erfc passes the rounding error of its
// argument in it).
FASTNN_INLINE float exp_f32_host(float x, float lo = 0.0f) {
  x = x < -87.0f ? -87.0f : (x > 89.0f ? 89.0f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f + lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 126) << 23;
  float half_scale;
  std::memcpy(&half_scale, &bits, sizeof(float));
  return e * half_scale * 2.0f;
}

// tanh for float32: the Cephes odd polynomial for |x| < 0.625 (no cancellation near 0), and
// (1 - e^-2|x|) / (1 + e^-2|x|) with the sign of x elsewhere.
FASTNN_INLINE float tanh_f32_host(float x) {
  const float a = std::fabs(x);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
        1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  const float e = exp_f32_host(-2.0f * a);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  return a < 0.625f ? small : big;
}

// erfc for float32: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2) for z = |x| >= 0, with the
// degree-9 Chebyshev-fitted P of Numerical Recipes' erfcc (relative error under 1.2e-7 for all
// z), and erfc(-z) = 2 - erfc(z). -z^2 + P is carried as hi + lo (the exact square from an
// FMA, then a two-sum) so that its rounding, 2^-24 |z^2| absolute, does not become a relative
// error of the result. Measured against float64 erfc: within 6.4 ulp (3.8e-7) on [-12, 12];
// 0 beyond z = 9.5, where erfc is below float32's smallest normal. Vectorizes, unlike erfcf
// (the speed-up is in docs/DECISIONS.md).
FASTNN_INLINE float erfc_f32_host(float x) {
  const float z = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float square = z * z;
#if defined(__FMA__) || defined(__aarch64__)
  const float square_lo = std::fma(z, z, -square);  // z^2 = square + square_lo exactly
#else
  const float square_lo = 0.0f;  // no hardware FMA (a portable x86 build): within 12 ulp
#endif
  const float hi = p - square;
  const float back = hi - p;
  const float lo = ((p - (hi - back)) + (-square - back)) - square_lo;
  const float tail = z > 9.5f ? 0.0f : t * exp_f32_host(hi, lo);
  return x < 0.0f ? 2.0f - tail : tail;
}
#endif

FASTNN_HD float math_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return exp_f32_host(x);
#endif
}
FASTNN_HD double math_exp(double x) { return ::exp(x); }

FASTNN_HD float math_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  return tanh_f32_host(x);
#endif
}
FASTNN_HD double math_tanh(double x) { return ::tanh(x); }

FASTNN_HD float math_erfc(float x) {
#if defined(__CUDA_ARCH__)
  return erfcf(x);
#else
  return erfc_f32_host(x);
#endif
}
FASTNN_HD double math_erfc(double x) { return ::erfc(x); }

template <class T>
struct Identity {
  static constexpr bool kSavesOutput = false;
  FASTNN_HD T forward(T x) const { return x; }
  FASTNN_HD T backward(T dy, T) const { return dy; }
};

template <class T>
struct Relu {
  static constexpr bool kSavesOutput = false;
  // Written as x < 0 ? 0 : x so that NaN passes through, as in PyTorch.
  FASTNN_HD T forward(T x) const { return x < T(0) ? T(0) : x; }
  FASTNN_HD T backward(T dy, T x) const { return x > T(0) ? dy : T(0); }
};

template <class T>
struct LeakyRelu {
  static constexpr bool kSavesOutput = false;
  T alpha;
  FASTNN_HD T forward(T x) const { return x > T(0) ? x : alpha * x; }
  FASTNN_HD T backward(T dy, T x) const { return x > T(0) ? dy : alpha * dy; }
};

template <class T>
struct Sigmoid {
  static constexpr bool kSavesOutput = true;
  // e = e^-|x| never overflows; for x < 0, sigmoid(x) = e / (1 + e).
  FASTNN_HD T forward(T x) const {
    const T e = math_exp(x > T(0) ? -x : x);
    const T s = T(1) / (T(1) + e);
    return x >= T(0) ? s : e * s;
  }
  FASTNN_HD T backward(T dy, T y) const { return dy * y * (T(1) - y); }
};

template <class T>
struct Tanh {
  static constexpr bool kSavesOutput = true;
  FASTNN_HD T forward(T x) const { return math_tanh(x); }
  FASTNN_HD T backward(T dy, T y) const { return dy * (T(1) - y * y); }
};

template <class T>
struct Gelu {
  static constexpr bool kSavesOutput = false;
  // erfc(-x/sqrt2) rather than 1 + erf(x/sqrt2): no cancellation for large negative x.
  FASTNN_HD T forward(T x) const { return T(0.5) * x * math_erfc(-x * T(0.70710678118654752440)); }
  FASTNN_HD T backward(T dy, T x) const {
    const T cdf = T(0.5) * math_erfc(-x * T(0.70710678118654752440));
    const T pdf = T(0.39894228040143267794) * math_exp(T(-0.5) * x * x);
    return dy * (cdf + x * pdf);
  }
};

template <class T>
struct GeluTanh {
  static constexpr bool kSavesOutput = false;
  FASTNN_HD T forward(T x) const {
    const T kBeta = T(0.79788456080286535588);  // sqrt(2/pi)
    const T kKappa = T(0.044715);
    const T t = math_tanh(kBeta * (x + kKappa * x * x * x));
    return T(0.5) * x * (T(1) + t);
  }
  FASTNN_HD T backward(T dy, T x) const {
    const T kBeta = T(0.79788456080286535588);
    const T kKappa = T(0.044715);
    const T x2 = x * x;
    const T t = math_tanh(kBeta * (x + kKappa * x2 * x));
    const T du = kBeta * (T(1) + T(3) * kKappa * x2);
    return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
  }
};

// Calls f(functor) with the functor for `act`, so a kernel is instantiated once per activation
// and the per-element code has no switch. Host only.
template <class T, class F>
void with_activation(Activation act, T alpha, F&& f) {
  switch (act) {
    case Activation::identity: f(Identity<T>{}); return;
    case Activation::relu: f(Relu<T>{}); return;
    case Activation::leaky_relu: f(LeakyRelu<T>{alpha}); return;
    case Activation::sigmoid: f(Sigmoid<T>{}); return;
    case Activation::tanh: f(Tanh<T>{}); return;
    case Activation::gelu: f(Gelu<T>{}); return;
    case Activation::gelu_tanh: f(GeluTanh<T>{}); return;
  }
  throw std::invalid_argument("fastnn: unknown activation code " + std::to_string(int(act)));
}

}  // namespace fastnn
