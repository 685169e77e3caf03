// Fused optimizers on the CPU. Formulas and the rule table in optim.h, per-element math, the
// storage types and the state codes in optim_math.h.
//
// One call updates a whole list of tensors: the elements of all tensors are treated as one
// range, split in equal contiguous parts over the OpenMP threads (so one large tensor and many
// small ones are shared alike), and each thread walks the pieces of the tensors its part
// covers with a SIMD loop that reads parameter, gradient and state once and writes parameter
// and state once, widening bfloat16 and float16 to float32 on the way in and rounding on the
// way out.
//
// bfloat16 and int8 state run block by block instead (kQuantBlock elements of a tensor, so an
// int8 block is never split between threads): the block's state is decoded into float32
// buffers that stay in L1, the Op's SIMD loop updates parameters and buffers, and the buffers
// are encoded back: bfloat16 rounded by AVX512_BF16's VCVTNEPS2BF16 where the CPU has it (its
// subnormal and NaN lanes, which it flushes or keeps the payload of, redone as narrow does:
// the same bits as the portable loop), or stochastically; int8 as the block's absmax (an
// integer maximum over the float bits) and the codes. Memory is still read and written once.
// Adam with float32 parameters has hand-written AVX-512 versions of both (section "Adam's
// low-bit state on AVX-512"), which also prefetch.

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
#include <atomic>
#include <cstring>
#include <limits>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#define FASTNN_OPTIM_AVX512 1
#else
#define FASTNN_OPTIM_AVX512 0
#endif
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
#define FASTNN_OPTIM_AVX512_BF16 1
#else
#define FASTNN_OPTIM_AVX512_BF16 0
#endif

#include "cpu/parallel.h"
#include "rng.h"

namespace fastnn::cpu {
namespace {

#if defined(__GNUC__)
#define FASTNN_INLINE_LAMBDA __attribute__((always_inline))
#else
#define FASTNN_INLINE_LAMBDA
#endif

// Whether the hand-written AVX-512 loops run (the bfloat16 rounding by VCVTNEPS2BF16, Adam's
// low-bit state loops) where they are compiled in; set_optim_avx512_loops switches them off for
// the tests, which compare them with the portable loops bit for bit.
std::atomic<bool> g_avx512_loops{true};

bool avx512_loops() { return g_avx512_loops.load(std::memory_order_relaxed); }

template <class Op>
struct IsAdam : std::false_type {};
template <bool kAmsgrad>
struct IsAdam<AdamOp<float, kAmsgrad>> : std::true_type {};

// Whether Op with Types' storage has the hand-written AVX-512 low-bit loops: Adam on float32
// parameters and gradients.
template <class Types, class Op>
constexpr bool kAvx512Adam = IsAdam<Op>::value && std::is_same_v<typename Types::param, float> &&
                             std::is_same_v<typename Types::grad, float>;

// IEEE subnormals (no flush-to-zero, no denormals-are-zero) on this thread while it lives: the
// int8 codes pass through float32 subnormals (optim_math.h), whatever mode the caller set.
class IeeeSubnormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  IeeeSubnormals() : saved_(_mm_getcsr()) {
    _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero));
  }
  ~IeeeSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x40;
  unsigned saved_;
#endif
};

// One tensor's lists, typed as Types stores them: the parameter, its gradient and L - 2 states
// (and their absmaxes when int8).
template <class Types, int L>
struct Lists {
  typename Types::param* param;
  const typename Types::grad* grad;
  typename Types::state* state[L > 2 ? L - 2 : 1];
  float* absmax[L > 2 ? L - 2 : 1];
};

// Elements [lo, hi) of one tensor: v[l] = list l's element widened to T, updated by op, and
// written back rounded (all lists but the gradient, list 1).
// `op` is taken by value: a local copy cannot alias the arrays, so its fields stay in registers.
// kPlain: op.plain() holds (no option flag set), and the loop is compiled without them.
template <class Types, bool kPlain, class Op, class T = typename Op::value_type>
void update_simd(const Op op, const Lists<Types, Op::kLists>& ptr, int64_t lo, int64_t hi) {
  constexpr int L = Op::kLists;
  using P = typename Types::param;
  using S = typename Types::state;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    T v[L];
    v[0] = widen<T>(ptr.param[i]);
    v[1] = widen<T>(ptr.grad[i]);
    if constexpr (L > 2)  // (int8 "state" of a rule that keeps none)
      for (int l = 2; l < L; ++l) v[l] = widen<T>(ptr.state[l - 2][i]);
    op.template operator()<kPlain>(v);
    ptr.param[i] = narrow<P>(v[0]);
    if constexpr (L > 2)
      for (int l = 2; l < L; ++l) ptr.state[l - 2][i] = narrow<S>(v[l]);
  }
}

