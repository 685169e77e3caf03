// The multi-tensor launcher: one kernel launch applies a per-element Op (optim_math.h) to many
// tensors of one dtype.
//
// The tensors' addresses and sizes travel in the kernel's parameter block (a TensorTable), so no
// host-to-device copy and no synchronisation precede a launch, and a launch captured in a CUDA
// graph holds its own copy of the table. Kernel parameters may take 4 KB everywhere and 32 KB
// with CUDA 12.1 or newer (toolkit and driver): a call uses the 4 KB table while its tensors fit
// (a small parameter block launches fastest) and the 32 KB one (~700 Adam tensors) beyond, and
// makes several launches only past that. Each tensor is cut in chunks of kChunk elements; the
// blocks of a launch walk the launch's chunks (grid-stride), find their tensor by binary search
// over the chunks' prefix sums, and update the chunk with 16-byte loads and stores when every
// list's pointer for that chunk is 16-byte aligned, element by element otherwise and for the
// tail that does not fill a vector.
//
// Occupancy: the update is memory-bound, so what matters is the bytes each multiprocessor has in
// flight, and that every block of a launch is resident at once. A thread keeps 32 bytes per
// list in flight (two 16-byte vectors of float32, one of float64: kIlp), 128 bytes for float32
// Adam; __launch_bounds__(256, 3) holds the kernels to 80 registers, so three blocks (768
// threads, ~96 KB of Adam's loads) fit on a multiprocessor with no spill (ptxas, sm_90: 48-80
// registers; four float32 vectors per list under (512) took 124-128 registers and spilled with
// AMSGrad, one block per multiprocessor). The grid is sized by
// cudaOccupancyMaxActiveBlocksPerMultiprocessor, so no tail of blocks runs in a second wave.
//
// Capturable mode: given `scalars` (device float64 [lr, step]), a one-thread kernel first adds
// 1 to the step, then every thread of the update kernels builds its Op from the device values,
// so the host supplies no per-step number at all.
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include "cuda/common.cuh"
#include "optim.h"

namespace fastnn::cuda {

constexpr int64_t kChunk = 65536;     // elements per chunk (a multiple of every vector width)
constexpr int kMultiBlock = 256;      // threads per block
constexpr int kMinBlocksPerSm = 3;    // __launch_bounds__: at most 80 registers a thread
constexpr int kMaxChunksPerLaunch = 1 << 30;

// Kernel parameter blocks: 4 KB on every CUDA version, 32764 bytes from CUDA 12.1 (Volta and
// newer; the driver must be for 12.1 or newer too, checked at run time).
constexpr int kSmallParams = 4096;
#if CUDART_VERSION >= 12010
constexpr int kLargeParams = 32764;
#else
constexpr int kLargeParams = kSmallParams;
#endif
constexpr int kOpBytes = 512;  // kept for the Op, the Hyper and the scalars pointer

template <int L, int kParams>
struct TensorTable {
  static constexpr int kMax = (kParams - kOpBytes - 8) / (8 * L + 8 + 4) - 1;
  void* ptr[L][kMax];
  int64_t size[kMax];
  int first_chunk[kMax + 1];  // tensor t owns chunks [first_chunk[t], first_chunk[t + 1])
  int count;
};

__global__ void count_step_kernel(double* scalars) { scalars[1] += 1.0; }

// One chunk of n elements, ptr[l] pointing at its first element in list l.
template <class Op, class T = typename Op::value_type>
__device__ __forceinline__ void update_chunk(const Op& op, T* const (&ptr)[Op::kLists], int64_t n,
                                             bool vec) {
  constexpr int L = Op::kLists;
  constexpr int V = Pack<T>::kSize;
  constexpr int kIlp = sizeof(T) == 4 ? 2 : 1;  // vectors in flight per list: 32 or 16 bytes
  int64_t done = 0;
  if (vec) {
    const int64_t packs = n / V;
    for (int64_t first = threadIdx.x; first < packs; first += int64_t(kIlp) * blockDim.x) {
      Pack<T> r[kIlp][L];
#pragma unroll
      for (int k = 0; k < kIlp; ++k) {
        const int64_t i = first + int64_t(k) * blockDim.x;
        if (i < packs) {
#pragma unroll
          for (int l = 0; l < L; ++l) r[k][l] = reinterpret_cast<const Pack<T>*>(ptr[l])[i];
        }
      }
#pragma unroll
      for (int k = 0; k < kIlp; ++k) {
        const int64_t i = first + int64_t(k) * blockDim.x;
        if (i < packs) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            T v[L];
#pragma unroll
            for (int l = 0; l < L; ++l) v[l] = r[k][l].v[j];
            op(v);
#pragma unroll
            for (int l = 0; l < L; ++l) r[k][l].v[j] = v[l];
          }
#pragma unroll
          for (int l = 0; l < L; ++l)
            if (l != 1) reinterpret_cast<Pack<T>*>(ptr[l])[i] = r[k][l];
        }
      }
    }
    done = packs * V;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    T v[L];
#pragma unroll
    for (int l = 0; l < L; ++l) v[l] = ptr[l][i];
    op(v);
#pragma unroll
    for (int l = 0; l < L; ++l)
      if (l != 1) ptr[l][i] = v[l];
  }
}

