// Dense (fully connected) layers: the C++ API the bindings call (pointers, sizes, scalars, a
// stream).
//
//   forward   z = x @ W + b,  y = act(z)                                         (y =, aux = z)
//   backward  dz = dy * act'(.)      (from y for relu, sigmoid, tanh; from aux = z otherwise)
//             dW += x^T @ dz,  db += sum_rows dz                    (parameter gradients: +=)
//             dx  = dz @ W^T                                       (activation gradient: =)
//   shapes    x (n, in), W (in, out), b (out), y / aux / dy / dz (n, out), dx (n, in); all
//             row-major (C order), densely packed.
//
// The CPU path runs a single layer's GEMMs through NumPy's BLAS from Python; what is left for
// C++ are the two single passes over the GEMM output, on the calling thread (why:
// cpu/dense.cpp). Chains of narrow layers run whole in C++, row block by row block, each
// thread calling NumPy's BLAS on its own rows (cpu/dense_chain.cpp):
//
//   bias_activation_forward   p = z + b (b may be null), aux = p when aux is given, y = act(p).
//                             z may alias y or aux (each element is read before it is written).
//   bias_activation_backward  dz = dy * act'(saved) (=, skipped when dz is null, which only
//                             makes sense for identity), db += column sums of dz (+=, skipped
//                             when db is null). dz may alias dy.
//
// The CUDA path runs the whole layer here, through one cuBLASLt wrapper (cuda/dense.cu).
// cuBLASLt is column-major; a row-major (r, c) array is the column-major (c, r) matrix with
// leading dimension c, i.e. its transpose. So every product is computed transposed:
//
//   forward  y^T (out x n)   = W^T (out x in)  x^T (in x n)
//            A = W,  op N, lda = out;  B = x,  op N, ldb = in;   D = y,  ldd = out
//            m = out, n = n, k = in; the epilogue's bias runs along D's rows = b's features.
//   dW       dW^T (out x in) += dz^T (out x n) x (n x in)
//            A = dz, op N, lda = out;  B = x,  op T, ldb = in;   D = dW, ldd = out, beta = 1
//            m = out, n = in, k = n; BGRADA sums A over k: the bias gradient sum_rows dz.
//   dx       dx^T (in x n)   = W (in x out) dz^T (out x n)
//            A = W,  op T, lda = out;  B = dz, op N, ldb = out;  D = dx, ldd = in
//            m = in, n = n, k = out.
//
// Epilogues (forward): identity BIAS, relu RELU_BIAS, gelu_tanh GELU_AUX_BIAS (cuBLASLt's GELU
// is the tanh approximation; aux = z). The other activations (and exact gelu) take a BIAS
// epilogue writing z into aux (or y) and then one fused elementwise pass. Backward: for
// identity, db comes from BGRADA in the dW GEMM. For the others one fused pass writes dz and
// db. Optionally (x_act), the dx GEMM also applies the activation gradient of the layer that
// produced x, so dx becomes that layer's dz: DGELU(_BGRAD) for gelu_tanh, a fused pass for the
// rest; x_db += its column sums. cuBLASLt writes bias gradients (=), so they land in a
// workspace and are added (+=). Where cuBLASLt has no kernel for an epilogue (float64, odd
// leading dimensions, alignment) the GEMM runs plain and the fused passes do the rest.
//
// Precision (float32 only; float64 always computes in float64):
//   highest  CUBLAS_COMPUTE_32F            strict fp32
//   high     CUBLAS_COMPUTE_32F_FAST_TF32  TF32 inputs (10-bit mantissa), fp32 accumulation
//   medium   bf16 operands (converted into the workspace: x and W by a small kernel, dz by the
//            fused backward pass itself), CUBLAS_COMPUTE_32F accumulation, fp32 outputs.
//            CUBLAS_COMPUTE_32F_FAST_16BF would be simpler, but cuBLAS may run it as TF32.
// On the CPU "high" is "highest"; "medium" is the same bf16 operands with float32 sums
// through oneDNN's GEMM where fastnn/_bf16.py found it and the CPU has AVX512_BF16 (else
// "highest"): the y16 / dz16 outputs of the passes and the chain's bf16 flag below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "activation_math.h"
#include "common.h"