// Vector loads that straddle two cache lines cost up to half the bandwidth here, so the range
// is split where the parameter's address reaches a 64-byte boundary. Arrays with the same
// offset within a cache line (fastnn allocates the state that way) are then all aligned.
template <class Types, bool kPlain, class Op>
void update_range(const Op& op, const Lists<Types, Op::kLists>& ptr, int64_t lo, int64_t hi) {
  const int64_t size = int64_t(sizeof(typename Types::param));
  const int64_t offset = int64_t(reinterpret_cast<uintptr_t>(ptr.param + lo) % 64);
  const int64_t head = offset % size ? 0 : std::min(hi - lo, (64 - offset) % 64 / size);
  update_simd<Types, kPlain>(op, ptr, lo, lo + head);
  update_simd<Types, kPlain>(op, ptr, lo + head, hi);
}

// Tensor t's lists from the flat pointer table (int8 state: codes then absmaxes per state).
template <class Types, class Op>
Lists<Types, Op::kLists> lists_of(const TensorPointers& tensors, int64_t count, int64_t t) {
  constexpr int L = Op::kLists;
  auto address = [&](int l) { return tensors[size_t(l * count + t)]; };
  Lists<Types, L> ptr{};
  ptr.param = reinterpret_cast<typename Types::param*>(address(0));
  ptr.grad = reinterpret_cast<const typename Types::grad*>(address(1));
  for (int l = 2; l < L; ++l) {
    const int list = kQuantized<Types> ? 2 + 2 * (l - 2) : l;
    ptr.state[l - 2] = reinterpret_cast<typename Types::state*>(address(list));
    if constexpr (kQuantized<Types>)
      ptr.absmax[l - 2] = reinterpret_cast<float*>(address(list + 1));
  }
  return ptr;
}

template <class Types, class Op>
void update_all(const Op& op, const TensorPointers& tensors, const TensorSizes& sizes) {
  const int64_t count = int64_t(sizes.size());
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  const bool plain = op.plain();
  parallel_for(total, kParallelGrain, [&](int64_t begin, int64_t end) {
    int64_t offset = 0;
    for (int64_t t = 0; t < count && offset < end; offset += sizes[t], ++t) {
      const int64_t lo = std::max(begin, offset) - offset;
      const int64_t hi = std::min(end, offset + sizes[t]) - offset;
      if (lo >= hi) continue;
      if (plain) update_range<Types, true>(op, lists_of<Types, Op>(tensors, count, t), lo, hi);
      else update_range<Types, false>(op, lists_of<Types, Op>(tensors, count, t), lo, hi);
    }
  });
}

// ---- low-bit state, one block at a time -----------------------------------------------------

// out[i] = bits of x[i] rounded to bfloat16 (to nearest even), i < n.
void round_bf16(const float* x, uint16_t* out, int n) {
  int i = 0;
#if FASTNN_OPTIM_AVX512_BF16
  if (avx512_loops()) {
    for (; i + 16 <= n; i += 16) {
      const __m512 v = _mm512_loadu_ps(x + i);
      const __m256bh rounded = _mm512_cvtneps_pbh(v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          reinterpret_cast<const __m256i&>(rounded));
      // The instruction reads subnormals as 0 and keeps a NaN's payload: those lanes (rare in
      // optimizer state) are rounded again as narrow rounds them.
      // (classes: quiet NaN 0x01, subnormal 0x20, signalling NaN 0x80)
      const __mmask16 special = _mm512_fpclass_ps_mask(v, 0xa1);
      for (unsigned m = special; m; m &= m - 1) {
        const int j = i + __builtin_ctz(m);
        out[j] = narrow<bfloat16>(x[j]).bits;
      }
    }
  }
#endif
#pragma omp simd
  for (int k = i; k < n; ++k) out[k] = narrow<bfloat16>(x[k]).bits;
}

// out[i] = x[i] rounded to bfloat16 stochastically, i < n, the block starting at element
// `first` (a multiple of 8) of state stream `stream`.
void round_bf16_stochastic(const float* x, uint16_t* out, int n, const StateRounding& r,
                           uint64_t stream, int64_t first) {
  const uint64_t counter = state_stream_counter(stream, r.step);
  for (int g = 0; g < n; g += 8) {
    const Philox4x32 bits = philox_block(r.seed, counter, uint64_t(first + g) / 8);
    const int m = std::min(8, n - g);
    for (int k = 0; k < m; ++k)
      out[g + k] = narrow_stochastic(x[g + k], (bits.v[k / 2] >> (16 * (k % 2))) & 0xffffu).bits;
  }
}

template <bool kSigned>
void decode_block(const uint8_t* codes, float absmax, float* out, int n) {
  const float scale = block_from_code(absmax);
#pragma omp simd
  for (int i = 0; i < n; ++i) out[i] = StateCode<kSigned>::decode(codes[i]) * scale;
}

// The codes of x[i] * to_code, i < n (a block whose scale stores zeros gets zeros).
template <bool kSigned>
void encode_codes(const float* x, uint8_t* codes, const BlockScale& scale, int n) {
  if (scale.to_code == 0.0f) {
    std::memset(codes, 0, size_t(n));
    return;
  }
  const float to_code = scale.to_code;
#pragma omp simd
  for (int i = 0; i < n; ++i) codes[i] = uint8_t(StateCode<kSigned>::encode(x[i] * to_code));
}

