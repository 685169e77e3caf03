// What the build and the machine provide, for fastnn.backend_info().
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace fastnn {

namespace cpu {
std::string simd_level();  // the instruction set the build targets: "avx512", "avx2", ...
int omp_threads();         // OpenMP threads a parallel kernel uses (1 without OpenMP)
void set_omp_threads(int n);
// a = b + s c (n float64s) on every OpenMP thread: STREAM's triad, the benchmarks' bandwidth
// yardstick (cpu/triad.cpp).
void stream_triad(double* a, const double* b, const double* c, double s, int64_t n);
}  // namespace cpu

namespace cuda {
int device_count();            // 0 when no driver or no device: never throws
std::string device_count_error();  // cudaGetDeviceCount's error name ("" when it succeeds)
int runtime_version();         // CUDART_VERSION the module was built with
int driver_version();          // 0 when no driver is installed
long cublaslt_version();       // cublasLtGetVersion(), works without a GPU
std::string device_name(int device);
int device_capability(int device);  // major * 10 + minor
int get_device();                   // the calling thread's current device
void set_device(int device);
int pointer_device(uintptr_t ptr);  // the device that owns a device pointer
// cudaStreamGetId: unique for the life of the process (a new stream never gets a destroyed
// one's id, whatever its handle), and the calling thread's own for the per-thread default stream.
uint64_t stream_id(uintptr_t stream);
bool stream_capturing(uintptr_t stream);  // whether work on the stream is being captured
// cuBLASLt workspaces on the current device (csrc/cuda/context.cu): lent to streams (8 at
// most, more only if captures released theirs to them), and pinned by captured CUDA graphs.
std::pair<int, int> lt_workspace_count();
// Unpins the workspace a capture on `stream` pinned, once no graph captured there will replay.
void lt_release_capture(uintptr_t stream);
}  // namespace cuda

}  // namespace fastnn
