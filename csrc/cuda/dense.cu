// Dense layers on the GPU: one cuBLASLt wrapper that picks the epilogue, and the fused passes
// for what no epilogue does. Formulas, layouts and the choice of epilogues are in dense.h.
//
// Fused passes:
//   bias_activation_forward   grid-stride over the (rows, cols) output: p = z + b,
//                             aux = p, y = act(p).
//   bias_activation_backward  block = 32 columns x kRowWarps rows; each warp reads 32
//                             consecutive columns of a row (coalesced), writes dz (in T, or in
//                             bf16 for the medium-precision GEMMs) and sums its columns.
//                             Block sums go to db directly (one block row) or to a workspace of
//                             partial sums that a second kernel adds up in a fixed order: the
//                             bias gradient is the same bit for bit on every run.
#include <cuda_bf16.h>

#include "cuda/common.cuh"
#include "cuda/context.cuh"
#include "dense.h"

namespace fastnn::cuda {
namespace {

std::atomic<bool> use_epilogues{true};

// ---- the cuBLASLt wrapper -----------------------------------------------------------------

// D (m x n, column-major) = op(A) op(B) [+ D when accumulate], with an optional epilogue.
struct Gemm {
  cudaDataType_t ab_type, d_type, scale_type;
  cublasComputeType_t compute;
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldd;
  const void* a;
  const void* b;
  void* d;
  bool accumulate;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // bias (forward) or bias gradient output (BGRAD epilogues)
  const void* aux = nullptr;   // GELU input: written by GELU_AUX, read by DGELU
  int64_t aux_ld = 0;
};

template <class V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  check_cublas(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)),
               "cublasLtMatmulDescSetAttribute");
}

template <class V>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
              const V& value) {
  check_cublas(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)),
               "cublasLtMatmulPreferenceSetAttribute");
}

// Runs the GEMM. Returns false, having done nothing, when cuBLASLt has no kernel for the
// epilogue here (or epilogues are switched off); a plain GEMM that cannot run throws.
bool matmul_cublaslt(const Gemm& g, cudaStream_t stream) {
  const bool plain = g.epilogue == CUBLASLT_EPILOGUE_DEFAULT;
  if (!plain && !use_epilogues.load(std::memory_order_relaxed)) return false;
  const cublasLtHandle_t handle = lt_handle();
  const LtWorkspace workspace = lt_workspace(stream);

  cublasLtMatmulDescOpaque_t desc_storage;
  const cublasLtMatmulDesc_t desc = &desc_storage;
  check_cublas(cublasLtMatmulDescInit(desc, g.compute, g.scale_type), "cublasLtMatmulDescInit");
  set_desc(desc, CUBLASLT_MATMUL_DESC_TRANSA, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(desc, CUBLASLT_MATMUL_DESC_TRANSB, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  if (g.bias != nullptr) set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux != nullptr) {
    set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
  }

  // Stored (column-major) shapes: op(A) is m x k, op(B) is k x n.
  cublasLtMatrixLayoutOpaque_t a_storage, b_storage, d_storage;
  const cublasLtMatrixLayout_t a_layout = &a_storage, b_layout = &b_storage, d_layout = &d_storage;
  check_cublas(cublasLtMatrixLayoutInit(a_layout, g.ab_type, g.trans_a ? g.k : g.m,
                                        g.trans_a ? g.m : g.k, g.lda),
               "cublasLtMatrixLayoutInit(A)");
  check_cublas(cublasLtMatrixLayoutInit(b_layout, g.ab_type, g.trans_b ? g.n : g.k,
                                        g.trans_b ? g.k : g.n, g.ldb),
               "cublasLtMatrixLayoutInit(B)");
  check_cublas(cublasLtMatrixLayoutInit(d_layout, g.d_type, g.m, g.n, g.ldd),
               "cublasLtMatrixLayoutInit(D)");

  AlgoKey key{};
  check(cudaGetDevice(&key.device), "cudaGetDevice");
  key.ab_type = int(g.ab_type);
  key.d_type = int(g.d_type);
  key.compute = int(g.compute);
  key.trans_a = g.trans_a;
  key.trans_b = g.trans_b;
  key.m = g.m;
  key.n = g.n;
  key.k = g.k;
  key.lda = g.lda;
  key.ldb = g.ldb;
  key.ldd = g.ldd;
  key.epilogue = int(g.epilogue);
  key.aux_ld = g.aux_ld;
  key.align_a = alignment_of(g.a);
  key.align_b = alignment_of(g.b);
  key.align_d = alignment_of(g.d);
  key.align_bias = alignment_of(g.bias);
  key.align_aux = alignment_of(g.aux);
  key.workspace = workspace.bytes;

  AlgoChoice choice{};
  if (!find_algo(key, &choice)) {
    cublasLtMatmulPreferenceOpaque_t pref_storage;
    const cublasLtMatmulPreference_t pref = &pref_storage;
    check_cublas(cublasLtMatmulPreferenceInit(pref), "cublasLtMatmulPreferenceInit");
    set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(workspace.bytes));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(key.align_a));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t(key.align_b));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t(key.align_d));
    set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t(key.align_d));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle, desc, a_layout, b_layout, d_layout, d_layout, pref, 1, &result, &found);
    choice.supported = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (choice.supported) choice.algo = result.algo;
    if (plain && status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)
      check_cublas(status, "cublasLtMatmulAlgoGetHeuristic");
    store_algo(key, choice);
  }
  if (!choice.supported) {
    if (!plain) return false;
    throw std::runtime_error(
        "fastnn: cuBLASLt has no algorithm for a " + std::to_string(g.m) + " x " +
        std::to_string(g.n) + " x " + std::to_string(g.k) + " GEMM (CUBLAS_STATUS_NOT_SUPPORTED)");
  }

  const float alpha_f = 1.0f, beta_f = g.accumulate ? 1.0f : 0.0f;
  const double alpha_d = 1.0, beta_d = g.accumulate ? 1.0 : 0.0;
  const bool f64 = g.scale_type == CUDA_R_64F;
  const cublasStatus_t status = cublasLtMatmul(
      handle, desc, f64 ? static_cast<const void*>(&alpha_d) : &alpha_f, g.a, a_layout, g.b,
      b_layout, f64 ? static_cast<const void*>(&beta_d) : &beta_f, g.d, d_layout, g.d, d_layout,
      &choice.algo, workspace.ptr, workspace.bytes, stream);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED && !plain) {
    store_algo(key, AlgoChoice{false, choice.algo});
    return false;
  }
  check_cublas(status, "cublasLtMatmul");
  return true;
}