// max(|x| as float32 bits), the block's absmax before BlockScale.
FASTNN_INLINE uint32_t magnitude_bits(float x) { return float_bits(x) & 0x7fffffffu; }

template <bool kSigned>
void encode_block(const float* x, uint8_t* codes, float* absmax, int n) {
  uint32_t largest = 0;
#pragma omp simd reduction(max : largest)
  for (int i = 0; i < n; ++i) largest = std::max(largest, magnitude_bits(x[i]));
  const BlockScale scale(largest);
  *absmax = scale.absmax;
  encode_codes<kSigned>(x, codes, scale, n);
}

#if FASTNN_OPTIM_AVX512
// Adam's low-bit state on AVX-512, for full blocks of float32 parameters (the usual case):
// Int8Pipeline::run_avx512 and adam_bf16_block below are the portable loops written out by
// hand, with the same operations in the same order, so the same bits (the tests compare them
// through set_optim_avx512_loops).
// int8, 16 elements per vector: the pipelined loop (update one block, encode the one before).
// GCC's version widens the byte codes 64 at a time and spills; this one takes 16 at a time and
// spends fewer operations where the format allows it:
//  - decoding, the code's value times the block's scale is one multiplication by
//    2^(127 - bias) scale instead of two (exact: the code's float32 times 2^(127 - bias) is
//    exact, so both forms round the same product once), in the blocks where that factor is a
//    finite float32 (absmax below about 1.2e5, or 8e9 for the unsigned code; others take two);
//  - second moments are never negative (sums of squares and their maxima; the unsigned code
//    decodes to >= +0), so their magnitude is their bits, without a mask.
// bfloat16 (rounded to nearest even): update and rounding in one loop, no float32 buffer.
// Measured with the data in L2 on one Zen 4 core, ns per element: int8 0.35 -> 0.24, bfloat16
// 0.26-0.37 -> 0.16 (float32 state 0.16: Adam's square root and two divisions alone take 0.15).
// Reading and writing the int8 codes a cache line at a time (64 elements per step, the codes
// packed by two saturating packs and a transpose) was tried: it cost more arithmetic than it
// saved in memory time once the loop prefetches.
namespace avx512 {

constexpr uint32_t kAbs = 0x7fffffffu;

// The loops below ask for the lines of the 64 parameters, gradients and states kAhead elements
// on (four blocks) every 64 elements: with the hardware's prefetchers alone they ran a fifth to a
// quarter slower than the memory in the minutes when this VM's memory is fast (measured on 32M
// parameters, interleaved with float32 state: int8 1.26x -> 1.67x, bfloat16 1.27x -> 1.45x).
constexpr int64_t kAhead = 4 * kQuantBlock;

template <class S, size_t N>
FASTNN_INLINE void prefetch_ahead(const float* param, const float* grad, S* const (&state)[N],
                                  int64_t state_offset) {
  for (int k = 0; k < 64; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(param + kAhead + k), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(grad + kAhead + k), _MM_HINT_T0);
  }
  for (size_t l = 0; l < N; ++l)
    for (size_t k = 0; k < 64 * sizeof(S); k += 64)
      _mm_prefetch(reinterpret_cast<const char*>(state[l] + state_offset + kAhead) + k, _MM_HINT_T0);
}

// 16 codes from `codes`, decoded and scaled: value = code's float32 bits (StateCode::decode)
// times `factor`, and times `second` unless kFolded (then factor holds both).
template <bool kSigned, bool kFolded>
FASTNN_INLINE __m512 decode(const uint8_t* codes, __m512 factor, __m512 second) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  __m512i bits;
  if constexpr (kSigned)  // sign-extended: keep bit 31 and bits 26..20
    bits = _mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(bytes), 20),
                            _mm512_set1_epi32(int(0x87f00000u)));
  else
    bits = _mm512_slli_epi32(_mm512_cvtepu8_epi32(bytes), 20);
  const __m512 value = _mm512_mul_ps(_mm512_castsi512_ps(bits), factor);
  return kFolded ? value : _mm512_mul_ps(value, second);
}

// StateCode<true>::encode(x * to_code) of 16 values, stored at `codes`: with the sign left in
// the float32's bits t, (t + 2^19) >> 20 has the rounded magnitude in bits 6..0 (no carry
// reaches bit 31) and t >> 24 the sign in bit 7; one bitwise select joins them.
FASTNN_INLINE void encode_signed(const float* x, __m512 to_code, uint8_t* codes) {
  const __m512 y = _mm512_mul_ps(_mm512_load_ps(x), to_code);
  const __m512i t =
      _mm512_castps_si512(_mm512_mul_ps(y, _mm512_set1_ps(StateCode<true>::kToCode)));
  const __m512i magnitude = _mm512_srli_epi32(_mm512_add_epi32(t, _mm512_set1_epi32(0x80000)), 20);
  // 0xca: bits of the first operand (0x7f) choose the second (magnitude), else the third
  const __m512i code = _mm512_ternarylogic_epi32(_mm512_set1_epi32(0x7f), magnitude,
                                                 _mm512_srli_epi32(t, 24), 0xca);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtepi32_epi8(code));
}

