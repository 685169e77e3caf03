// Queries about the CUDA runtime, driver, devices and streams. The device queries need no GPU:
// on a machine without a driver or device they report zero devices instead of failing, and
// device_count_error says why (Python turns it into advice: fastnn/_backend/native.py).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "runtime.h"

namespace fastnn::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls are not affected
    return 0;
  }
  return count;
}

std::string device_count_error() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess) return "";
  cudaGetLastError();
  return cudaGetErrorName(err);
}

int runtime_version() { return CUDART_VERSION; }

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

long cublaslt_version() { return long(cublasLtGetVersion()); }

std::string device_name(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

int device_capability(int device) {
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute(major)");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute(minor)");
  return major * 10 + minor;
}

int get_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

uint64_t stream_id(uintptr_t stream) {
  unsigned long long id = 0;
  check(cudaStreamGetId(reinterpret_cast<cudaStream_t>(stream), &id), "cudaStreamGetId");
  return uint64_t(id);
}

bool stream_capturing(uintptr_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(reinterpret_cast<cudaStream_t>(stream), &status),
        "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attributes{};
  check(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(ptr)),
        "cudaPointerGetAttributes");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::invalid_argument("fastnn: the array's pointer is not device memory");
  return attributes.device;
}

}  // namespace fastnn::cuda