void gemm(const Gemm& g, cudaStream_t stream) {
  Gemm plain = g;
  plain.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  plain.bias = nullptr;
  plain.aux = nullptr;
  plain.aux_ld = 0;
  matmul_cublaslt(plain, stream);
}

// Data and compute types for T at a precision. float64 ignores the precision.
struct Types {
  cudaDataType_t ab, d, scale;
  cublasComputeType_t compute;
  bool bf16;  // operands converted to bf16 first
};

template <class T>
Types types_for(int precision) {
  if constexpr (std::is_same_v<T, double>) {
    (void)precision;
    return Types{CUDA_R_64F, CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, false};
  } else {
    switch (Precision(precision)) {
      case Precision::highest: return Types{CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, false};
      case Precision::high:
        return Types{CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, false};
      case Precision::medium: return Types{CUDA_R_16BF, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, true};
    }
    throw std::invalid_argument("fastnn: unknown matmul precision code " + std::to_string(precision));
  }
}

// ---- workspace layout ----------------------------------------------------------------------

constexpr int kRowWarps = 8;    // rows a bias_activation_backward block works on at once
constexpr int kMaxSplits = 512;  // block rows sharing one column range (partial sums each)

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

struct Layout {
  size_t dz = 0, xb = 0, wb = 0, partials = 0, bgrad = 0, total = 0;
};

// Byte offsets into the workspace, each 256-aligned.
Layout forward_layout(int64_t n, int64_t in, int64_t out, int precision, size_t itemsize) {
  Layout l;
  if (Precision(precision) != Precision::medium || itemsize != 4) return l;
  l.xb = 0;
  l.wb = round_up(size_t(n * in) * 2);
  l.total = l.wb + round_up(size_t(in * out) * 2);
  return l;
}

Layout backward_layout(Activation act, int64_t n, int64_t in, int64_t out, int precision,
                       size_t itemsize) {
  const bool bf16 = Precision(precision) == Precision::medium && itemsize == 4;
  const size_t features = size_t(in > out ? in : out);
  Layout l;
  size_t at = 0;
  if (bf16 || act != Activation::identity) {
    l.dz = at;
    at += round_up(size_t(n * out) * (bf16 ? 2 : itemsize));
  }
  if (bf16) {
    l.xb = at;
    at += round_up(size_t(n * in) * 2);
    l.wb = at;
    at += round_up(size_t(in * out) * 2);
  }
  l.partials = at;
  at += round_up(size_t(kMaxSplits) * features * itemsize);
  l.bgrad = at;
  at += round_up(features * itemsize);
  l.total = at;
  return l;
}