// StateCode<false>::encode(x * to_code) of 16 values x >= +0 (or in a block stored as zeros).
FASTNN_INLINE void encode_unsigned(const float* x, __m512 to_code, uint8_t* codes) {
  const __m512 y = _mm512_mul_ps(_mm512_load_ps(x), to_code);
  const __m512i a =
      _mm512_castps_si512(_mm512_mul_ps(y, _mm512_set1_ps(StateCode<false>::kToCode)));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(0x80000)), 20);
  const __m512i nonzero = _mm512_min_epu32(_mm512_castps_si512(y), _mm512_set1_epi32(1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes),
                   _mm512_cvtepi32_epi8(_mm512_max_epu32(rounded, nonzero)));
}

// The decoding factors of one state's block: 2^(127 - bias) scale folded when finite.
template <bool kSigned>
struct DecodeFactors {
  __m512 factor, second;
  bool folded;
  explicit DecodeFactors(float absmax) {
    const float scale = block_from_code(absmax);
    const float both = scale * StateCode<kSigned>::kFromCode;
    folded = both <= std::numeric_limits<float>::max();
    factor = _mm512_set1_ps(folded ? both : StateCode<kSigned>::kFromCode);
    second = _mm512_set1_ps(scale);
  }
};

// AdamOp<float, kAms>::operator() on 16 lanes, the same operations in the same order.
template <bool kAms>
struct AdamLanes {
  __m512 beta2, beta2_c, eps, weight_decay, decay, neg_step_size, bias_correction2_sqrt, coef;
  __mmask16 maximize, decays_p, decays_g, from_end;

  explicit AdamLanes(const AdamOp<float, kAms>& op)
      : beta2(_mm512_set1_ps(op.beta2)), beta2_c(_mm512_set1_ps(op.beta2_c)),
        eps(_mm512_set1_ps(op.eps)), weight_decay(_mm512_set1_ps(op.weight_decay)),
        decay(_mm512_set1_ps(op.decay)), neg_step_size(_mm512_set1_ps(op.neg_step_size)),
        bias_correction2_sqrt(_mm512_set1_ps(op.bias_correction2_sqrt)),
        coef(_mm512_set1_ps(op.toward_g.coef)), maximize(op.maximize ? 0xffff : 0),
        decays_p(op.decays_p ? 0xffff : 0), decays_g(op.decays_g ? 0xffff : 0),
        from_end(op.toward_g.from_end ? 0xffff : 0) {}

  // p, g, m, v and (AMSGrad) vmax in, the new ones out.
  template <bool kPlain>
  FASTNN_INLINE void operator()(__m512& p, __m512 g, __m512& m, __m512& v, __m512& vmax) const {
    const __m512 p0 = p;
    if constexpr (!kPlain) {
      g = _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(g), maximize,
                                                    _mm512_castps_si512(g),
                                                    _mm512_set1_epi32(int(0x80000000u))));
      p = _mm512_mask_mul_ps(p0, decays_p, p0, decay);
      g = _mm512_mask3_fmadd_ps(weight_decay, p0, g, decays_g);
    }
    m = _mm512_fmadd_ps(coef, _mm512_sub_ps(g, m), kPlain ? m : _mm512_mask_blend_ps(from_end, m, g));
    v = _mm512_fmadd_ps(_mm512_mul_ps(beta2_c, g), g, _mm512_mul_ps(v, beta2));
    __m512 s = v;
    if constexpr (kAms) {  // vmax = nan_max(vmax, v)
      const __mmask16 keep = _mm512_cmp_ps_mask(vmax, vmax, _CMP_UNORD_Q) |
                             _mm512_cmp_ps_mask(vmax, v, _CMP_GT_OQ);
      s = vmax = _mm512_mask_blend_ps(keep, v, vmax);
    }
    const __m512 denom =
        _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(s), bias_correction2_sqrt), eps);
    p = _mm512_add_ps(p, _mm512_div_ps(_mm512_mul_ps(neg_step_size, m), denom));
  }
};

#if FASTNN_OPTIM_AVX512_BF16
// Adam's bfloat16 state (rounded to nearest even) on AVX-512, for full blocks of float32
// parameters: update_block's loop and round_bf16 in one pass, with no float32 buffer between
// them. Widening is a shift; rounding is VCVTNEPS2BF16, with the lanes it gets wrong for this
// contract (subnormal and NaN inputs) rounded again as narrow does, as in round_bf16.
FASTNN_INLINE __m512 widen_bf16(const bfloat16* x) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

