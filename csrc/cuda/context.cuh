// What cuBLASLt needs that outlives a call, one set per device: the handle, the workspaces, and
// the algorithm chosen for each GEMM configuration.
//
// - The handle is created on first use of a device and kept for the life of the process
//   (never destroyed: at exit the driver may already be gone).
// - Workspaces: 32 MiB on Hopper and newer, 4 MiB before (NVIDIA's recommendation). A GEMM
//   borrows one for its stream (lt_workspace) and gives it back when the call returns, with an
//   event recorded on the stream after the GEMM. A stream is known by its cudaStreamGetId, not
//   its handle: a destroyed stream's handle can come back as a new stream's, and the
//   per-thread default stream is one handle for many threads' streams. A stream keeps the
//   workspace it used last; a new stream gets a new one up to kMaxWorkspaces per device, then
//   takes over the least recently used one after waiting, on the device, for that workspace's
//   last GEMM (stream-ordered reuse: nothing is freed, and the total never exceeds the most
//   ever in use at once).
// - Capture: a stream being captured into a CUDA graph uses the workspace it already has and
//   pins it (the graph replays GEMMs at that address for as long as it lives, so no other
//   stream gets it until lt_release_capture says no graph captured there replays any more:
//   fastnn.cuda_graph does when a captured step is collected; replay a graph on the stream it
//   was captured on). A stream first seen while it is captured gets none (cudaMalloc would
//   break the capture) and cuBLASLt runs without one: run one step before capturing.
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

constexpr int kMaxWorkspaces = 8;  // per device, besides those pinned by captures

// A workspace lent to one GEMM on `stream`: ptr and bytes (null and 0 when there is none); its
// destructor gives it back (recording the event that orders its next user after the GEMM).
class LtWorkspace {
 public:
  LtWorkspace(void* ptr, size_t bytes, int device, int slot, cudaStream_t stream)
      : ptr(ptr), bytes(bytes), device_(device), slot_(slot), stream_(stream) {}
  LtWorkspace(const LtWorkspace&) = delete;
  LtWorkspace& operator=(const LtWorkspace&) = delete;
  ~LtWorkspace();

  void* const ptr;
  const size_t bytes;

 private:
  const int device_, slot_;  // slot_ < 0: nothing to give back
  const cudaStream_t stream_;
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