namespace fastnn {

namespace cpu {
// y16 (bias_activation_forward) and dz16 (bias_activation_backward), uint16 bf16 arrays
// (rows, cols) or null: with one, the pass also writes the bf16 rounding of y (the next
// layer's GEMM operand), or writes dz in bf16 only (dz must then be null), the operand of the
// layer's own dW and dx GEMMs. Only for float32.
template <class T>
void bias_activation_forward(Activation act, const T* z, const T* bias, T* y, T* aux,
                             uint16_t* y16, int64_t rows, int64_t cols, T alpha);
template <class T>
void bias_activation_backward(Activation act, const T* dy, const T* saved, T* dz,
                              uint16_t* dz16, T* db, int64_t rows, int64_t cols, T alpha);

// A chain of dense layers run row block by row block (cpu/dense_chain.cpp): layer i maps
// (n, in) to (n, out) and reads layer i-1's y. aux is given exactly when act needs the
// pre-activation (leaky_relu, gelu, gelu_tanh); b and db may be null (no bias).
template <class T>
struct ChainLayer {
  const T* W;
  const T* b;
  Activation act;
  T alpha;
  T* y;
  T* aux;
  T* dW;
  T* db;
  int64_t in, out;
};

// bf16_gemms (float32 only; oneDNN set): every GEMM takes bf16 operands and sums in float32 (the
// "medium" precision): the weights are rounded once per call, each block's GEMM inputs by the
// pass that writes them (the bias-and-activation pass, the dz pass) or, for the chain's input
// and the backward's saved activations, by one pass over the block while it is in cache.
//
// Forward: every layer's y (and aux) for the chain's input x (n, layers[0].in).
template <class T>
void dense_chain_forward(const T* x, int64_t n, const std::vector<ChainLayer<T>>& layers,
                         int64_t block_rows, bool bf16_gemms);
// Backward from dy = dL/d(last y): every layer's dW += x_i^T dz_i and db += sum_rows dz_i, and
// dx = dz_0 W_0^T (=) unless dx is null.
template <class T>
void dense_chain_backward(const T* dy, const T* x, int64_t n,
                          const std::vector<ChainLayer<T>>& layers, T* dx, int64_t block_rows,
                          bool bf16_gemms);
// The loss a fused step ends in (exported as fastnn._C.ChainLoss, read by
// fastnn/functional/dense.py).
enum class ChainLoss : int {
  softmax_cross_entropy = 0,
  hinge = 1,
  bce_with_logits = 2,
  mse = 3,
  l1 = 4,
};
// Forward, mean loss and backward in one pass over the rows: each block goes up through the
// layers, through the loss and back down while it is in cache; no activation is stored
// (the layers' y and aux are not used). labels (n,) int32/int64 for the class losses (trusted:
// checked by the caller), targets (n, last out) for the others; loss: one element (=); out:
// the last layer's output (n, last out) (=), or null; dW, db (+=) and dx (=, unless null) as
// in dense_chain_backward.
template <class T>
void dense_chain_step(const T* x, int64_t n, const std::vector<ChainLayer<T>>& layers,
                      ChainLoss loss, const void* labels, bool labels64, const T* targets,
                      T* loss_out, T* out, T* dx, int64_t block_rows, bool bf16_gemms);
// Rows per block when block_rows is 0: a block of the widest layer's activations is about
// kChainBlockBytes.
int64_t chain_block_rows(int64_t widest, size_t itemsize);

// NumPy's BLAS for the chain's GEMMs (cpu/blas.h); addresses found by fastnn/_blas.py. ilp64:
// 64-bit integer arguments. All zero: none (the chain is then unavailable).
void set_blas(uintptr_t sgemm, uintptr_t dgemm, bool ilp64, uintptr_t set_threads,
              uintptr_t get_threads);
bool blas_available();

// oneDNN's dnnl_gemm_bf16bf16f32 for the "medium" GEMMs (cpu/blas.h); address found by
// fastnn/_bf16.py, 0: none. bf16_gemm_calls counts the calls since the process started.
void set_bf16_gemm(uintptr_t gemm);
bool bf16_gemm_available();
int64_t bf16_gemm_calls();
// Whether this CPU has the AVX512_BF16 instructions oneDNN's bf16 GEMM runs on at full speed.
bool cpu_has_avx512_bf16();
// gemm_bf16 (cpu/blas.h) for one call from Python: throws where it fails.
void gemm_bf16_checked(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                       float beta, float* c, int64_t ldc);
}  // namespace cpu

namespace cuda {
// Numbering shared with fastnn/functional/dense.py (PRECISIONS).
enum class Precision : int { highest = 0, high = 1, medium = 2 };

// Workspace bytes dense_forward / dense_backward need for these sizes (0 when none).
size_t dense_forward_workspace(int64_t n, int64_t in, int64_t out, int precision,
                               size_t itemsize);
size_t dense_backward_workspace(Activation act, int64_t n, int64_t in, int64_t out,
                                int precision, size_t itemsize);

// aux: (n, out), required when act is gelu, gelu_tanh or leaky_relu, else null.
template <class T>
void dense_forward(Activation act, const T* x, const T* W, const T* b, T* y, T* aux, int64_t n,
                   int64_t in, int64_t out, T alpha, int precision, void* workspace,
                   Stream stream);
// saved: y or aux as above (null for identity). dx null: no dx. x_act: the activation whose
// output x is (identity: none), x_saved its saved tensor (x itself or that layer's aux).
template <class T>
void dense_backward(Activation act, const T* dy, const T* x, const T* W, const T* saved, T* dW,
                    T* db, T* dx, Activation x_act, const T* x_saved, T* x_db, int64_t n,
                    int64_t in, int64_t out, T alpha, T x_alpha, int precision, void* workspace,
                    Stream stream);

// Lets tests run the plain-GEMM-plus-fused-pass fallbacks on a GPU that has the epilogues.
void set_epilogues_enabled(bool enabled);
bool epilogues_enabled();
}  // namespace cuda

}  // namespace fastnn