FASTNN_INLINE void store_bf16(__m512 x, bfloat16* out) {
  const __m256bh rounded = _mm512_cvtneps_pbh(x);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), reinterpret_cast<const __m256i&>(rounded));
  const __mmask16 special = _mm512_fpclass_ps_mask(x, 0xa1);  // quiet NaN, subnormal, signalling NaN
  if (special) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, x);
    for (unsigned m = special; m; m &= m - 1) {
      const int j = __builtin_ctz(m);
      out[j] = narrow<bfloat16>(lanes[j]);
    }
  }
}

template <bool kPlain, bool kAms>
FASTNN_INLINE void adam_bf16_block(const AdamLanes<kAms>& adam, float* param, const float* grad,
                     bfloat16* const (&state)[kAms ? 3 : 2]) {
  for (int i = 0; i < kQuantBlock; i += 16) {
    if (i % 64 == 0) prefetch_ahead(param + i, grad + i, state, i);
    __m512 p = _mm512_loadu_ps(param + i);
    const __m512 g = _mm512_loadu_ps(grad + i);
    __m512 m = widen_bf16(state[0] + i), v = widen_bf16(state[1] + i), vmax = v;
    if constexpr (kAms) vmax = widen_bf16(state[2] + i);
    adam.template operator()<kPlain>(p, g, m, v, vmax);
    _mm512_storeu_ps(param + i, p);
    store_bf16(m, state[0] + i);
    store_bf16(v, state[1] + i);
    if constexpr (kAms) store_bf16(vmax, state[2] + i);
  }
}
#endif

}  // namespace avx512
#endif

// bfloat16 state, the n (<= kQuantBlock) elements of tensor `tensor` from `lo` (a multiple of
// kQuantBlock): one SIMD loop decodes each element's state, updates it and keeps the new state
// in an L1 buffer, which is then rounded into the state.
template <class Types, bool kPlain, class Op, class T = typename Op::value_type>
void update_block(const Op op, const Lists<Types, Op::kLists>& ptr, int64_t lo, int n,
                  uint64_t tensor, const StateRounding& rounding) {
  constexpr int L = Op::kLists;
  constexpr int LS = L > 2 ? L - 2 : 1;
  using P = typename Types::param;
  static_assert(std::is_same_v<T, float>, "low-bit state is computed in float32");
  static_assert(std::is_same_v<typename Types::state, bfloat16>, "bfloat16 state");
  alignas(64) float buffer[LS][kQuantBlock];
  P* param = ptr.param + lo;
  const typename Types::grad* grad = ptr.grad + lo;
  const bfloat16* state[LS] = {};
  for (int l = 2; l < L; ++l) state[l - 2] = ptr.state[l - 2] + lo;
#pragma omp simd
  for (int i = 0; i < n; ++i) {
    T v[L];
    v[0] = widen<T>(param[i]);
    v[1] = widen<T>(grad[i]);
    for (int l = 2; l < L; ++l) v[l] = widen<T>(state[l - 2][i]);
    op.template operator()<kPlain>(v);
    param[i] = narrow<P>(v[0]);
    for (int l = 2; l < L; ++l) buffer[l - 2][i] = v[l];
  }
  for (int l = 2; l < L; ++l) {
    uint16_t* out = &ptr.state[l - 2][lo].bits;
    if (rounding.stochastic)
      round_bf16_stochastic(buffer[l - 2], out, n, rounding, tensor * 4 + uint64_t(l - 2), lo);
    else
      round_bf16(buffer[l - 2], out, n);
  }
}


// int8 state, block by block, software-pipelined: the SIMD loop that updates a block (decoding
// its state, keeping the new state in an L1 buffer and its largest magnitudes) also encodes the
// previous block from its buffer, so the update's divisions and square roots and the encoding's
// integer work share the core instead of taking turns (measured with the data in L2: 19.2 ->
// 17.7 cycles per 16 elements of Adam, against an update loop followed by an encoding loop).
template <class Types, class Op>
class Int8Pipeline {
  static constexpr int L = Op::kLists;
  static constexpr int LS = L > 2 ? L - 2 : 1;
  using T = typename Op::value_type;
  using P = typename Types::param;
  static_assert(std::is_same_v<T, float>, "low-bit state is computed in float32");
  static_assert(L <= 5, "at most three state lists");

  // A block: where its codes go, its scale to the codes, its length.
  struct Block {
    uint8_t* codes[LS];
    float to_code[LS];
    int n = 0;
  };

  const Op op_;
  const bool plain_;  // op_.plain(): run the loop compiled without the option flags
  alignas(64) float buffer_[2][LS][kQuantBlock];
  Block pending_;      // updated, not yet encoded: buffer_[which_]
  int which_ = 0;

  template <int l>
  static constexpr bool kSigned = !(Op::kNonNegative >> l & 1u);

