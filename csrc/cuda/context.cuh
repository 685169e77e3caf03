// What cuBLASLt needs that outlives a call, one set per device: the handle, a workspace per
// stream, and the algorithm chosen for each GEMM configuration.
//
// - The handle is created on first use of a device and kept for the life of the process
//   (never destroyed: at exit the driver may already be gone).
// - Workspaces: 32 MiB on Hopper and newer, 4 MiB before (NVIDIA's recommendation), allocated
//   on a stream's first GEMM. Kernels on one stream run in order, so one workspace per stream
//   is never used twice at once; streams do not share one. A stream first seen while it is
//   being captured into a CUDA graph gets no workspace (cudaMalloc is not allowed during
//   capture) and cuBLASLt runs without one: run one step before capturing.
// - Algorithms: cublasLtMatmulAlgoGetHeuristic's first answer, cached under everything that
//   decides it (types, transposes, sizes, leading dimensions, epilogue, pointer alignments,
//   workspace size). A configuration cuBLASLt cannot run is cached as such.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda/common.cuh"

namespace fastnn::cuda {

// Throws std::runtime_error naming the call and the status (e.g. CUBLAS_STATUS_NOT_SUPPORTED).
inline void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("fastnn: cuBLASLt error in ") + what + ": " +
                             cublasLtGetStatusName(status) + " (" +
                             cublasLtGetStatusString(status) + ")");
}

struct LtWorkspace {
  void* ptr;
  size_t bytes;
};

// For the calling thread's current device.
cublasLtHandle_t lt_handle();
LtWorkspace lt_workspace(cudaStream_t stream);

// Everything cublasLtMatmulAlgoGetHeuristic's answer depends on.
struct AlgoKey {
  int device;
  int ab_type, d_type, compute;
  int trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldd;
  int epilogue;
  int64_t aux_ld;
  int align_a, align_b, align_d, align_bias, align_aux;
  size_t workspace;
  bool operator==(const AlgoKey& o) const;
};

struct AlgoChoice {
  bool supported;
  cublasLtMatmulAlgo_t algo;
};

// True and the cached choice, or false when the key has not been seen.
bool find_algo(const AlgoKey& key, AlgoChoice* choice);
void store_algo(const AlgoKey& key, const AlgoChoice& choice);

// The largest power of two (at most 256) dividing the address; 256 for null.
int alignment_of(const void* p);

}  // namespace fastnn::cuda
