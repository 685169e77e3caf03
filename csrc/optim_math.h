// Optimizer update rules, one element at a time: shared by the CPU loops (csrc/cpu/optim.cpp)
// and the CUDA multi-tensor kernels (csrc/cuda/multi_tensor.cuh), so both paths run the same
// math.
//
// An Op is built once per launch from its Hyper (the group's hyperparameters, doubles, which
// the rule's entry in optim.h fills from the entry point's vector) and the step's lr and step
// count (from the host, or in capturable mode from a device array), then applied to each
// element: v[0] the parameter, v[1] its gradient (read, never written), v[2...] the state,
// updated in place. Arithmetic runs in T, the Op's compute type: float32 for float32, bfloat16
// and float16 parameters, float64 for float64. The device loops widen each stored element to T
// and round the results back once (below, "Storage"), as torch's fused CPU kernels do for
// bf16/fp16 parameters; low-bit state (bfloat16, int8 blocks: "Low-bit optimizer state") is
// decoded before the Op and encoded after it. The formulas are in csrc/optim.h.
//
// Rounding: each Op is torch.optim's single-tensor code, operation for operation. Where torch's
// kernels (on the CPU, built for AVX2 or AVX-512) round a*b+c once with a fused multiply-add,
// so does madd below: torch's `add(x, alpha=a)`, `addcmul` and `lerp` (so `g + wd * p`,
// `b * mu + (1 - dampening) g`, `p - lr * g`, ...). `addcdiv(x, y, value=c)` is
// `self + (c * x) / y` there, and here. The CPU loops compile with contraction off otherwise,
// so the result of an element does not depend on whether the SIMD body or a scalar edge
// computed it, nor on the arrays' alignment.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// Whether madd rounds once: always on the GPU; on the CPU where the compiler targets FMA
// instructions (otherwise std::fma would be a slow library call, and torch's kernels built for
// such CPUs round twice too).
#if defined(__CUDA_ARCH__) || defined(__FMA__) || defined(__aarch64__)
#define FASTNN_OPTIM_FMA 1
#else
#define FASTNN_OPTIM_FMA 0
#endif