  // One SIMD loop: update `n` elements of the block at ptr + lo into buffer_[cur] (when
  // kUpdate), encode the pending block from buffer_[1 - cur] (when kEncode).
  template <bool kUpdate, bool kEncode>
  void run(const Lists<Types, L>& ptr, int64_t lo, int n, int cur, uint32_t (&largest)[3]) {
    if (plain_) run<kUpdate, kEncode, true>(ptr, lo, n, cur, largest);
    else run<kUpdate, kEncode, false>(ptr, lo, n, cur, largest);
  }

  template <bool kUpdate, bool kEncode, bool kPlain>
  void run(const Lists<Types, L>& ptr, int64_t lo, int n, int cur, uint32_t (&largest)[3]) {
#if FASTNN_OPTIM_AVX512
    if constexpr (kAvx512Adam<Types, Op>) {
      if (n == kQuantBlock && avx512_loops()) {
        run_avx512<kUpdate, kEncode, kPlain>(ptr, lo, cur, largest);
        return;
      }
    }
#endif
    float* out[LS];
    const float* in[LS];
    const Int8Blocks* state[LS] = {};
    float scale[LS] = {};
    for (int l = 0; l < LS; ++l) {
      out[l] = buffer_[cur][l];
      in[l] = buffer_[1 - cur][l];
    }
    P* param = nullptr;
    const typename Types::grad* grad = nullptr;
    if constexpr (kUpdate) {
      param = ptr.param + lo;
      grad = ptr.grad + lo;
      for (int l = 2; l < L; ++l) {
        state[l - 2] = ptr.state[l - 2] + lo;
        scale[l - 2] = block_from_code(ptr.absmax[l - 2][lo / kQuantBlock]);
      }
    }
    const Block pending = pending_;
    uint32_t largest0 = 0, largest1 = 0, largest2 = 0;
#pragma omp simd reduction(max : largest0, largest1, largest2)
    for (int i = 0; i < n; ++i) {
      if constexpr (kUpdate) {
        T v[L];
        v[0] = widen<T>(param[i]);
        v[1] = widen<T>(grad[i]);
        v[2] = StateCode<kSigned<2>>::decode(state[0][i].code) * scale[0];
        if constexpr (L > 3) v[3] = StateCode<kSigned<3>>::decode(state[1][i].code) * scale[1];
        if constexpr (L > 4) v[4] = StateCode<kSigned<4>>::decode(state[2][i].code) * scale[2];
        op_.template operator()<kPlain>(v);
        param[i] = narrow<P>(v[0]);
        for (int l = 2; l < L; ++l) out[l - 2][i] = v[l];
        largest0 = std::max(largest0, magnitude_bits(v[2]));
        if constexpr (L > 3) largest1 = std::max(largest1, magnitude_bits(v[3]));
        if constexpr (L > 4) largest2 = std::max(largest2, magnitude_bits(v[4]));
      }
      if constexpr (kEncode) {
        pending.codes[0][i] = uint8_t(StateCode<kSigned<2>>::encode(in[0][i] * pending.to_code[0]));
        if constexpr (L > 3)
          pending.codes[1][i] =
              uint8_t(StateCode<kSigned<3>>::encode(in[1][i] * pending.to_code[1]));
        if constexpr (L > 4)
          pending.codes[2][i] =
              uint8_t(StateCode<kSigned<4>>::encode(in[2][i] * pending.to_code[2]));
      }
    }
    largest[0] = largest0;
    largest[1] = largest1;
    largest[2] = largest2;
  }

#if FASTNN_OPTIM_AVX512
  // run() for a full block of Adam with float32 parameters: avx512 above.
  template <bool kUpdate, bool kEncode, bool kPlain>
  void run_avx512(const Lists<Types, L>& ptr, int64_t lo, int cur, uint32_t (&largest)[3]) {
    using namespace avx512;
    constexpr bool kAms = L == 5;
    if constexpr (kUpdate) {
      const int64_t b = lo / kQuantBlock;
      const DecodeFactors<true> m(ptr.absmax[0][b]);
      const DecodeFactors<false> v(ptr.absmax[1][b]);
      const DecodeFactors<false> vmax(kAms ? ptr.absmax[LS - 1][b] : 0.0f);
      if (m.folded && v.folded && vmax.folded)
        run_avx512<kEncode, kPlain, true>(ptr, lo, cur, largest, m, v, vmax);
      else
        run_avx512<kEncode, kPlain, false>(ptr, lo, cur, largest, m, v, vmax);
    } else {
      const DecodeFactors<true> none(0.0f);
      run_avx512<kEncode, kPlain, true, false>(ptr, lo, cur, largest, none, none, none);
    }
  }