template <class P>
P* at_offset(void* base, size_t offset) {
  return reinterpret_cast<P*>(static_cast<char*>(base) + offset);
}

// ---- fused passes --------------------------------------------------------------------------

template <class T, class F>
__global__ void bias_activation_forward_kernel(const T* z, const T* bias, T* y, T* aux,
                                               int64_t rows, int64_t cols, F f) {
  const int64_t total = rows * cols;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    T p = z[i];
    if (bias != nullptr) p += bias[i % cols];
    if (aux != nullptr) aux[i] = p;
    y[i] = f.forward(p);
  }
}

template <class T>
void bias_activation_forward(Activation act, const T* z, const T* bias, T* y, T* aux,
                             int64_t rows, int64_t cols, T alpha, cudaStream_t stream) {
  const int64_t total = rows * cols;
  if (total <= 0) return;
  with_activation<T>(act, alpha, [&](auto f) {
    bias_activation_forward_kernel<<<grid_for(total), kBlock, 0, stream>>>(z, bias, y, aux, rows,
                                                                            cols, f);
  });
  check_launch("bias_activation_forward");
}

template <class Out, class T>
__device__ __forceinline__ Out to_out(T v) {
  if constexpr (std::is_same_v<Out, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
  else return Out(v);
}

// grid (column blocks of 32, splits); block 32 x kRowWarps threads.
template <class T, class Out, class F>
__global__ void bias_activation_backward_kernel(const T* dy, const T* saved, Out* dz, T* db,
                                                T* partials, int64_t rows, int64_t cols, F f) {
  __shared__ T sums[kRowWarps][33];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t c = int64_t(blockIdx.x) * 32 + lane;
  T acc = T(0);
  if (c < cols) {
    const int64_t step = int64_t(gridDim.y) * kRowWarps;
    for (int64_t r = int64_t(blockIdx.y) * kRowWarps + warp; r < rows; r += step) {
      const int64_t i = r * cols + c;
      const T g = f.backward(dy[i], saved != nullptr ? saved[i] : dy[i]);
      if (dz != nullptr) dz[i] = to_out<Out>(g);
      acc += g;
    }
  }
  if (db == nullptr) return;  // the same for the whole block: no barrier is skipped unevenly
  sums[warp][lane] = acc;
  __syncthreads();
  if (warp != 0 || c >= cols) return;
  T s = T(0);
#pragma unroll
  for (int w = 0; w < kRowWarps; ++w) s += sums[w][lane];
  if (gridDim.y == 1) db[c] += s;
  else partials[int64_t(blockIdx.y) * cols + c] = s;
}

template <class T>
__global__ void bias_grad_finish_kernel(const T* partials, T* db, int splits, int64_t cols) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += stride) {
    double s = 0.0;
    for (int k = 0; k < splits; ++k) s += double(partials[int64_t(k) * cols + c]);
    db[c] += T(s);
  }
}

// dz = dy * act'(saved) (skipped when dz is null), db += column sums (skipped when null).
// `partials` holds kMaxSplits * cols values of T.
template <class T, class Out>
void bias_activation_backward(Activation act, const T* dy, const T* saved, Out* dz, T* db,
                              int64_t rows, int64_t cols, T alpha, T* partials,
                              cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || (dz == nullptr && db == nullptr)) return;
  const int64_t col_blocks = (cols + 31) / 32;
  // about 8 blocks of 8 warps per multiprocessor: enough loads in flight to stream memory
  const int64_t wanted = (int64_t(multiprocessor_count()) * 8 + col_blocks - 1) / col_blocks;
  const int64_t row_cap = (rows + 4 * kRowWarps - 1) / (4 * kRowWarps);  // >= 4 rows per warp
  int64_t splits = wanted < row_cap ? wanted : row_cap;
  splits = splits < 1 ? 1 : (splits > kMaxSplits ? kMaxSplits : splits);
  const dim3 grid{unsigned(col_blocks), unsigned(splits)};
  with_activation<T>(act, alpha, [&](auto f) {
    bias_activation_backward_kernel<<<grid, 32 * kRowWarps, 0, stream>>>(dy, saved, dz, db,
                                                                         partials, rows, cols, f);
  });
  check_launch("bias_activation_backward");
  if (db != nullptr && splits > 1) {
    bias_grad_finish_kernel<<<grid_for(cols), kBlock, 0, stream>>>(partials, db, int(splits), cols);
    check_launch("bias_activation_backward (bias gradient)");
  }
}

