// What the build and the machine provide, for fastnn.backend_info().
#pragma once

#include <cstdint>
#include <string>

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
int runtime_version();         // CUDART_VERSION the module was built with
int driver_version();          // 0 when no driver is installed
long cublaslt_version();       // cublasLtGetVersion(), works without a GPU
std::string device_name(int device);
int device_capability(int device);  // major * 10 + minor
int get_device();                   // the calling thread's current device
void set_device(int device);
int pointer_device(uintptr_t ptr);  // the device that owns a device pointer
}  // namespace cuda

}  // namespace fastnn