template <class Op, class Hyper, int kParams>
__global__ void __launch_bounds__(kMultiBlock, kMinBlocksPerSm)
    multi_tensor_kernel(const __grid_constant__ TensorTable<Op::kLists, kParams> table,
                        const Op host_op, const Hyper hyper, const double* scalars) {
  using T = typename Op::value_type;
  constexpr int L = Op::kLists;
  const Op op = scalars ? Op(hyper, scalars[0], scalars[1]) : host_op;
  const int chunks = table.first_chunk[table.count];
  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {
    int lo = 0, hi = table.count - 1;  // the last tensor whose first chunk is <= c
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (table.first_chunk[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    const int64_t begin = int64_t(c - table.first_chunk[lo]) * kChunk;
    const int64_t n = table.size[lo] - begin < kChunk ? table.size[lo] - begin : kChunk;
    T* ptr[L];
    bool vec = true;
#pragma unroll
    for (int l = 0; l < L; ++l) {
      ptr[l] = static_cast<T*>(table.ptr[l][lo]) + begin;
      vec = vec && reinterpret_cast<uintptr_t>(ptr[l]) % 16 == 0;
    }
    update_chunk(op, ptr, n, vec);
  }
}

// Whether the driver takes kernel parameter blocks over 4 KB (one built for CUDA 12.1 or newer).
inline bool large_params_supported() {
  if constexpr (kLargeParams == kSmallParams) return false;
  static const bool supported = [] {
    int version = 0;
    return cudaDriverGetVersion(&version) == cudaSuccess && version >= 12010;
  }();
  return supported;
}

// Blocks for a launch over `chunks` chunks: one per chunk, at most as many as are resident on
// the current device at once (cudaOccupancyMaxActiveBlocksPerMultiprocessor, asked once per
// kernel and device), so that no block waits for another to finish.
template <class Op, class Hyper, int kParams>
unsigned grid_for_chunks(int64_t chunks) {
  constexpr int kCached = 128;
  static std::atomic<int> cache[kCached] = {};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int per_sm = device < kCached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (per_sm == 0) {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &per_sm, multi_tensor_kernel<Op, Hyper, kParams>, kMultiBlock, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    per_sm = std::max(per_sm, 1);
    if (device < kCached) cache[device].store(per_sm, std::memory_order_relaxed);
  }
  return unsigned(std::min<int64_t>(chunks, int64_t(multiprocessor_count()) * per_sm));
}

// run(OpTag<Op>{}, hyper, lr, step) for optim_dispatch (optim.h): checks the lists, counts the
// step on the device in capturable mode, then launches as many tables as the tensors fill
// (the 32 KB table when the 4 KB one is too small and the driver takes it).
struct Run : RunArgs {
  Stream stream;

  template <class Op, class Hyper>
  void operator()(OpTag<Op>, const Hyper& hyper, double lr, double step) const {
    constexpr int L = Op::kLists;
    static_assert(sizeof(Op) + sizeof(Hyper) + sizeof(double*) <= kOpBytes,
                  "the Op and Hyper must fit beside the tensor table");
    check_tensor_lists(rule, tensors, sizes, L);
    const cudaStream_t s = to_stream(stream);
    if (scalars) {
      count_step_kernel<<<1, 1, 0, s>>>(scalars);
      check_launch(rule);
    }
    const Op host_op = scalars ? Op{} : Op(hyper, lr, step);
    const int64_t used = std::count_if(sizes.begin(), sizes.end(), [](int64_t n) { return n > 0; });
    if (used > TensorTable<L, kSmallParams>::kMax && large_params_supported())
      launch_tables<kLargeParams>(host_op, hyper, s);
    else
      launch_tables<kSmallParams>(host_op, hyper, s);
  }

  template <int kParams, class Op, class Hyper>
  void launch_tables(const Op& host_op, const Hyper& hyper, cudaStream_t s) const {
    constexpr int L = Op::kLists;
    using Table = TensorTable<L, kParams>;
    static_assert(sizeof(Table) + kOpBytes <= kParams, "kernel parameters must fit their block");
    const int64_t count = int64_t(sizes.size());
    Table table;
    table.count = 0;
    table.first_chunk[0] = 0;
    auto flush = [&] {
      const int chunks = table.first_chunk[table.count];
      if (chunks == 0) return;
      const unsigned grid = grid_for_chunks<Op, Hyper, kParams>(chunks);
      multi_tensor_kernel<Op, Hyper, kParams><<<grid, kMultiBlock, 0, s>>>(table, host_op, hyper,
                                                                            scalars);
      check_launch(rule);
      table.count = 0;
    };
    for (int64_t t = 0; t < count; ++t) {
      const int64_t n = sizes[t];
      if (n <= 0) continue;
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      if (chunks > kMaxChunksPerLaunch)
        throw std::invalid_argument(std::string("fastnn ") + rule + ": tensor too large");
      if (table.count == Table::kMax || table.first_chunk[table.count] + chunks > kMaxChunksPerLaunch)
        flush();
      const int k = table.count;
      for (int l = 0; l < L; ++l) table.ptr[l][k] = reinterpret_cast<void*>(tensors[size_t(l * count + t)]);
      table.size[k] = n;
      table.first_chunk[k + 1] = table.first_chunk[k] + int(chunks);
      table.count = k + 1;
    }
    flush();
  }
};

}  // namespace fastnn::cuda
