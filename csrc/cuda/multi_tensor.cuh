// The multi-tensor launcher: one kernel launch applies a per-element Op (optim_math.h) to many
// tensors of one dtype.
//
// The tensors' addresses and sizes travel in the kernel's parameter block (a TensorTable under
// 4 KB), so no host-to-device copy and no synchronisation precede a launch, and a launch
// captured in a CUDA graph holds its own copy of the table. A call with more tensors than one
// table holds makes several launches. Each tensor is cut in chunks of kChunk elements; the
// blocks of a launch walk the launch's chunks (grid-stride), find their tensor by binary search
// over the chunks' prefix sums, and update the chunk with 16-byte loads and stores when every
// list's pointer for that chunk is 16-byte aligned, element by element otherwise and for the
// tail that does not fill a vector.
//
// Capturable mode: given `scalars` (device float64 [lr, step]), a one-thread kernel first adds
// 1 to the step, then every thread of the update kernels builds its Op from the device values,
// so the host supplies no per-step number at all.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include "cuda/common.cuh"
#include "optim.h"

namespace fastnn::cuda {

constexpr int64_t kChunk = 65536;     // elements per chunk (a multiple of every vector width)
constexpr int kMultiBlock = 512;      // threads per block
constexpr int kTableBytes = 3584;     // leaves room for the Op and Hyper in the 4 KB of parameters
constexpr int kMaxChunksPerLaunch = 1 << 30;

template <int L>
struct TensorTable {
  static constexpr int kMax = (kTableBytes - 8) / (8 * L + 8 + 4) - 1;
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
  constexpr int kIlp = sizeof(T) == 4 ? 4 : 2;  // vectors in flight per list: 64 bytes either way
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

template <class Op, class Hyper>
__global__ void __launch_bounds__(kMultiBlock)
    multi_tensor_kernel(const __grid_constant__ TensorTable<Op::kLists> table, const Op host_op,
                        const Hyper hyper, const double* scalars) {
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

// run(OpTag<Op>{}, hyper, lr, step) for optim_dispatch (optim.h): checks the lists, counts the
// step on the device in capturable mode, then launches as many tables as the tensors fill.
struct Run : RunArgs {
  Stream stream;

  template <class Op, class Hyper>
  void operator()(OpTag<Op>, const Hyper& hyper, double lr, double step) const {
    constexpr int L = Op::kLists;
    using Table = TensorTable<L>;
    static_assert(sizeof(Table) + sizeof(Op) + sizeof(Hyper) + sizeof(double*) <= 4000,
                  "kernel parameters must fit in 4 KB");
    check_tensor_lists(rule, tensors, sizes, L);
    const cudaStream_t s = to_stream(stream);
    if (scalars) {
      count_step_kernel<<<1, 1, 0, s>>>(scalars);
      check_launch(rule);
    }
    const Op host_op = scalars ? Op{} : Op(hyper, lr, step);
    const int64_t count = int64_t(sizes.size());
    const int64_t max_blocks = int64_t(multiprocessor_count()) * (2048 / kMultiBlock);
    Table table;
    table.count = 0;
    table.first_chunk[0] = 0;
    auto flush = [&] {
      const int chunks = table.first_chunk[table.count];
      if (chunks == 0) return;
      const unsigned grid = unsigned(std::min<int64_t>(chunks, max_blocks));
      multi_tensor_kernel<Op, Hyper><<<grid, kMultiBlock, 0, s>>>(table, host_op, hyper, scalars);
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
