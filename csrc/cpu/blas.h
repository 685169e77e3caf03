// NumPy's BLAS, called from C++: the GEMMs of the row-blocked dense chain (cpu/dense_chain.cpp);
// and oneDNN's bf16 GEMM, the medium-precision GEMMs of every CPU dense layer.
//
// The extension links no BLAS. fastnn/_blas.py finds the OpenBLAS that NumPy loaded and hands
// over the addresses of its cblas_sgemm / cblas_dgemm and thread-count functions; until then
// (or when NumPy's BLAS is not an OpenBLAS) blas_available() is false and Python keeps using
// np.matmul. fastnn/_bf16.py finds oneDNN (the optional extra fastnn[bf16]) and hands over
// dnnl_gemm_bf16bf16f32; until then bf16_gemm_available() is false and "medium" computes in
// float32 on the CPU.
#pragma once

#include <cstdint>
#include <mutex>

#include "cpu/bf16.h"

namespace fastnn::cpu {

// Row-major C = alpha op(A) op(B) + beta C, op(A) (m, k), op(B) (k, n), C (m, n).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Row-major C = alpha op(A) op(B) + beta C with A and B in bf16, products summed in float32,
// C float32; shapes as for gemm. oneDNN's GEMM threads over OpenMP (the same libgomp as the
// extension's) when called outside a parallel region, and runs on the calling thread inside
// one (the dense chain's). Counted (bf16_gemm_calls), so tests can see the path taken. Returns
// false (and computes nothing) where oneDNN is not set or fails, so that the threads of a
// parallel region can report it after the region instead of throwing inside it.
bool gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float beta, float* c,
               int64_t ldc);

// While one is alive, the BLAS runs every call on the calling thread (its thread count is 1),
// so that the threads of an OpenMP region can each call it on their own rows. OpenBLAS's
// count is process-wide (openblas_set_num_threads_local is too, in pthreads builds): the
// first guard sets it to 1 and the last one restores it; NumPy calls made meanwhile from
// other Python threads run on one thread (same results, slower).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
};

}  // namespace fastnn::cpu