  template <bool kEncode, bool kPlain, bool kFolded, bool kUpdate = true, class M, class V>
  void run_avx512(const Lists<Types, L>& ptr, int64_t lo, int cur, uint32_t (&largest)[3],
                  const M& m_factors, const V& v_factors, const V& vmax_factors) {
    using namespace avx512;
    constexpr bool kAms = L == 5;
    const AdamLanes<kAms> adam(op_);
    const Block pending = pending_;
    const __m512 to_code[3] = {_mm512_set1_ps(pending.to_code[0]),
                               _mm512_set1_ps(pending.to_code[1]),
                               _mm512_set1_ps(pending.to_code[LS - 1])};
    __m512i largest_m = _mm512_setzero_si512(), largest_v = largest_m, largest_vmax = largest_m;
    float(*out)[kQuantBlock] = buffer_[cur];
    const float(*in)[kQuantBlock] = buffer_[1 - cur];
    for (int i = 0; i < kQuantBlock; i += 16) {
      if constexpr (kUpdate) {
        if (i % 64 == 0) prefetch_ahead(ptr.param + lo + i, ptr.grad + lo + i, ptr.state, lo + i);
        const uint8_t* const m_codes = reinterpret_cast<const uint8_t*>(ptr.state[0] + lo);
        const uint8_t* const v_codes = reinterpret_cast<const uint8_t*>(ptr.state[1] + lo);
        __m512 p = _mm512_loadu_ps(ptr.param + lo + i);
        const __m512 g = _mm512_loadu_ps(ptr.grad + lo + i);
        __m512 m = decode<true, kFolded>(m_codes + i, m_factors.factor, m_factors.second);
        __m512 v = decode<false, kFolded>(v_codes + i, v_factors.factor, v_factors.second);
        __m512 vmax = v;
        if constexpr (kAms)
          vmax = decode<false, kFolded>(reinterpret_cast<const uint8_t*>(ptr.state[2] + lo) + i,
                                        vmax_factors.factor, vmax_factors.second);
        adam.template operator()<kPlain>(p, g, m, v, vmax);
        _mm512_storeu_ps(ptr.param + lo + i, p);
        _mm512_store_ps(out[0] + i, m);
        largest_m = _mm512_max_epu32(
            largest_m, _mm512_and_si512(_mm512_castps_si512(m), _mm512_set1_epi32(int(kAbs))));
        _mm512_store_ps(out[1] + i, v);
        largest_v = _mm512_max_epu32(largest_v, _mm512_castps_si512(v));
        if constexpr (kAms) {
          _mm512_store_ps(out[2] + i, vmax);
          largest_vmax = _mm512_max_epu32(largest_vmax, _mm512_castps_si512(vmax));
        }
      }
      if constexpr (kEncode) {
        encode_signed(in[0] + i, to_code[0], pending.codes[0] + i);
        encode_unsigned(in[1] + i, to_code[1], pending.codes[1] + i);
        if constexpr (kAms) encode_unsigned(in[2] + i, to_code[2], pending.codes[2] + i);
      }
    }
    largest[0] = _mm512_reduce_max_epu32(largest_m);
    largest[1] = _mm512_reduce_max_epu32(largest_v);
    largest[2] = _mm512_reduce_max_epu32(largest_vmax);
  }
#endif

  // The pending block's codes are written; those of a block stored as zeros are zeros.
  void finish_pending() {
    for (int l = 0; l < L - 2; ++l)
      if (pending_.to_code[l] == 0.0f) std::memset(pending_.codes[l], 0, size_t(pending_.n));
    pending_.n = 0;
  }

 public:
  explicit Int8Pipeline(const Op& op) : op_(op), plain_(op.plain()) {}

  // Update the n elements of the block at ptr + lo (a multiple of kQuantBlock), and encode the
  // block before it.
  void update(const Lists<Types, L>& ptr, int64_t lo, int n) {
    uint32_t largest[3];
    const int cur = 1 - which_;
    if (pending_.n == n) {
      run<true, true>(ptr, lo, n, cur, largest);
      finish_pending();
    } else {
      flush();
      run<true, false>(ptr, lo, n, cur, largest);
    }
    for (int l = 2; l < L; ++l) {
      const BlockScale scale(largest[l - 2]);
      ptr.absmax[l - 2][lo / kQuantBlock] = scale.absmax;
      pending_.codes[l - 2] = reinterpret_cast<uint8_t*>(ptr.state[l - 2] + lo);
      pending_.to_code[l - 2] = scale.to_code;
    }
    pending_.n = n;
    which_ = cur;
  }

  // Encode the pending block.
  void flush() {
    if (pending_.n == 0) return;
    uint32_t largest[3];
    run<false, true>(Lists<Types, L>{}, 0, pending_.n, 1 - which_, largest);
    finish_pending();
  }
};

