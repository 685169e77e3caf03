// The multi-tensor launcher: one kernel launch applies a per-element Op (optim_math.h) to many
// tensors stored as one OptimTypes (optim.h) says.
//
// The tensors' addresses and sizes travel in the kernel's parameter block (a TensorTable under
// 4 KB), so no host-to-device copy and no synchronisation precede a launch, and a launch
// captured in a CUDA graph holds its own copy of the table. A call with more tensors than one
// table holds makes several launches. Each tensor is cut in chunks of kChunk elements; the
// blocks of a launch walk the launch's chunks (grid-stride), find their tensor by binary search
// over the chunks' prefix sums, and update the chunk with vector loads and stores (16 bytes of
// the widest list) when every list's pointer for that chunk is aligned to its vector, element
// by element otherwise and for the tail that does not fill a vector.
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

// N elements of S, loaded or stored as one vector.
template <class S, int N>
struct alignas(sizeof(S) * N) Elements {
  S v[N];
};

// One chunk's lists, typed as Types stores them: the parameter, its gradient and L - 2 states.
template <class Types, int L>
struct ChunkLists {
  typename Types::param* param;
  const typename Types::grad* grad;
  typename Types::state* state[L > 2 ? L - 2 : 1];
};

// Elements per vector: 16 bytes of the widest list (4 floats, 2 doubles, 8 bfloat16s).
template <class Types>
constexpr int vector_elements() {
  constexpr size_t p = sizeof(typename Types::param), g = sizeof(typename Types::grad),
                   s = sizeof(typename Types::state);
  return int(16 / (p > g ? (p > s ? p : s) : (g > s ? g : s)));
}

// One chunk of n elements, the lists pointing at its first element; each element is widened to
// the Op's compute type, updated, and rounded back.
template <class Types, class Op, class T = typename Op::value_type>
__device__ __forceinline__ void update_chunk(const Op& op, const ChunkLists<Types, Op::kLists>& ptr,
                                             int64_t n, bool vec) {
  constexpr int L = Op::kLists;
  constexpr int LS = L > 2 ? L - 2 : 1;
  constexpr int V = vector_elements<Types>();
  constexpr int kIlp = sizeof(T) == 4 ? 4 : 2;  // vectors in flight per list
  using P = typename Types::param;
  using G = typename Types::grad;
  using S = typename Types::state;
  int64_t done = 0;
  if (vec) {
    const int64_t packs = n / V;
    for (int64_t first = threadIdx.x; first < packs; first += int64_t(kIlp) * blockDim.x) {
      Elements<P, V> rp[kIlp];
      Elements<G, V> rg[kIlp];
      Elements<S, V> rs[kIlp][LS];
#pragma unroll
      for (int k = 0; k < kIlp; ++k) {
        const int64_t i = first + int64_t(k) * blockDim.x;
        if (i < packs) {
          rp[k] = reinterpret_cast<const Elements<P, V>*>(ptr.param)[i];
          rg[k] = reinterpret_cast<const Elements<G, V>*>(ptr.grad)[i];
#pragma unroll
          for (int l = 2; l < L; ++l)
            rs[k][l - 2] = reinterpret_cast<const Elements<S, V>*>(ptr.state[l - 2])[i];
        }
      }
#pragma unroll
      for (int k = 0; k < kIlp; ++k) {
        const int64_t i = first + int64_t(k) * blockDim.x;
        if (i < packs) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            T v[L];
            v[0] = widen<T>(rp[k].v[j]);
            v[1] = widen<T>(rg[k].v[j]);
#pragma unroll
            for (int l = 2; l < L; ++l) v[l] = widen<T>(rs[k][l - 2].v[j]);
            op(v);
            rp[k].v[j] = narrow<P>(v[0]);
#pragma unroll
            for (int l = 2; l < L; ++l) rs[k][l - 2].v[j] = narrow<S>(v[l]);
          }
          reinterpret_cast<Elements<P, V>*>(ptr.param)[i] = rp[k];
#pragma unroll
          for (int l = 2; l < L; ++l)
            reinterpret_cast<Elements<S, V>*>(ptr.state[l - 2])[i] = rs[k][l - 2];
        }
      }
    }
    done = packs * V;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    T v[L];
    v[0] = widen<T>(ptr.param[i]);
    v[1] = widen<T>(ptr.grad[i]);
#pragma unroll
    for (int l = 2; l < L; ++l) v[l] = widen<T>(ptr.state[l - 2][i]);
    op(v);
    ptr.param[i] = narrow<P>(v[0]);
#pragma unroll
    for (int l = 2; l < L; ++l) ptr.state[l - 2][i] = narrow<S>(v[l]);
  }
}

template <class Types, class Op, class Hyper>
__global__ void __launch_bounds__(kMultiBlock)
    multi_tensor_kernel(const __grid_constant__ TensorTable<Op::kLists> table, const Op host_op,
                        const Hyper hyper, const double* scalars) {
  constexpr int L = Op::kLists;
  constexpr int V = vector_elements<Types>();
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
    ChunkLists<Types, L> ptr;
    ptr.param = static_cast<typename Types::param*>(table.ptr[0][lo]) + begin;
    ptr.grad = static_cast<const typename Types::grad*>(table.ptr[1][lo]) + begin;
    bool vec = reinterpret_cast<uintptr_t>(ptr.param) % (V * sizeof(*ptr.param)) == 0 &&
               reinterpret_cast<uintptr_t>(ptr.grad) % (V * sizeof(*ptr.grad)) == 0;
#pragma unroll
    for (int l = 2; l < L; ++l) {
      ptr.state[l - 2] = static_cast<typename Types::state*>(table.ptr[l][lo]) + begin;
      vec = vec && reinterpret_cast<uintptr_t>(ptr.state[l - 2]) % (V * sizeof(*ptr.state[0])) == 0;
    }
    update_chunk<Types>(op, ptr, n, vec);
  }
}

// run(OpTag<Op, Types>{}, hyper, lr, step) for optim_dispatch (optim.h): checks the lists, counts the
// step on the device in capturable mode, then launches as many tables as the tensors fill.
struct Run : RunArgs {
  Stream stream;

  template <class Op, class Types, class Hyper>
  void operator()(OpTag<Op, Types>, const Hyper& hyper, double lr, double step) const {
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
      multi_tensor_kernel<Types, Op, Hyper><<<grid, kMultiBlock, 0, s>>>(table, host_op, hyper, scalars);
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
