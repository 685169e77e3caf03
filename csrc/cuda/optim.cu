// Fused optimizers on the GPU. Formulas and the rule table in optim.h, per-element math in
// optim_math.h, the multi-tensor launcher in multi_tensor.cuh: one launch per table of up to
// ~80 Adam tensors (4 KB of kernel parameters) or, with CUDA 12.1+, ~700 (32 KB), grids sized
// by occupancy, 16-byte vector loads where aligned, math in float32 registers (float64 for
// float64 parameters; bfloat16 and float16 are widened on load and rounded on store), bias
// corrections on the host (or, in capturable mode, from the device [lr, step] array).
#include "cuda/multi_tensor.cuh"

namespace fastnn::cuda {

void optim_step(const std::string& dtype, const std::string& state_dtype, const std::string& rule,
                const TensorPointers& tensors, const TensorSizes& sizes,
                const Hyperparameters& hyper, double* scalars, const StateRounding& rounding,
                Stream stream) {
  optim_dispatch(dtype, state_dtype, rule, hyper,
                 Run{{rule.c_str(), tensors, sizes, scalars, rounding}, stream});
}

namespace {

// One warp per block of kQuantBlock elements, each lane kQuantBlock / 32 of them strided by 32.
template <bool kSigned>
__global__ void quantize_state_kernel(const float* x, uint8_t* codes, float* absmax, int64_t n) {
  constexpr int kPerLane = kQuantBlock / 32;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  for (int64_t b = first; b * kQuantBlock < n; b += warps) {
    const int64_t lo = b * kQuantBlock;
    float v[kPerLane];
    uint32_t largest = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t i = lo + lane + 32 * j;
      v[j] = i < n ? x[i] : 0.0f;
      largest = max(largest, float_bits(v[j]) & 0x7fffffffu);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
      largest = max(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
    const BlockScale scale(largest);
    if (lane == 0) absmax[b] = scale.absmax;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t i = lo + lane + 32 * j;
      if (i < n)
        codes[i] = uint8_t(scale.to_code == 0.0f
                               ? 0u
                               : StateCode<kSigned>::encode(mul_rn(v[j], scale.to_code)));
    }
  }
}

template <bool kSigned>
__global__ void dequantize_state_kernel(const uint8_t* codes, const float* absmax, float* out,
                                        int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = mul_rn(StateCode<kSigned>::decode(codes[i]), block_from_code(absmax[i / kQuantBlock]));
}

}  // namespace

void quantize_state(bool is_signed, const float* x, uint8_t* codes, float* absmax, int64_t n,
                    Stream stream) {
  if (n <= 0) return;
  const unsigned grid = grid_for((n + kQuantBlock - 1) / kQuantBlock * 32);
  if (is_signed)
    quantize_state_kernel<true><<<grid, kBlock, 0, to_stream(stream)>>>(x, codes, absmax, n);
  else
    quantize_state_kernel<false><<<grid, kBlock, 0, to_stream(stream)>>>(x, codes, absmax, n);
  check_launch("quantize_state");
}

void dequantize_state(bool is_signed, const uint8_t* codes, const float* absmax, float* out,
                      int64_t n, Stream stream) {
  if (n <= 0) return;
  const unsigned grid = grid_for(n);
  if (is_signed)
    dequantize_state_kernel<true><<<grid, kBlock, 0, to_stream(stream)>>>(codes, absmax, out, n);
  else
    dequantize_state_kernel<false><<<grid, kBlock, 0, to_stream(stream)>>>(codes, absmax, out, n);
  check_launch("dequantize_state");
}

}  // namespace fastnn::cuda