// out = bf16(in), 4 at a time where both ends are 16/8-byte aligned.
__global__ void to_bf16_kernel(const float* in, __nv_bfloat16* out, int64_t n, bool vec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = vec ? n / 4 : 0;
  for (int64_t i = tid; i < nvec; i += stride) {
    const float4 v = reinterpret_cast<const float4*>(in)[i];
    __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(out) + 2 * i;
    o[0] = __floats2bfloat162_rn(v.x, v.y);
    o[1] = __floats2bfloat162_rn(v.z, v.w);
  }
  for (int64_t i = nvec * 4 + tid; i < n; i += stride) out[i] = __float2bfloat16_rn(in[i]);
}

void to_bf16(const float* in, __nv_bfloat16* out, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const bool vec = aligned16(in) && (reinterpret_cast<uintptr_t>(out) & 7) == 0;
  to_bf16_kernel<<<grid_for(vec ? (n + 3) / 4 : n), kBlock, 0, stream>>>(in, out, n, vec);
  check_launch("dense (conversion to bf16)");
}

struct AddOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

template <class T>
void add_into(T* dst, const T* src, int64_t n, cudaStream_t stream) {
  launch_map(Inputs<T, 2>{{dst, src}}, dst, n, AddOp{}, Stream(stream), "dense (bias gradient)");
}

}  // namespace

void set_epilogues_enabled(bool enabled) { use_epilogues.store(enabled); }
bool epilogues_enabled() { return use_epilogues.load(); }

size_t dense_forward_workspace(int64_t n, int64_t in, int64_t out, int precision,
                               size_t itemsize) {
  return forward_layout(n, in, out, precision, itemsize).total;
}

size_t dense_backward_workspace(Activation act, int64_t n, int64_t in, int64_t out,
                                int precision, size_t itemsize) {
  return backward_layout(act, n, in, out, precision, itemsize).total;
}

template <class T>
void dense_forward(Activation act, const T* x, const T* W, const T* b, T* y, T* aux, int64_t n,
                   int64_t in, int64_t out, T alpha, int precision, void* workspace,
                   Stream stream) {
  if (n <= 0 || in <= 0 || out <= 0) return;
  const cudaStream_t s = to_stream(stream);
  const Types t = types_for<T>(precision);
  Gemm g{t.ab, t.d, t.scale, t.compute, false, false, out, n, in, out, in, out, W, x, y, false};
  if constexpr (std::is_same_v<T, float>) {
    if (t.bf16) {
      const Layout l = forward_layout(n, in, out, precision, sizeof(T));
      __nv_bfloat16* xb = at_offset<__nv_bfloat16>(workspace, l.xb);
      __nv_bfloat16* wb = at_offset<__nv_bfloat16>(workspace, l.wb);
      to_bf16(x, xb, n * in, s);
      to_bf16(W, wb, in * out, s);
      g.a = wb;
      g.b = xb;
    }
  }

  // One GEMM does it all where an epilogue computes the activation.
  const bool gelu_epilogue = act == Activation::gelu_tanh && out % 8 == 0;
  if (act == Activation::identity || act == Activation::relu || gelu_epilogue) {
    Gemm fused = g;
    fused.bias = b;
    if (act == Activation::identity) {
      fused.epilogue = b != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    } else if (act == Activation::relu) {
      fused.epilogue = b != nullptr ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    } else {
      fused.epilogue = b != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      fused.aux = aux;
      fused.aux_ld = out;
    }
    if (matmul_cublaslt(fused, s)) return;
  }

  // Otherwise z = x W (+ b by the BIAS epilogue where it runs) into aux or y, then one pass.
  T* z = aux != nullptr ? aux : y;
  g.d = z;
  bool bias_added = false;
  if (b != nullptr) {
    Gemm biased = g;
    biased.epilogue = CUBLASLT_EPILOGUE_BIAS;
    biased.bias = b;
    bias_added = matmul_cublaslt(biased, s);
  }
  if (!bias_added) gemm(g, s);
  const T* pending_bias = bias_added ? nullptr : b;
  if (act == Activation::identity && pending_bias == nullptr) return;
  // aux == z already holds z + b when the epilogue added b; it is rewritten only otherwise.
  T* aux_out = aux != nullptr && pending_bias != nullptr ? aux : nullptr;
  bias_activation_forward(act, z, pending_bias, y, aux_out, n, out, alpha, s);
}

