// The per-device cuBLASLt state of context.cuh.
#include "cuda/context.cuh"
#include "runtime.h"

#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace fastnn::cuda {
namespace {

constexpr int kMaxDevices = 64;

struct Slot {
  void* ptr = nullptr;
  cudaEvent_t done = nullptr;  // recorded after the last GEMM that used it, on its stream
  unsigned long long stream = 0;  // cudaStreamGetId of the stream it is lent to
  uint64_t last_use = 0;          // DeviceState::clock at its last loan
  int borrowed = 0;               // loans not yet given back (never taken over while > 0)
  bool pinned = false;            // used by a capture: the stream's for good
};

struct DeviceState {
  std::mutex mutex;
  cublasLtHandle_t handle = nullptr;
  std::vector<Slot> slots;  // never shrinks: a graph may hold any slot's address
  uint64_t clock = 0;
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
  const size_t bytes = workspace_bytes(device);
  unsigned long long id = 0;
  check(cudaStreamGetId(stream, &id), "cudaStreamGetId");
  const bool capturing = is_capturing(stream);
  std::lock_guard<std::mutex> lock(s.mutex);
  int slot = -1, unpinned = 0, oldest = -1;
  for (int i = 0; i < int(s.slots.size()); ++i) {
    const Slot& w = s.slots[i];
    if (w.stream == id) slot = i;
    if (w.pinned) continue;
    ++unpinned;
    if (w.borrowed == 0 && (oldest < 0 || w.last_use < s.slots[oldest].last_use)) oldest = i;
  }
  if (slot < 0) {
    if (capturing) return LtWorkspace(nullptr, 0, device, -1, stream);
    if (unpinned < kMaxWorkspaces || oldest < 0) {
      Slot w;
      check(cudaMalloc(&w.ptr, bytes), "cudaMalloc (cuBLASLt workspace)");
      check(cudaEventCreateWithFlags(&w.done, cudaEventDisableTiming), "cudaEventCreate");
      s.slots.push_back(w);
      slot = int(s.slots.size()) - 1;
    } else {
      // Take over the least recently used workspace once its last GEMM has run.
      slot = oldest;
      check(cudaStreamWaitEvent(stream, s.slots[slot].done, 0), "cudaStreamWaitEvent");
    }
    s.slots[slot].stream = id;
  }
  Slot& w = s.slots[slot];
  w.last_use = ++s.clock;
  if (capturing) {
    w.pinned = true;  // the graph keeps the address; no event is recorded inside a capture
    return LtWorkspace(w.ptr, bytes, device, -1, stream);
  }
  ++w.borrowed;
  return LtWorkspace(w.ptr, bytes, device, slot, stream);
}

void lt_release_capture(uintptr_t stream_handle) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  unsigned long long id = 0;
  check(cudaStreamGetId(stream, &id), "cudaStreamGetId");
  DeviceState& s = device_state(current_device());
  std::lock_guard<std::mutex> lock(s.mutex);
  for (Slot& w : s.slots) {
    if (w.stream != id || !w.pinned) continue;
    check(cudaEventRecord(w.done, stream), "cudaEventRecord");  // after the graph's last replay
    w.pinned = false;
  }
}

std::pair<int, int> lt_workspace_count() {
  DeviceState& s = device_state(current_device());
  std::lock_guard<std::mutex> lock(s.mutex);
  int pinned = 0;
  for (const Slot& w : s.slots) pinned += w.pinned;
  return {int(s.slots.size()) - pinned, pinned};
}

LtWorkspace::~LtWorkspace() {
  if (slot_ < 0) return;
  DeviceState& s = device_state(device_);
  std::lock_guard<std::mutex> lock(s.mutex);
  Slot& w = s.slots[size_t(slot_)];
  // Errors cannot leave a destructor; a failed record leaves the last one, which the next
  // cuBLASLt or launch check reports through cudaGetLastError.
  cudaEventRecord(w.done, stream_);
  --w.borrowed;
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
