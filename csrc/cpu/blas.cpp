// NumPy's BLAS through function pointers (see blas.h). CBLAS's enum values are fixed by the
// standard; OpenBLAS's integers are 64-bit in its ILP64 builds (NumPy's wheels ship one) and
// 32-bit otherwise, so each GEMM has two signatures. oneDNN's dnnl_gemm_bf16bf16f32 takes
// 'N'/'T' characters and 64-bit sizes (dnnl_dim_t), row-major, and returns dnnl_status_t
// (0: success).
#include "cpu/blas.h"

#include <atomic>
#include <stdexcept>
#include <type_traits>

#include "cpu/parallel.h"
#include "dense.h"

namespace fastnn::cpu {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

template <class T, class I>
using GemmFn = void (*)(int, int, int, I, I, I, T, const T*, I, const T*, I, T, T*, I);
using Bf16GemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const bf16*, int64_t,
                          const bf16*, int64_t, float, float*, int64_t);
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();

struct Blas {
  void* sgemm = nullptr;
  void* dgemm = nullptr;
  bool ilp64 = false;
  SetThreadsFn set_threads = nullptr;
  GetThreadsFn get_threads = nullptr;
};

Blas g_blas;
std::atomic<Bf16GemmFn> g_bf16_gemm{nullptr};
std::atomic<int64_t> g_bf16_calls{0};
std::mutex g_threads_mutex;
int g_guards = 0;
int g_saved_threads = 1;

template <class T, class I>
void call_gemm(void* fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  reinterpret_cast<GemmFn<T, I>>(fn)(kRowMajor, trans_a ? kTrans : kNoTrans,
                                     trans_b ? kTrans : kNoTrans, I(m), I(n), I(k), alpha, a,
                                     I(lda), b, I(ldb), beta, c, I(ldc));
}

}  // namespace

void set_blas(uintptr_t sgemm, uintptr_t dgemm, bool ilp64, uintptr_t set_threads,
              uintptr_t get_threads) {
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  if (g_guards != 0) throw std::runtime_error("fastnn: set_blas called while a dense chain runs");
  if ((sgemm == 0) != (dgemm == 0) || (set_threads == 0) != (get_threads == 0)) {
    throw std::invalid_argument(
        "fastnn: set_blas needs both GEMMs and both thread functions, or none");
  }
  g_blas = Blas{reinterpret_cast<void*>(sgemm), reinterpret_cast<void*>(dgemm), ilp64,
                reinterpret_cast<SetThreadsFn>(set_threads),
                reinterpret_cast<GetThreadsFn>(get_threads)};
}

bool blas_available() { return g_blas.sgemm != nullptr; }

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  void* fn = std::is_same_v<T, float> ? g_blas.sgemm : g_blas.dgemm;
  if (g_blas.ilp64) {
    call_gemm<T, int64_t>(fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    call_gemm<T, int32_t>(fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

void set_bf16_gemm(uintptr_t gemm) { g_bf16_gemm = reinterpret_cast<Bf16GemmFn>(gemm); }

bool bf16_gemm_available() { return g_bf16_gemm.load() != nullptr; }

int64_t bf16_gemm_calls() { return g_bf16_calls.load(); }

bool cpu_has_avx512_bf16() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float beta, float* c,
               int64_t ldc) {
  const Bf16GemmFn fn = g_bf16_gemm.load();
  if (fn == nullptr) return false;
  g_bf16_calls.fetch_add(1, std::memory_order_relaxed);
  return fn(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c,
            ldc) == 0;
}

void gemm_bf16_checked(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float beta,
                       float* c, int64_t ldc) {
  if (!gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) {
    throw std::runtime_error(bf16_gemm_available()
                                 ? "fastnn: oneDNN's dnnl_gemm_bf16bf16f32 failed"
                                 : "fastnn: bf16 GEMM without oneDNN (set_bf16_gemm)");
  }
}

void to_bf16_array(const float* x, bf16* out, int64_t n) {
  parallel_for(n, int64_t(1) << 15, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) out[i] = to_bf16(x[i]);
  });
}

SingleThreadedBlas::SingleThreadedBlas() {
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  if (g_guards++ == 0 && g_blas.get_threads != nullptr) {
    g_saved_threads = g_blas.get_threads();
    if (g_saved_threads != 1) g_blas.set_threads(1);
  }
}

SingleThreadedBlas::~SingleThreadedBlas() {
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  if (--g_guards == 0 && g_blas.set_threads != nullptr && g_saved_threads != 1) {
    g_blas.set_threads(g_saved_threads);
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace fastnn::cpu