template <class T>
void dense_backward(Activation act, const T* dy, const T* x, const T* W, const T* saved, T* dW,
                    T* db, T* dx, Activation x_act, const T* x_saved, T* x_db, int64_t n,
                    int64_t in, int64_t out, T alpha, T x_alpha, int precision, void* workspace,
                    Stream stream) {
  if (n <= 0 || in <= 0 || out <= 0) return;
  const cudaStream_t s = to_stream(stream);
  const Types t = types_for<T>(precision);
  const Layout l = backward_layout(act, n, in, out, precision, sizeof(T));
  T* partials = at_offset<T>(workspace, l.partials);
  T* bgrad = at_offset<T>(workspace, l.bgrad);

  // dz (and db, fused) unless the activation is the identity: then dz = dy, and db comes
  // from the dW GEMM's BGRADA epilogue.
  const void* dz = dy;
  const void* x_op = x;
  const void* w_op = W;
  bool db_pending = db != nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (t.bf16) {
      __nv_bfloat16* dzb = at_offset<__nv_bfloat16>(workspace, l.dz);
      __nv_bfloat16* xb = at_offset<__nv_bfloat16>(workspace, l.xb);
      bias_activation_backward(act, dy, saved, dzb, db, n, out, alpha, partials, s);
      to_bf16(x, xb, n * in, s);
      dz = dzb;
      x_op = xb;
      db_pending = false;
      if (dx != nullptr) {
        __nv_bfloat16* wb = at_offset<__nv_bfloat16>(workspace, l.wb);
        to_bf16(W, wb, in * out, s);
        w_op = wb;
      }
    }
  }
  if (!t.bf16 && act != Activation::identity) {
    T* dzt = at_offset<T>(workspace, l.dz);
    bias_activation_backward(act, dy, saved, dzt, db, n, out, alpha, partials, s);
    dz = dzt;
    db_pending = false;
  }

  // dW += x^T dz, computed as dW^T (out x in) += dz^T (out x n) x (n x in).
  Gemm gw{t.ab, t.d, t.scale, t.compute, false, true, out, in, n, out, in, out, dz, x_op, dW, true};
  bool bgrad_done = false;
  if (db_pending) {
    Gemm with_bgrad = gw;
    with_bgrad.epilogue = CUBLASLT_EPILOGUE_BGRADA;
    with_bgrad.bias = bgrad;
    bgrad_done = matmul_cublaslt(with_bgrad, s);
  }
  if (bgrad_done) {
    add_into(db, bgrad, out, s);
  } else {
    gemm(gw, s);
    if (db_pending)
      bias_activation_backward<T, T>(Activation::identity, dy, nullptr, nullptr, db, n, out, alpha,
                                     partials, s);
  }
  if (dx == nullptr) return;

  // dx = dz W^T, computed as dx^T (in x n) = W (in x out) dz^T (out x n); then, when x is an
  // activation's output, that activation's gradient (and its bias gradient).
  Gemm gx{t.ab, t.d, t.scale, t.compute, true, false, in, n, out, out, out, in, w_op, dz, dx, false};
  if (x_act == Activation::gelu_tanh && in % 8 == 0) {
    Gemm fused = gx;
    fused.epilogue = x_db != nullptr ? CUBLASLT_EPILOGUE_DGELU_BGRAD : CUBLASLT_EPILOGUE_DGELU;
    fused.aux = x_saved;
    fused.aux_ld = in;
    fused.bias = x_db != nullptr ? bgrad : nullptr;
    if (matmul_cublaslt(fused, s)) {
      if (x_db != nullptr) add_into(x_db, bgrad, in, s);
      return;
    }
  }
  gemm(gx, s);
  if (x_act == Activation::identity && x_db == nullptr) return;
  T* x_dz = x_act == Activation::identity ? nullptr : dx;
  bias_activation_backward(x_act, static_cast<const T*>(dx), x_saved, x_dz, x_db, n, in, x_alpha,
                           partials, s);
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void dense_forward<T>(Activation, const T*, const T*, const T*, T*, T*, int64_t,    \
                                 int64_t, int64_t, T, int, void*, Stream);                     \
  template void dense_backward<T>(Activation, const T*, const T*, const T*, const T*, T*, T*,  \
                                  T*, Activation, const T*, T*, int64_t, int64_t, int64_t, T,  \
                                  T, int, void*, Stream);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