// Every block of every tensor, split over the threads by whole blocks.
template <class Types, class Op>
void update_all_blocks(const Op& op, const TensorPointers& tensors, const TensorSizes& sizes,
                       const StateRounding& rounding) {
  const int64_t count = int64_t(sizes.size());
  std::vector<int64_t> first_block(size_t(count) + 1, 0);
  for (int64_t t = 0; t < count; ++t)
    first_block[size_t(t) + 1] =
        first_block[size_t(t)] + (std::max<int64_t>(sizes[t], 0) + kQuantBlock - 1) / kQuantBlock;
  parallel_for(first_block.back(), kParallelGrain / kQuantBlock, [&](int64_t begin, int64_t end) {
    [[maybe_unused]] const IeeeSubnormals ieee;
    int64_t t =
        std::upper_bound(first_block.begin(), first_block.end(), begin) - first_block.begin() - 1;
    auto each_block = [&](auto&& body) {
      for (int64_t b = begin; b < end; ++b) {
        while (b >= first_block[size_t(t) + 1]) ++t;
        const int64_t lo = (b - first_block[size_t(t)]) * kQuantBlock;
        const int n = int(std::min<int64_t>(kQuantBlock, sizes[t] - lo));
        body(lists_of<Types, Op>(tensors, count, t), lo, n);
      }
    };
    if constexpr (kQuantized<Types>) {
      Int8Pipeline<Types, Op> pipeline(op);
      each_block([&](const auto& ptr, int64_t lo, int n) { pipeline.update(ptr, lo, n); });
      pipeline.flush();
    } else {
      const bool plain = op.plain();
      auto portable = [&](const auto& ptr, int64_t lo, int n) {
        if (plain) update_block<Types, true>(op, ptr, lo, n, uint64_t(t), rounding);
        else update_block<Types, false>(op, ptr, lo, n, uint64_t(t), rounding);
      };
#if FASTNN_OPTIM_AVX512 && FASTNN_OPTIM_AVX512_BF16
      if constexpr (kAvx512Adam<Types, Op>) {
        if (!rounding.stochastic && avx512_loops()) {
          constexpr int LS = Op::kLists - 2;
          const avx512::AdamLanes<LS == 3> lanes(op);  // broadcast once per thread
          each_block([&](const auto& ptr, int64_t lo, int n) {
            if (n < kQuantBlock) return portable(ptr, lo, n);  // a tensor's short last block
            bfloat16* state[LS];
            for (int l = 0; l < LS; ++l) state[l] = ptr.state[l] + lo;
            if (plain) avx512::adam_bf16_block<true>(lanes, ptr.param + lo, ptr.grad + lo, state);
            else avx512::adam_bf16_block<false>(lanes, ptr.param + lo, ptr.grad + lo, state);
          });
          return;
        }
      }
#endif
      each_block(portable);
    }
  });
}

// run(OpTag<Op, Types>{}, hyper, lr, step) for optim_dispatch (optim.h).
struct Run : RunArgs {
  template <class Op, class Types, class Hyper>
  void operator()(OpTag<Op, Types>, const Hyper& h, double lr, double step) const {
    if constexpr (kQuantized<Types> && !Op::kQuantizable) {
      throw not_quantizable(rule);
    } else {
      check_tensor_lists(rule, tensors, sizes, pointer_lists<Types, Op>());
      StateRounding r = rounding;
      if (scalars) {
        scalars[1] += 1;
        r.step = uint64_t(scalars[1]);
        lr = scalars[0];
        step = scalars[1];
      }
      const Op op(h, lr, step);
      using S = typename Types::state;
      // (A rule with no state lists, SGD without momentum, has nothing to store in blocks.)
      if constexpr ((kQuantized<Types> || std::is_same_v<S, bfloat16>) && Op::kLists > 2)
        update_all_blocks<Types>(op, tensors, sizes, r);
      else
        update_all<Types>(op, tensors, sizes);
    }
  }
};

}  // namespace

void optim_step(const std::string& dtype, const std::string& state_dtype, const std::string& rule,
                const TensorPointers& tensors, const TensorSizes& sizes,
                const Hyperparameters& hyper, double* scalars, const StateRounding& rounding) {
  optim_dispatch(dtype, state_dtype, rule, hyper,
                 Run{{rule.c_str(), tensors, sizes, scalars, rounding}});
}

void quantize_state(bool is_signed, const float* x, uint8_t* codes, float* absmax, int64_t n) {
  const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
  parallel_for(blocks, kParallelGrain / kQuantBlock, [&](int64_t begin, int64_t end) {
    [[maybe_unused]] const IeeeSubnormals ieee;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lo = b * kQuantBlock;
      const int m = int(std::min<int64_t>(kQuantBlock, n - lo));
      if (is_signed) encode_block<true>(x + lo, codes + lo, absmax + b, m);
      else encode_block<false>(x + lo, codes + lo, absmax + b, m);
    }
  });
}

void dequantize_state(bool is_signed, const uint8_t* codes, const float* absmax, float* out,
                      int64_t n) {
  const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
  parallel_for(blocks, kParallelGrain / kQuantBlock, [&](int64_t begin, int64_t end) {
    [[maybe_unused]] const IeeeSubnormals ieee;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lo = b * kQuantBlock;
      const int m = int(std::min<int64_t>(kQuantBlock, n - lo));
      if (is_signed) decode_block<true>(codes + lo, absmax[b], out + lo, m);
      else decode_block<false>(codes + lo, absmax[b], out + lo, m);
    }
  });
}

bool set_optim_avx512_loops(bool enabled) { return g_avx512_loops.exchange(enabled); }

}  // namespace fastnn::cpu
