// The per-device cuBLASLt state of context.cuh.
#include "cuda/context.cuh"

#include <functional>
#include <mutex>
#include <unordered_map>

namespace fastnn::cuda {
namespace {

constexpr int kMaxDevices = 64;

struct DeviceState {
  std::mutex mutex;
  cublasLtHandle_t handle = nullptr;
  std::unordered_map<cudaStream_t, LtWorkspace> workspaces;
};

int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (device < 0 || device >= kMaxDevices)
    throw std::runtime_error("fastnn: CUDA device " + std::to_string(device) +
                             " is beyond the " + std::to_string(kMaxDevices) +
                             " devices fastnn keeps cuBLASLt state for");
  return device;
}

DeviceState& device_state(int device) {
  static DeviceState states[kMaxDevices];
  return states[device];
}

size_t workspace_bytes(int device) {
  int major = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute(major)");
  return size_t(major >= 9 ? 32 : 4) << 20;
}

bool is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    cudaGetLastError();  // not sticky; clear it so later checks do not see it
    return true;         // cannot tell: do not allocate
  }
  return status != cudaStreamCaptureStatusNone;
}

struct KeyHash {
  size_t operator()(const AlgoKey& k) const {
    size_t h = 0;
    auto mix = [&h](int64_t v) { h ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    for (int64_t v : {int64_t(k.device), int64_t(k.ab_type), int64_t(k.d_type),
                      int64_t(k.compute), int64_t(k.trans_a), int64_t(k.trans_b), k.m, k.n, k.k,
                      k.lda, k.ldb, k.ldd, int64_t(k.epilogue), k.aux_ld, int64_t(k.align_a),
                      int64_t(k.align_b), int64_t(k.align_d), int64_t(k.align_bias),
                      int64_t(k.align_aux), int64_t(k.workspace)})
      mix(v);
    return h;
  }
};

std::mutex algo_mutex;
std::unordered_map<AlgoKey, AlgoChoice, KeyHash>& algo_cache() {
  static std::unordered_map<AlgoKey, AlgoChoice, KeyHash> cache;
  return cache;
}

}  // namespace

bool AlgoKey::operator==(const AlgoKey& o) const {
  return device == o.device && ab_type == o.ab_type && d_type == o.d_type &&
         compute == o.compute && trans_a == o.trans_a && trans_b == o.trans_b && m == o.m &&
         n == o.n && k == o.k && lda == o.lda && ldb == o.ldb && ldd == o.ldd &&
         epilogue == o.epilogue && aux_ld == o.aux_ld && align_a == o.align_a &&
         align_b == o.align_b && align_d == o.align_d && align_bias == o.align_bias &&
         align_aux == o.align_aux && workspace == o.workspace;
}

cublasLtHandle_t lt_handle() {
  DeviceState& s = device_state(current_device());
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.handle == nullptr) check_cublas(cublasLtCreate(&s.handle), "cublasLtCreate");
  return s.handle;
}

LtWorkspace lt_workspace(cudaStream_t stream) {
  const int device = current_device();
  DeviceState& s = device_state(device);
  std::lock_guard<std::mutex> lock(s.mutex);
  const auto found = s.workspaces.find(stream);
  if (found != s.workspaces.end()) return found->second;
  if (is_capturing(stream)) return LtWorkspace{nullptr, 0};
  LtWorkspace w{nullptr, workspace_bytes(device)};
  check(cudaMalloc(&w.ptr, w.bytes), "cudaMalloc (cuBLASLt workspace)");
  s.workspaces.emplace(stream, w);
  return w;
}

bool find_algo(const AlgoKey& key, AlgoChoice* choice) {
  std::lock_guard<std::mutex> lock(algo_mutex);
  const auto found = algo_cache().find(key);
  if (found == algo_cache().end()) return false;
  *choice = found->second;
  return true;
}

void store_algo(const AlgoKey& key, const AlgoChoice& choice) {
  std::lock_guard<std::mutex> lock(algo_mutex);
  algo_cache()[key] = choice;
}

int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  int align = 1;
  while (align < 256 && (a & uintptr_t(align)) == 0) align <<= 1;
  return align;
}

}  // namespace fastnn::cuda
