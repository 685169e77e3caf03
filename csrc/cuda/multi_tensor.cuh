// The multi-tensor launcher: one kernel launch applies a per-element Op (optim_math.h) to many
// tensors stored as one OptimTypes (optim.h) says.
//
// The tensors' addresses and sizes travel in the kernel's parameter block (a TensorTable), so no
// host-to-device copy and no synchronisation precede a launch, and a launch captured in a CUDA
// graph holds its own copy of the table. Kernel parameters may take 4 KB everywhere and 32 KB
// with CUDA 12.1 or newer (toolkit and driver): a call uses the 4 KB table while its tensors fit
// (a small parameter block launches fastest) and the 32 KB one (~700 Adam tensors) beyond, and
// makes several launches only past that. Each tensor is cut in chunks of kChunk elements; the
// blocks of a launch walk the launch's chunks (grid-stride), find their tensor by binary search
// over the chunks' prefix sums, and update the chunk with vector loads and stores (16 bytes of
// the widest list) when every list's pointer for that chunk is aligned to its vector, element
// by element otherwise and for the tail that does not fill a vector.
//
// Occupancy: the update is memory-bound, so what matters is the bytes each multiprocessor has in
// flight, and that every block of a launch is resident at once. A thread keeps two 16-byte
// vectors per list in flight for float32 (kIlp), one for float64, bfloat16 and float16 (a
// 2-byte vector holds 8 elements, as many as two float32 ones; two spilled registers), 128
// bytes for float32 Adam; __launch_bounds__(256, 3) holds the kernels to 80 registers, so
// three blocks (768 threads, ~96 KB of Adam's loads) fit on a multiprocessor with no spill
// (ptxas, sm_90: 48-80 registers; four float32 vectors per list under (512) took 124-128
// registers and spilled with AMSGrad, one block per multiprocessor). The grid is sized by
// cudaOccupancyMaxActiveBlocksPerMultiprocessor, so no tail of blocks runs in a second wave.
//
// Capturable mode: given `scalars` (device float64 [lr, step]), a one-thread kernel first adds
// 1 to the step, then every thread of the update kernels builds its Op from the device values,
// so the host supplies no per-step number at all.
//
// Low-bit state: bfloat16 state goes through the same loop as any storage type, rounded to
// nearest even or, stochastically, with Philox bits keyed by element (optim_math.h; the table
// then carries each tensor's index in the call, its stream). int8 state is updated one block of
// kQuantBlock elements per warp (a chunk holds whole blocks): each lane loads, updates and keeps
// kQuantBlock / 32 elements strided by 32 (coalesced), the block's absmax is a warp maximum
// over the float bits, and the lanes encode and store their codes; the old absmax is read once
// per block, so the state is still read and written once.
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include "cuda/common.cuh"
#include "optim.h"
#include "rng.h"

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

// The tensors of a launch: L pointer lists, and with kIndexed each tensor's index in the call
// (stochastic rounding's stream).
template <int L, int kParams, bool kIndexed = false>
struct TensorTable {
  static constexpr int kMax = (kParams - kOpBytes - 8) / (8 * L + 8 + 4 + (kIndexed ? 4 : 0)) - 1;
  void* ptr[L][kMax];
  int64_t size[kMax];
  int first_chunk[kMax + 1];  // tensor t owns chunks [first_chunk[t], first_chunk[t + 1])
  int index[kIndexed ? kMax : 1];
  int count;
};

// Whether a launch's tensors carry their index (bfloat16 state, which may round stochastically).
template <class Types>
constexpr bool kIndexedTable = std::is_same_v<typename Types::state, bfloat16>;

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

// Where a chunk's stochastic rounding draws from: the element index of its first element and
// the tensor's first stream (index * 4; the state list is added).
struct ChunkRounding {
  StateRounding r;  // a copy: a reference to the kernel's parameter would put it in local memory
  int64_t first;
  uint64_t stream;
};

// State value x of element e (counted from the chunk's first) of state list l (from 0),
// rounded to the state's storage: `bits` are the Philox words of the element's group of 8.
template <class S, class T>
__device__ __forceinline__ S store_state(T x, const ChunkRounding& cr, int l,
                                         const Philox4x32& bits, int64_t e) {
  if constexpr (std::is_same_v<S, bfloat16>) {
    if (cr.r.stochastic) {
      const int64_t i = cr.first + e;
      return narrow_stochastic(float(x), (bits.v[(i >> 1) & 3] >> (16 * (i & 1))) & 0xffffu);
    }
  }
  return narrow<S>(x);
}