namespace fastnn {

// ---- storage -------------------------------------------------------------------------------
// The types tensors are stored in. Arithmetic never runs in bfloat16 or float16: each element is
// widened to the Op's compute type when loaded and rounded (to nearest, ties to even) when
// stored. The bit patterns are IEEE binary16 and bfloat16 (the top half of a float32), as in
// NumPy's float16 and torch.bfloat16.

struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

FASTNN_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FASTNN_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// widen<C>(s): a stored element in compute type C (exact).
template <class C, class S>
FASTNN_HD C widen(S s) {
  if constexpr (std::is_same_v<S, bfloat16>) {
    return C(bits_float(uint32_t(s.bits) << 16));
  } else if constexpr (std::is_same_v<S, float16>) {
#if defined(__CUDA_ARCH__)
    return C(__half2float(__ushort_as_half(s.bits)));
#else
    // Normal and non-finite halves: exponent and mantissa moved to float32's places and the
    // exponent rebiased by 127 - 15 in the integer; subnormal ones are mantissa * 2^-24.
    // No float32 subnormal is involved, so a flush-to-zero mode cannot change the result.
    const uint32_t exponent = s.bits & 0x7c00u;
    const uint32_t magnitude = uint32_t(s.bits & 0x7fffu) << 13;
    const float value = exponent == 0x7c00u ? bits_float(magnitude | 0x7f800000u)
                        : exponent          ? bits_float(magnitude + 0x38000000u)
                                            : float(s.bits & 0x3ffu) * 0x1p-24f;
    return C((s.bits & 0x8000u) ? -value : value);
#endif
  } else {
    return C(s);
  }
}

// narrow<S>(c): c rounded to the storage type S.
template <class S, class C>
FASTNN_HD S narrow(C c) {
  if constexpr (std::is_same_v<S, bfloat16>) {
#if defined(__CUDA_ARCH__)
    return bfloat16{__bfloat16_as_ushort(__float2bfloat16_rn(float(c)))};
#else
    // Round the low 16 bits away, ties to even; NaN becomes torch's canonical 0x7fc0.
    const uint32_t u = float_bits(float(c));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return bfloat16{uint16_t((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded)};
#endif
  } else if constexpr (std::is_same_v<S, float16>) {
#if defined(__CUDA_ARCH__)
    return float16{__half_as_ushort(__float2half_rn(float(c)))};
#else
    const uint32_t u = float_bits(float(c));
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    // Normal halves: rebias the exponent by -112, then round the 13 low mantissa bits away
    // (ties to even); a carry moves into the exponent, up to infinity, as it should.
    const uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
    // Below 2^-14 the half's step is 2^-24, the float32 step at 0.5: adding 0.5 rounds to it.
    const uint32_t subnormal = float_bits(bits_float(a) + 0.5f) - 0x3f000000u;
    const uint32_t magnitude = a > 0x7f800000u    ? 0x7e00u                     // NaN
                               : a >= 0x477ff000u ? 0x7c00u                     // rounds to inf
                               : a >= 0x38800000u ? normal
                                                  : subnormal;
    return float16{uint16_t(sign | magnitude)};
#endif
  } else {
    return S(c);
  }
}

// ---- low-bit optimizer state ---------------------------------------------------------------
// A state list may be stored in fewer bits than the parameters (state_dtype, csrc/optim.h):
// bfloat16 (rounded by narrow above, or stochastically), or int8 blocks. Arithmetic stays in
// the Op's compute type; the device loops decode a block of state, run the Op on it and encode
// the results, in the one pass over memory.

// Stochastic rounding to bfloat16: the float32 bits plus 16 random bits, truncated. Rounds up
// with probability (distance to the value below) / (bfloat16 step), so the rounding is unbiased
// and a sum of small increments does not stall as it does under rounding to nearest. NaN
// becomes 0x7fc0, as in narrow.
FASTNN_HD bfloat16 narrow_stochastic(float c, uint32_t random16) {
  const uint32_t u = float_bits(c);
  return bfloat16{uint16_t((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : (u + random16) >> 16)};
}

// The 16 random bits of element i of state stream `stream` at step `step` (seed: the
// optimizer's): Philox4x32-10 (rng.h) keyed by the seed, counter (i / 8, stream << 32 | step mod
// 2^32); element i takes half i % 2 of word (i / 2) % 4. A stream is (tensor index in the call)
// * 4 + the state list, so every state element of every step draws its own bits.
FASTNN_HD uint64_t state_stream_counter(uint64_t stream, uint64_t step) {
  return (stream << 32) | (step & 0xffffffffu);
}

// int8 state: codes of 8 bits, one per element, and one float32 absmax per block of
// kQuantBlock elements of a tensor (the last block may be shorter). A block's values are scaled
// so that its absmax maps to the code's largest value, and each is rounded to the nearest code
// (ties away from zero): 8-bit floats, so the relative precision is the same from the block's
// largest value down to 2^-14 (signed) or 2^-30 (unsigned) of it (docs/DECISIONS.md, "Low-bit
// optimizer state", says why these codes and this block size).
//   signed code (first moments, momentum buffers, RMSprop's grad_avg): s eeee mmm, bias 15;
//   unsigned code (second moments, Adagrad's sums):                     eeeee mmm, bias 31;
//   value = (1 + m / 8) 2^(e - bias) for e > 0, (m / 8) 2^(1 - bias) for e = 0 (subnormal),
//   so the largest is 1.875 and 0 is exactly 0. A positive value never rounds to 0 in the
//   unsigned code (it takes the smallest code instead): a second moment is a divisor, and a
//   first moment over a zero second moment would step by m / eps. Rounding is to the nearest
//   code, ties away from zero, after y 2^(bias - 127) is rounded to float32 (which only
//   rounds, to float32's subnormal grid, values in the code's subnormal range).
// Blocks whose absmax is 0 or below 2^-126 (float32's smallest normal) are stored as absmax 0,
// codes 0; a block with an infinite or NaN value as absmax NaN, codes 0 (it decodes to NaN, as
// the float32 state would have led to NaN parameters).
constexpr int kQuantBlock = 256;

// The storage type naming int8 block state (the codes; the absmaxes travel as a second list).
struct Int8Blocks {
  uint8_t code;
};

// a * b and a + b rounded alone: nvcc would otherwise contract the codes' mul-then-add into an
// FMA, which rounds once (the CPU code compiles with contraction off).
FASTNN_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FASTNN_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

template <bool kSigned>
struct StateCode {
  static constexpr int kBias = kSigned ? 15 : 31;
  static constexpr uint32_t kMagnitudeMax = kSigned ? 0x7fu : 0xffu;
  static constexpr float kMax = 1.875f;
  // A code's bits, (s) eeee(e) mmm, sit where a float32's exponent and top mantissa bits are
  // (bits 27(26)..20) in the float32 that is its value times 2^(bias - 127): a normal code is a
  // normal float32 there, a subnormal code a float32 subnormal, so one exact multiplication by
  // a power of two converts either way. The loops run with float32 subnormals enabled
  // (csrc/cpu/optim.cpp clears flush-to-zero and denormals-are-zero; CUDA keeps them).
  static constexpr float kToCode = kSigned ? 0x1p-112f : 0x1p-96f;  // 2^(bias - 127)
  static constexpr float kFromCode = kSigned ? 0x1p112f : 0x1p96f;

  // The value of a code, before the block's scale.
  static FASTNN_HD float decode(uint32_t code) {
    if constexpr (kSigned) {
      // The code sign-extended and shifted: its sign fills bits 27..31; keep 31 and 26..20.
      const uint32_t extended = uint32_t(int32_t(int8_t(uint8_t(code))));
      return mul_rn(bits_float((extended << 20) & 0x87f00000u), kFromCode);
    } else {
      return mul_rn(bits_float((code & kMagnitudeMax) << 20), kFromCode);
    }
  }

  // The code of y (|y| <= kMax, finite, as x * (kMax / absmax) is for |x| <= absmax):
  // y * 2^(bias - 127) as a float32 (exact, or rounded to nearest even where it is a float32
  // subnormal), its low 20 bits rounded away to nearest, ties away from zero (one addition:
  // ties to even took three operations more, in a loop that is compute-bound); a carry moves
  // into the exponent, as it should. In the unsigned code a nonzero y never becomes 0: it takes
  // the smallest code.
  static FASTNN_HD uint32_t encode(float y) {
    const uint32_t a = float_bits(mul_rn(y, kToCode)) & 0x7fffffffu;
    // |y| <= kMax (1 + 2^-23): the addition cannot carry past the largest code.
    const uint32_t m = (a + 0x80000u) >> 20;
    if constexpr (kSigned) {
      return m | ((float_bits(y) >> 24) & 0x80u);
    } else {
      const uint32_t nonzero = (float_bits(y) & 0x7fffffffu) != 0 ? 1u : 0u;
      return m > nonzero ? m : nonzero;
    }
  }
};

// A block's absmax from max(|x| as float32 bits) over its values (an integer maximum: exact,
// in any order, NaN above infinity): what is stored, and the scale to the codes.
struct BlockScale {
  float absmax;  // stored
  float to_code; // kMax / absmax, or 0 for a block stored as zeros

  FASTNN_HD explicit BlockScale(uint32_t max_bits) {
    if (max_bits < 0x00800000u) {
      absmax = 0.0f;
      to_code = 0.0f;
    } else if (max_bits >= 0x7f800000u) {
      absmax = bits_float(0x7fc00000u);
      to_code = 0.0f;
    } else {
      absmax = bits_float(max_bits);
      to_code = StateCode<true>::kMax / absmax;
    }
  }
};

// The factor that turns a code's value back into the state value: absmax / kMax.
FASTNN_HD float block_from_code(float absmax) { return absmax / StateCode<true>::kMax; }

// ---- arithmetic ----------------------------------------------------------------------------

// a * b + c, rounded once where torch rounds once (see the top of this file).
template <class T>
FASTNN_HD T madd(T a, T b, T c) {
#if FASTNN_OPTIM_FMA
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// `flag ? if_true : if_false` for a flag fixed per launch (an Op's option), as a bitwise
// blend: GCC does not vectorize a select on a loop-invariant bool (it left the CPU loops of
// every rule with such an option scalar, 6x slower). Exact: the bits of one operand. kPlain:
// the caller knows every flag of the Op is false (Op::plain()), so the blend and the operand
// it would discard are not computed at all (the CPU loops run such a copy of their loop).
template <bool kPlain = false, class T>
FASTNN_HD T pick(bool flag, T if_true, T if_false) {
  if constexpr (kPlain) return if_false;
#if defined(__CUDA_ARCH__)
  return flag ? if_true : if_false;
#else
  using U = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  static_assert(sizeof(T) == sizeof(U), "pick blends float32 or float64");
  const U mask = U(0) - U(flag);
  U a, b;
  std::memcpy(&a, &if_true, sizeof a);
  std::memcpy(&b, &if_false, sizeof b);
  const U blended = (a & mask) | (b & ~mask);
  T out;
  std::memcpy(&out, &blended, sizeof out);
  return out;
#endif
}

// `flag ? make() : otherwise` for a flag fixed per launch: the CPU loops compute both and pick
// (above); a GPU thread branches (uniformly), so that the operand not taken holds no registers
// (computing both made Adam with AMSGrad spill).
template <bool kPlain = false, class T, class F>
FASTNN_HD T when(bool flag, F make, T otherwise) {
  if constexpr (kPlain) return otherwise;
#if defined(__CUDA_ARCH__)
  return flag ? make() : otherwise;
#else
  return pick(flag, make(), otherwise);
#endif
}

// torch.lerp(a, b, w) = a + w (b - a) for a weight w fixed per launch, computed from the end
// nearer w as torch does: a + w (b - a) when |w| < 0.5, else b + (w - 1) (b - a).
template <class T>
struct Lerp {
  T coef;
  bool from_end;

  Lerp() = default;
  FASTNN_HD explicit Lerp(double w)
      : coef(std::abs(T(w)) < T(0.5) ? T(w) : T(w) - T(1)), from_end(!(std::abs(T(w)) < T(0.5))) {}

  template <bool kPlain = false>
  FASTNN_HD T operator()(T a, T b) const { return madd(coef, b - a, pick<kPlain>(from_end, b, a)); }
};

// The largest of a and b, NaN if either is NaN (torch.maximum).
template <class T>
FASTNN_HD T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// ---- the rules -----------------------------------------------------------------------------
// Each operator() is torch.optim's single-tensor step for one element, in torch's order (the
// torch call each line stands for is on its right). kNonNegative marks (bit l for v[l]) the
// states that are never negative, stored in int8 with the unsigned code; kQuantizable says
// whether the rule takes int8 state at all. plain() says whether every option flag is off, so
// that operator()<true> (which assumes so) computes the same.

struct SgdHyper {
  double momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
};

// v = (p, g[, momentum_buffer])
template <class T, bool kMomentum>
struct SgdOp {
  using value_type = T;
  static constexpr int kLists = kMomentum ? 3 : 2;
  static constexpr unsigned kNonNegative = 0;
  static constexpr bool kQuantizable = true;
  T neg_lr, momentum, damp, weight_decay;
  bool nesterov, maximize, first_step, decays;

  SgdOp() = default;
  FASTNN_HD SgdOp(const SgdHyper& h, double lr, double /*step*/)
      : neg_lr(T(-lr)), momentum(T(h.momentum)), damp(T(1 - h.dampening)),
        weight_decay(T(h.weight_decay)), nesterov(h.nesterov), maximize(h.maximize),
        first_step(h.first_step), decays(weight_decay != T(0)) {}

  FASTNN_HD bool plain() const { return !(nesterov || maximize || first_step || decays); }

  template <bool kPlain = false>
  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = pick<kPlain>(maximize, -v[1], v[1]);
    g = when<kPlain>(decays, [&] { return madd(weight_decay, v[0], g); }, g);  // g.add(p, alpha=wd)
    if constexpr (kMomentum) {
      // torch creates the buffer as a copy of the gradient: no decay, no dampening.
      // b.mul_(mu).add_(g, alpha=1-d)
      const T buf = when<kPlain>(first_step, [&] { return g; }, madd(damp, g, v[2] * momentum));
      v[2] = buf;
      // g.add(b, alpha=mu)
      g = when<kPlain>(nesterov, [&] { return madd(momentum, buf, g); }, buf);
    }
    v[0] = madd(neg_lr, g, v[0]);  // p.add_(g, alpha=-lr)
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
  static constexpr unsigned kNonNegative = 1u << 2;
  static constexpr bool kQuantizable = true;
  T neg_clr, weight_decay, eps;
  bool maximize, decays;

  AdagradOp() = default;
  FASTNN_HD AdagradOp(const AdagradHyper& h, double lr, double step)
      : neg_clr(T(-(lr / (1 + (step - 1) * h.lr_decay)))), weight_decay(T(h.weight_decay)),
        eps(T(h.eps)), maximize(h.maximize), decays(weight_decay != T(0)) {}

  FASTNN_HD bool plain() const { return !(maximize || decays); }

  template <bool kPlain = false>
  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = pick<kPlain>(maximize, -v[1], v[1]);
    g = when<kPlain>(decays, [&] { return madd(weight_decay, v[0], g); }, g);  // g.add(p, alpha=wd)
    const T sum = madd(g, g, v[2]);  // s.addcmul_(g, g)
    v[2] = sum;
    // p.addcdiv_(g, s.sqrt().add_(eps), value=-clr)
    v[0] = v[0] + neg_clr * g / (std::sqrt(sum) + eps);
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
  static constexpr unsigned kNonNegative = 1u << 2;
  // Centered: v - a^2 is a difference of two quantized values, which would go negative
  // (a NaN step) wherever the gradient's variance is small next to its mean.
  static constexpr bool kQuantizable = !kCentered;
  T neg_lr, alpha, alpha_c, eps, weight_decay, momentum;
  Lerp<T> toward_g;  // weight 1 - alpha
  bool maximize, decays;

  RmspropOp() = default;
  FASTNN_HD RmspropOp(const RmspropHyper& h, double lr, double /*step*/)
      : neg_lr(T(-lr)), alpha(T(h.alpha)), alpha_c(T(1 - h.alpha)), eps(T(h.eps)),
        weight_decay(T(h.weight_decay)), momentum(T(h.momentum)), toward_g(1 - h.alpha),
        maximize(h.maximize), decays(weight_decay != T(0)) {}

  FASTNN_HD bool plain() const { return !(maximize || decays || (kCentered && toward_g.from_end)); }

  template <bool kPlain = false>
  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = pick<kPlain>(maximize, -v[1], v[1]);
    g = when<kPlain>(decays, [&] { return madd(weight_decay, v[0], g); }, g);  // g.add(p, alpha=wd)
    const T sq = madd(alpha_c * g, g, v[2] * alpha);  // v.mul_(alpha).addcmul_(g, g, value=1-alpha)
    v[2] = sq;
    T avg;
    if constexpr (kCentered) {
      const T ga = toward_g.template operator()<kPlain>(v[kGradAvg], g);  // a.lerp_(g, 1-alpha)
      v[kGradAvg] = ga;
      avg = std::sqrt(madd(-ga, ga, sq));  // v.addcmul(a, a, value=-1).sqrt_()
    } else {
      avg = std::sqrt(sq);
    }
    avg = avg + eps;
    if constexpr (kMomentum) {
      const T buf = v[kBuffer] * momentum + g / avg;  // b.mul_(mu).addcdiv_(g, avg)
      v[kBuffer] = buf;
      v[0] = madd(neg_lr, buf, v[0]);  // p.add_(b, alpha=-lr)
    } else {
      v[0] = v[0] + neg_lr * g / avg;  // p.addcdiv_(g, avg, value=-lr)
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
  static constexpr unsigned kNonNegative = (1u << 3) | (kAmsgrad ? 1u << 4 : 0u);
  static constexpr bool kQuantizable = true;
  T beta2, beta2_c, eps, weight_decay, decay, neg_step_size, bias_correction2_sqrt;
  Lerp<T> toward_g;  // weight 1 - beta1
  bool maximize, decays_p, decays_g;  // decoupled weight decay (AdamW), or L2

  AdamOp() = default;
  // Bias corrections in float64 whatever T is, as torch computes them in Python floats.
  FASTNN_HD AdamOp(const AdamHyper& h, double lr, double step)
      : beta2(T(h.beta2)), beta2_c(T(1 - h.beta2)), eps(T(h.eps)), weight_decay(T(h.weight_decay)),
        decay(T(1 - lr * h.weight_decay)),
        neg_step_size(T(-(lr / (1 - std::pow(h.beta1, step))))),
        bias_correction2_sqrt(T(std::sqrt(1 - std::pow(h.beta2, step)))), toward_g(1 - h.beta1),
        maximize(h.maximize), decays_p(weight_decay != T(0) && h.decoupled),
        decays_g(weight_decay != T(0) && !h.decoupled) {}

  FASTNN_HD bool plain() const { return !(maximize || decays_p || decays_g || toward_g.from_end); }

  template <bool kPlain = false>
  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = pick<kPlain>(maximize, -v[1], v[1]);
    const T p = when<kPlain>(decays_p, [&] { return v[0] * decay; }, v[0]);  // p.mul_(1 - lr wd)
    g = when<kPlain>(decays_g, [&] { return madd(weight_decay, v[0], g); }, g);  // g.add(p, wd)
    const T m = toward_g.template operator()<kPlain>(v[2], g);  // m.lerp_(g, 1-beta1)
    T s = madd(beta2_c * g, g, v[3] * beta2);       // v.mul_(beta2).addcmul_(g, g, value=1-beta2)
    v[2] = m;
    v[3] = s;
    if constexpr (kAmsgrad) {
      s = nan_max(v[4], s);  // torch.maximum(vmax, v, out=vmax)
      v[4] = s;
    }
    // p.addcdiv_(m, v.sqrt() / bias_correction2_sqrt + eps, value=-step_size)
    v[0] = p + neg_step_size * m / (std::sqrt(s) / bias_correction2_sqrt + eps);
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
  static constexpr unsigned kNonNegative = 1u << 3;
  // Step sizes are multiplied by etaplus or etaminus and clamped: they stay float.
  static constexpr bool kQuantizable = false;
  T etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;

  RpropOp() = default;
  FASTNN_HD RpropOp(const RpropHyper& h, double /*lr*/, double /*step*/)
      : etaminus(T(h.etaminus)), etaplus(T(h.etaplus)), step_size_min(T(h.step_size_min)),
        step_size_max(T(h.step_size_max)), maximize(h.maximize) {}

  FASTNN_HD bool plain() const { return !maximize; }

  template <bool kPlain = false>
  FASTNN_HD void operator()(T (&v)[kLists]) const {
    T g = pick<kPlain>(maximize, -v[1], v[1]);
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
    v[0] = madd(-sign, size, v[0]);  // p.addcmul_(g.sign(), size, value=-1)
    v[2] = g;
  }
};

}  // namespace fastnn