// The Philox words of element e's group of 8 in state list l, when S rounds stochastically.
template <class S>
__device__ __forceinline__ Philox4x32 state_bits(const ChunkRounding& cr, int l, int64_t e) {
  if constexpr (std::is_same_v<S, bfloat16>) {
    if (cr.r.stochastic)
      return philox_block(cr.r.seed, state_stream_counter(cr.stream + uint64_t(l), cr.r.step),
                          uint64_t(cr.first + e) / 8);
  }
  return Philox4x32{};
}

// One chunk of n elements, the lists pointing at its first element; each element is widened to
// the Op's compute type, updated, and rounded back.
template <class Types, class Op, class T = typename Op::value_type>
__device__ __forceinline__ void update_chunk(const Op& op, const ChunkLists<Types, Op::kLists>& ptr,
                                             int64_t n, bool vec, const ChunkRounding& cr) {
  constexpr int L = Op::kLists;
  constexpr int LS = L > 2 ? L - 2 : 1;
  constexpr int V = vector_elements<Types>();
  constexpr int kIlp = sizeof(T) == 4 && V == 4 ? 2 : 1;
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
          // V (4 or 8) consecutive elements share one group of 8 for the random bits.
          Philox4x32 bits[LS];
#pragma unroll
          for (int l = 2; l < L; ++l) bits[l - 2] = state_bits<S>(cr, l - 2, i * V);
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
            for (int l = 2; l < L; ++l)
              rs[k][l - 2].v[j] = store_state<S>(v[l], cr, l - 2, bits[l - 2], i * V + j);
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
    for (int l = 2; l < L; ++l)
      ptr.state[l - 2][i] = store_state<S>(v[l], cr, l - 2, state_bits<S>(cr, l - 2, i), i);
  }
}

// int8 state: the chunk's blocks of kQuantBlock elements, one per warp at a time. `codes` and
// `absmax` point at the chunk's first code and its first block's absmax.
template <class Types, class Op, class T = typename Op::value_type>
__device__ __forceinline__ void update_chunk_int8(
    const Op& op, const ChunkLists<Types, Op::kLists>& ptr,
    float* const (&absmax)[Op::kLists > 2 ? Op::kLists - 2 : 1], int64_t n) {
  constexpr int L = Op::kLists;
  constexpr int kPerLane = kQuantBlock / 32;
  using P = typename Types::param;
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x / 32;
  for (int64_t block = threadIdx.x / 32; block * kQuantBlock < n; block += warps) {
    const int64_t first = block * kQuantBlock;
    const int m = n - first < kQuantBlock ? int(n - first) : kQuantBlock;
    T v[kPerLane][L];
    float scale[L > 2 ? L - 2 : 1];
#pragma unroll
    for (int l = 2; l < L; ++l) scale[l - 2] = block_from_code(absmax[l - 2][block]);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < m) {
        v[j][0] = widen<T>(ptr.param[first + e]);
        v[j][1] = widen<T>(ptr.grad[first + e]);
#pragma unroll
        for (int l = 2; l < L; ++l) {
          const uint32_t code = ptr.state[l - 2][first + e].code;
          v[j][l] = mul_rn((Op::kNonNegative >> l & 1u) ? StateCode<false>::decode(code)
                                                        : StateCode<true>::decode(code),
                           scale[l - 2]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < m) {
        op(v[j]);
        ptr.param[first + e] = narrow<P>(v[j][0]);
      }
    }
#pragma unroll
    for (int l = 2; l < L; ++l) {
      uint32_t largest = 0;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j)
        if (lane + 32 * j < m) largest = max(largest, float_bits(float(v[j][l])) & 0x7fffffffu);
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1)
        largest = max(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
      const BlockScale bs(largest);
      if (lane == 0) absmax[l - 2][block] = bs.absmax;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        if (e < m) {
          const float y = mul_rn(float(v[j][l]), bs.to_code);
          const uint32_t code = bs.to_code == 0.0f                   ? 0u
                                : (Op::kNonNegative >> l & 1u) ? StateCode<false>::encode(y)
                                                               : StateCode<true>::encode(y);
          ptr.state[l - 2][first + e].code = uint8_t(code);
        }
      }
    }
  }
}

template <class Types, class Op, class Hyper, int kParams>
__global__ void __launch_bounds__(kMultiBlock, kMinBlocksPerSm)
    multi_tensor_kernel(const __grid_constant__ TensorTable<pointer_lists<Types, Op>(), kParams,
                                                            kIndexedTable<Types>> table,
                        const Op host_op, const Hyper hyper, const double* scalars,
                        StateRounding rounding) {
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
    if constexpr (kQuantized<Types>) {
      float* absmax[L > 2 ? L - 2 : 1];
#pragma unroll
      for (int l = 2; l < L; ++l) {
        ptr.state[l - 2] = static_cast<Int8Blocks*>(table.ptr[2 + 2 * (l - 2)][lo]) + begin;
        absmax[l - 2] = static_cast<float*>(table.ptr[3 + 2 * (l - 2)][lo]) + begin / kQuantBlock;
      }
      update_chunk_int8<Types>(op, ptr, absmax, n);
    } else {
      bool vec = reinterpret_cast<uintptr_t>(ptr.param) % (V * sizeof(*ptr.param)) == 0 &&
                 reinterpret_cast<uintptr_t>(ptr.grad) % (V * sizeof(*ptr.grad)) == 0;
#pragma unroll
      for (int l = 2; l < L; ++l) {
        ptr.state[l - 2] = static_cast<typename Types::state*>(table.ptr[l][lo]) + begin;
        vec = vec &&
              reinterpret_cast<uintptr_t>(ptr.state[l - 2]) % (V * sizeof(*ptr.state[0])) == 0;
      }
      uint64_t stream = 0;
      if constexpr (kIndexedTable<Types>) stream = uint64_t(table.index[lo]) * 4;
      if (scalars) rounding.step = uint64_t(scalars[1]);
      update_chunk<Types>(op, ptr, n, vec, ChunkRounding{rounding, begin, stream});
    }
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
template <class Types, class Op, class Hyper, int kParams>
unsigned grid_for_chunks(int64_t chunks) {
  constexpr int kCached = 128;
  static std::atomic<int> cache[kCached] = {};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int per_sm = device < kCached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (per_sm == 0) {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &per_sm, multi_tensor_kernel<Types, Op, Hyper, kParams>, kMultiBlock, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    per_sm = std::max(per_sm, 1);
    if (device < kCached) cache[device].store(per_sm, std::memory_order_relaxed);
  }
  return unsigned(std::min<int64_t>(chunks, int64_t(multiprocessor_count()) * per_sm));
}

// run(OpTag<Op, Types>{}, hyper, lr, step) for optim_dispatch (optim.h): checks the lists,
// counts the step on the device in capturable mode, then launches as many tables as the
// tensors fill (the 32 KB table when the 4 KB one is too small and the driver takes it).
struct Run : RunArgs {
  Stream stream;

  template <class Op, class Types, class Hyper>
  void operator()(OpTag<Op, Types>, const Hyper& hyper, double lr, double step) const {
    if constexpr (kQuantized<Types> && !Op::kQuantizable) {
      throw not_quantizable(rule);
    } else {
      run<Op, Types>(hyper, lr, step);
    }
  }

  template <class Op, class Types, class Hyper>
  void run(const Hyper& hyper, double lr, double step) const {
    constexpr int L = pointer_lists<Types, Op>();
    static_assert(sizeof(Op) + sizeof(Hyper) + sizeof(double*) + sizeof(StateRounding) <= kOpBytes,
                  "the Op and Hyper must fit beside the tensor table");
    check_tensor_lists(rule, tensors, sizes, L);
    const cudaStream_t s = to_stream(stream);
    if (scalars) {
      count_step_kernel<<<1, 1, 0, s>>>(scalars);
      check_launch(rule);
    }
    const Op host_op = scalars ? Op{} : Op(hyper, lr, step);
    const int64_t used = std::count_if(sizes.begin(), sizes.end(), [](int64_t n) { return n > 0; });
    if (used > TensorTable<L, kSmallParams, kIndexedTable<Types>>::kMax && large_params_supported())
      launch_tables<kLargeParams, Types>(host_op, hyper, s);
    else
      launch_tables<kSmallParams, Types>(host_op, hyper, s);
  }

  template <int kParams, class Types, class Op, class Hyper>
  void launch_tables(const Op& host_op, const Hyper& hyper, cudaStream_t s) const {
    constexpr int L = pointer_lists<Types, Op>();
    using Table = TensorTable<L, kParams, kIndexedTable<Types>>;
    static_assert(sizeof(Table) + kOpBytes <= kParams, "kernel parameters must fit their block");
    const int64_t count = int64_t(sizes.size());
    Table table;
    table.count = 0;
    table.first_chunk[0] = 0;
    auto flush = [&] {
      const int chunks = table.first_chunk[table.count];
      if (chunks == 0) return;
      const unsigned grid = grid_for_chunks<Types, Op, Hyper, kParams>(chunks);
      multi_tensor_kernel<Types, Op, Hyper, kParams><<<grid, kMultiBlock, 0, s>>>(
          table, host_op, hyper, scalars, rounding);
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
      if constexpr (kIndexedTable<Types>) table.index[k] = int(t);
      table.first_chunk[k + 1] = table.first_chunk[k] + int(chunks);
      table.count = k + 1;
    }
    flush();
  }
};

}  // namespace fastnn::cuda
