// fastnn._C: the only pybind11 file.
//
// Every function takes what fastnn's Python layer has already validated: a dtype name
// ("float32" or "float64"), raw pointers as Python ints, sizes, scalars and, on the GPU, a
// stream pointer last. Nothing here checks shapes; the Python caller owns that
// (fastnn/_backend.py). Every kernel call releases the GIL.
//
// Submodules: `cpu` always; `cuda` when the module was built with the CUDA kernels
// (`cuda_compiled`). One section per kernel family, CPU and CUDA side by side.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>

#include "activations.h"
#include "batchnorm.h"
#include "cpu/bf16.h"
#include "dropout.h"
#include "dense.h"
#include "losses.h"
#include "optim.h"
#include "runtime.h"

namespace py = pybind11;
using namespace fastnn;

namespace {

// How a C++ kernel parameter crosses from Python: pointers (and the stream) as integers,
// float scalars as Python floats, the activation enum as an int, everything else unchanged.
template <class A>
struct PyArg {
  using type = A;
  static A from(type a) { return a; }
};
template <class T>
struct PyArg<T*> {
  using type = uintptr_t;
  static T* from(type a) { return reinterpret_cast<T*>(a); }
};
template <>
struct PyArg<float> {
  using type = double;
  static float from(type a) { return float(a); }
};
template <>
struct PyArg<Activation> {
  using type = int;
  static Activation from(type a) { return Activation(a); }
};

// Binds the float and double instantiations of one kernel as a single Python function whose
// first argument is the dtype name. Both instantiations have the same Python signature.
template <class... AF, class... AD, class... Extra>
void def_kernel(py::module_& m, const char* name, void (*f32)(AF...), void (*f64)(AD...),
                const char* doc, const Extra&... extra) {
  static_assert((std::is_same_v<typename PyArg<AF>::type, typename PyArg<AD>::type> && ...));
  m.def(
      name,
      [f32, f64, name](const std::string& dtype, typename PyArg<AF>::type... args) {
        if (dtype == "float32") {
          f32(PyArg<AF>::from(args)...);
        } else if (dtype == "float64") {
          f64(PyArg<AD>::from(args)...);
        } else {
          throw py::type_error(std::string("fastnn._C ") + name +
                               ": dtype must be 'float32' or 'float64', got '" + dtype + "'");
        }
      },
      py::call_guard<py::gil_scoped_release>(), doc, py::arg("dtype"), extra...);
}

#define FASTNN_DEF(module, ns, fn, doc, ...) \
  def_kernel(module, #fn, &ns::fn<float>, &ns::fn<double>, doc, __VA_ARGS__)

// ---- runtime -------------------------------------------------------------------------------

void bind_runtime(py::module_& m, py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  m.attr("version") = FASTNN_VERSION;
#ifdef FASTNN_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  cpu_m.def("simd_level", &cpu::simd_level, "Instruction set the CPU kernels were built for.");
  cpu_m.def("omp_threads", &cpu::omp_threads, "OpenMP threads a parallel CPU kernel uses.");
  cpu_m.def("set_omp_threads", &cpu::set_omp_threads, py::arg("n"),
            "Set the number of OpenMP threads (n > 0).");
  cpu_m.def(
      "stream_triad",
      [](uintptr_t a, uintptr_t b, uintptr_t c, double s, int64_t n) {
        cpu::stream_triad(reinterpret_cast<double*>(a), reinterpret_cast<const double*>(b),
                          reinterpret_cast<const double*>(c), s, n);
      },
      py::call_guard<py::gil_scoped_release>(),
      "a = b + s c over n float64s on every OpenMP thread (STREAM's triad).", py::arg("a"),
      py::arg("b"), py::arg("c"), py::arg("s"), py::arg("n"));
#ifdef FASTNN_WITH_CUDA
  cuda_m->def("device_count", &cuda::device_count, "Visible CUDA devices (0 without a driver).");
  cuda_m->def("device_count_error", &cuda::device_count_error,
              "Why cudaGetDeviceCount failed: the CUDA error's name, '' when it succeeded.");
  cuda_m->def("runtime_version", &cuda::runtime_version, "CUDA runtime version built against.");
  cuda_m->def("driver_version", &cuda::driver_version, "Installed driver's CUDA version, or 0.");
  cuda_m->def("cublaslt_version", &cuda::cublaslt_version, "cublasLtGetVersion().");
  cuda_m->def("device_name", &cuda::device_name, py::arg("device"));
  cuda_m->def("device_capability", &cuda::device_capability, py::arg("device"),
              "Compute capability as major * 10 + minor.");
  cuda_m->def("get_device", &cuda::get_device, "The calling thread's current CUDA device.");
  cuda_m->def("set_device", &cuda::set_device, py::arg("device"));
  cuda_m->def("pointer_device", &cuda::pointer_device, py::arg("ptr"),
              "The device owning a device pointer (ValueError for host memory).");
  cuda_m->def("stream_id", &cuda::stream_id, py::arg("stream"),
              "cudaStreamGetId: an id no other stream of the process has or will have (the calling "
              "thread's own for the per-thread default stream).");
  cuda_m->def("stream_capturing", &cuda::stream_capturing, py::arg("stream"),
              "Whether the stream is being captured into a CUDA graph.");
  cuda_m->def("lt_workspace_count", &cuda::lt_workspace_count,
              "cuBLASLt workspaces on the current device: (lent to streams, 8 at most unless "
              "captures released theirs to them; pinned by captured CUDA graphs).");
  cuda_m->def("lt_release_capture", &cuda::lt_release_capture, py::arg("stream"),
              "Unpin the cuBLASLt workspace that captures on `stream` pinned (no graph captured "
              "there replays any more), for other streams to take over after the stream's work.");
#endif
}

// ---- codes ---------------------------------------------------------------------------------
// The enums whose values Python passes as ints. fastnn/functional reads the codes from here
// (its name lists must match: tests/test_codes.py), so the numbering is written only in C++.

void bind_codes(py::module_& m) {
  py::enum_<Activation>(m, "Activation", "Activation codes (csrc/activation_math.h).")
      .value("identity", Activation::identity)
      .value("relu", Activation::relu)
      .value("leaky_relu", Activation::leaky_relu)
      .value("sigmoid", Activation::sigmoid)
      .value("tanh", Activation::tanh)
      .value("gelu", Activation::gelu)
      .value("gelu_tanh", Activation::gelu_tanh);
  py::enum_<cpu::ChainLoss>(m, "ChainLoss", "The losses a fused chain step ends in (dense.h).")
      .value("softmax_cross_entropy", cpu::ChainLoss::softmax_cross_entropy)
      .value("hinge", cpu::ChainLoss::hinge)
      .value("bce_with_logits", cpu::ChainLoss::bce_with_logits)
      .value("mse", cpu::ChainLoss::mse)
      .value("l1", cpu::ChainLoss::l1);
}

// ---- activations ---------------------------------------------------------------------------

void bind_activations(py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  FASTNN_DEF(cpu_m, cpu, activation_forward, "y[i] = act(x[i]) (=), y may be x.",
             py::arg("act"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("alpha"));
  FASTNN_DEF(cpu_m, cpu, activation_backward,
             "dx[i] = dy[i] act'(.) (=); saved is y for sigmoid and tanh, x otherwise.",
             py::arg("act"), py::arg("dy"), py::arg("saved"), py::arg("dx"), py::arg("n"),
             py::arg("alpha"));
  FASTNN_DEF(cpu_m, cpu, prelu_forward,
             "y = x > 0 ? x : alpha[c] x, x viewed as (outer, channels, inner).", py::arg("x"),
             py::arg("alpha"), py::arg("y"), py::arg("outer"), py::arg("channels"),
             py::arg("inner"));
  FASTNN_DEF(cpu_m, cpu, prelu_backward,
             "dx = dy (x > 0 ? 1 : alpha[c]) (=); dalpha[c] += sum of dy x over x <= 0.",
             py::arg("dy"), py::arg("x"), py::arg("alpha"), py::arg("dx"), py::arg("dalpha"),
             py::arg("outer"), py::arg("channels"), py::arg("inner"));
  FASTNN_DEF(cpu_m, cpu, softmax_forward, "Row-wise softmax (or log-softmax), (rows, cols).",
             py::arg("x"), py::arg("y"), py::arg("rows"), py::arg("cols"), py::arg("log"));
  FASTNN_DEF(cpu_m, cpu, softmax_backward, "Gradient of the row-wise softmax from its output.",
             py::arg("dy"), py::arg("y"), py::arg("dx"), py::arg("rows"), py::arg("cols"),
             py::arg("log"));
#ifdef FASTNN_WITH_CUDA
  FASTNN_DEF(*cuda_m, cuda, activation_forward, "y[i] = act(x[i]) on `stream` (=).",
             py::arg("act"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("alpha"),
             py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, activation_backward, "dx[i] = dy[i] act'(.) on `stream` (=).",
             py::arg("act"), py::arg("dy"), py::arg("saved"), py::arg("dx"), py::arg("n"),
             py::arg("alpha"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, prelu_forward, "PReLU forward on `stream`.", py::arg("x"),
             py::arg("alpha"), py::arg("y"), py::arg("outer"), py::arg("channels"),
             py::arg("inner"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, prelu_backward, "PReLU backward on `stream` (dx =, dalpha +=).",
             py::arg("dy"), py::arg("x"), py::arg("alpha"), py::arg("dx"), py::arg("dalpha"),
             py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, softmax_forward, "Row-wise softmax (or log-softmax) on `stream`.",
             py::arg("x"), py::arg("y"), py::arg("rows"), py::arg("cols"), py::arg("log"),
             py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, softmax_backward, "Softmax gradient on `stream`.", py::arg("dy"),
             py::arg("y"), py::arg("dx"), py::arg("rows"), py::arg("cols"), py::arg("log"),
             py::arg("stream"));
#endif
}

// ---- batch norm ----------------------------------------------------------------------------

void bind_batchnorm(py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  FASTNN_DEF(cpu_m, cpu, batchnorm_forward,
             "Batch norm of x (n, c): y (=), saved mean and invstd (=), running stats updated in "
             "training (skipped when their pointers are 0).",
             py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"),
             py::arg("running_var"), py::arg("y"), py::arg("saved_mean"),
             py::arg("saved_invstd"), py::arg("n"), py::arg("c"), py::arg("training"),
             py::arg("momentum"), py::arg("eps"), py::arg("relu"));
  FASTNN_DEF(cpu_m, cpu, batchnorm_backward,
             "Batch norm backward: dx (=), dgamma and dbeta (+=); y is read only when relu.",
             py::arg("dy"), py::arg("x"), py::arg("gamma"), py::arg("saved_mean"),
             py::arg("saved_invstd"), py::arg("y"), py::arg("dx"), py::arg("dgamma"),
             py::arg("dbeta"), py::arg("n"), py::arg("c"), py::arg("training"), py::arg("relu"));
#ifdef FASTNN_WITH_CUDA
  cuda_m->def("batchnorm_workspace_size", &cuda::batchnorm_workspace_size, py::arg("n"),
              py::arg("c"), "Doubles of workspace the CUDA batch norm kernels need for (n, c).");
  FASTNN_DEF(*cuda_m, cuda, batchnorm_forward, "Batch norm forward on `stream`.", py::arg("x"),
             py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
             py::arg("y"), py::arg("saved_mean"), py::arg("saved_invstd"), py::arg("n"),
             py::arg("c"), py::arg("training"), py::arg("momentum"), py::arg("eps"),
             py::arg("relu"), py::arg("workspace"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, batchnorm_backward,
             "Batch norm backward on `stream` (dx =, dgamma and dbeta +=).", py::arg("dy"),
             py::arg("x"), py::arg("gamma"), py::arg("saved_mean"), py::arg("saved_invstd"),
             py::arg("y"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"), py::arg("n"),
             py::arg("c"), py::arg("training"), py::arg("relu"), py::arg("workspace"),
             py::arg("stream"));
#endif
}

// ---- dropout -------------------------------------------------------------------------------

// The mask and counter kernels work on bytes and words, not floats: bound by hand, with the
// dtype-name first argument that fastnn._backend.launch passes, which must be `dtype`.
template <class... Args, class... Extra>
void def_fixed_dtype(py::module_& m, const char* name, const char* dtype, void (*f)(Args...),
                     const char* doc, const Extra&... extra) {
  m.def(
      name,
      [f, name, dtype](const std::string& given, typename PyArg<Args>::type... args) {
        if (given != dtype)
          throw py::type_error(std::string("fastnn._C ") + name + ": the array must be " + dtype +
                               ", got '" + given + "'");
        f(PyArg<Args>::from(args)...);
      },
      py::call_guard<py::gil_scoped_release>(), doc, py::arg("dtype"), extra...);
}

void bind_dropout(py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  FASTNN_DEF(cpu_m, cpu, dropout_forward,
             "y = x * (word(seed, counter, i) >= threshold ? scale : 0) (=), y may be x; the "
             "counter is read from counter_at when it is not 0.",
             py::arg("x"), py::arg("y"), py::arg("n"), py::arg("threshold"), py::arg("scale"),
             py::arg("seed"), py::arg("counter"), py::arg("counter_at"));
  FASTNN_DEF(cpu_m, cpu, dropout_backward, "dx = dy * (the same mask) * scale (=).",
             py::arg("dy"), py::arg("dx"), py::arg("n"), py::arg("threshold"), py::arg("scale"),
             py::arg("seed"), py::arg("counter"), py::arg("counter_at"));
  def_fixed_dtype(cpu_m, "dropout_mask", "bool", &cpu::dropout_mask,
                  "mask[i] = word(seed, counter, i) >= threshold, one byte per element (=).",
                  py::arg("mask"), py::arg("n"), py::arg("threshold"), py::arg("seed"),
                  py::arg("counter"));
  def_fixed_dtype(cpu_m, "dropout_next_counter", "uint64", &cpu::dropout_next_counter,
                  "counters[1] = counters[0]; counters[0] += 1 (two uint64 words).",
                  py::arg("counters"));
#ifdef FASTNN_WITH_CUDA
  FASTNN_DEF(*cuda_m, cuda, dropout_forward, "Dropout forward on `stream`, mask drawn in-kernel.",
             py::arg("x"), py::arg("y"), py::arg("n"), py::arg("threshold"), py::arg("scale"),
             py::arg("seed"), py::arg("counter"), py::arg("counter_at"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, dropout_backward, "Dropout backward on `stream`.", py::arg("dy"),
             py::arg("dx"), py::arg("n"), py::arg("threshold"), py::arg("scale"),
             py::arg("seed"), py::arg("counter"), py::arg("counter_at"), py::arg("stream"));
  def_fixed_dtype(*cuda_m, "dropout_mask", "bool", &cuda::dropout_mask,
                  "The dropout mask on `stream`.", py::arg("mask"), py::arg("n"),
                  py::arg("threshold"), py::arg("seed"), py::arg("counter"), py::arg("stream"));
  def_fixed_dtype(*cuda_m, "dropout_next_counter", "uint64", &cuda::dropout_next_counter,
                  "counters[1] = counters[0]; counters[0] += 1, one thread on `stream`.",
                  py::arg("counters"), py::arg("stream"));
#endif
}

// ---- dense ---------------------------------------------------------------------------------

void bind_dense(py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  FASTNN_DEF(cpu_m, cpu, bias_activation_forward,
             "p = z + bias (bias may be 0), aux = p (when aux != 0), y = act(p), y16 = bf16(y) "
             "(when y16 != 0; float32 only); (rows, cols). z may be y or aux.",
             py::arg("act"), py::arg("z"), py::arg("bias"), py::arg("y"), py::arg("aux"),
             py::arg("y16"), py::arg("rows"), py::arg("cols"), py::arg("alpha"));
  FASTNN_DEF(cpu_m, cpu, bias_activation_backward,
             "dz = dy act'(saved) (=, skipped when dz == 0; in bf16 into dz16 instead when dz16 "
             "!= 0, float32 only), db += column sums of dz (skipped when db == 0); (rows, cols).",
             py::arg("act"), py::arg("dy"), py::arg("saved"), py::arg("dz"), py::arg("dz16"),
             py::arg("db"), py::arg("rows"), py::arg("cols"), py::arg("alpha"));
  cpu_m.def("set_bf16_gemm", &cpu::set_bf16_gemm, py::arg("gemm"),
            "Address of oneDNN's dnnl_gemm_bf16bf16f32, for the medium-precision GEMMs (0: none).");
  cpu_m.def("bf16_gemm_available", &cpu::bf16_gemm_available,
            "Whether set_bf16_gemm gave the medium-precision GEMMs oneDNN.");
  cpu_m.def("bf16_gemm_calls", &cpu::bf16_gemm_calls,
            "bf16 GEMMs run since the process started (the path taken, for tests).");
  cpu_m.def("cpu_has_avx512_bf16", &cpu::cpu_has_avx512_bf16,
            "Whether this CPU has the AVX512_BF16 instructions.");
  cpu_m.def(
      "gemm_bf16",
      [](bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, uintptr_t a,
         int64_t lda, uintptr_t b, int64_t ldb, double beta, uintptr_t c, int64_t ldc) {
        cpu::gemm_bf16_checked(trans_a, trans_b, m, n, k, float(alpha),
                               reinterpret_cast<const uint16_t*>(a), lda,
                               reinterpret_cast<const uint16_t*>(b), ldb, float(beta),
                               reinterpret_cast<float*>(c), ldc);
      },
      py::call_guard<py::gil_scoped_release>(),
      "Row-major c (m, n) = alpha op(a) op(b) + beta c, a and b bf16 (uint16), c float32, "
      "through oneDNN on OpenMP's threads.",
      py::arg("trans_a"), py::arg("trans_b"), py::arg("m"), py::arg("n"), py::arg("k"),
      py::arg("alpha"), py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"),
      py::arg("beta"), py::arg("c"), py::arg("ldc"));
  cpu_m.def(
      "to_bf16",
      [](uintptr_t x, uintptr_t out, int64_t n) {
        cpu::to_bf16_array(reinterpret_cast<const float*>(x), reinterpret_cast<uint16_t*>(out),
                           n);
      },
      py::call_guard<py::gil_scoped_release>(),
      "out[i] = x[i] (float32) rounded to the nearest bf16 (uint16), ties to even.",
      py::arg("x"), py::arg("out"), py::arg("n"));
  cpu_m.def("set_blas", &cpu::set_blas, py::arg("sgemm"), py::arg("dgemm"), py::arg("ilp64"),
            py::arg("set_threads"), py::arg("get_threads"),
            "Addresses of NumPy's cblas_sgemm/cblas_dgemm and OpenBLAS's thread-count setter and "
            "getter, for the dense chain (all 0: none).");
  cpu_m.def("blas_available", &cpu::blas_available, "Whether set_blas gave the chain a BLAS.");
  cpu_m.def("chain_block_rows", &cpu::chain_block_rows, py::arg("widest"), py::arg("itemsize"),
            "Rows per block the dense chain uses when block_rows is 0.");
  // One layer list for both chain kernels: parallel lists, pointers as ints (0: none).
  using Ptrs = std::vector<uintptr_t>;
  auto chain_call = [](const std::string& dtype, const char* name, auto&& call) {
    if (dtype == "float32") {
      call(float{});
    } else if (dtype == "float64") {
      call(double{});
    } else {
      throw py::type_error(std::string("fastnn._C ") + name +
                           ": dtype must be 'float32' or 'float64', got '" + dtype + "'");
    }
  };
  auto chain_layers = [](auto zero, const Ptrs& W, const Ptrs& b, const std::vector<int>& acts,
                         const std::vector<double>& alphas, const Ptrs& y, const Ptrs& aux,
                         const Ptrs& dW, const Ptrs& db, const std::vector<int64_t>& widths) {
    using T = decltype(zero);
    const size_t count = W.size();
    if (b.size() != count || acts.size() != count || alphas.size() != count ||
        y.size() != count || aux.size() != count || dW.size() != count ||
        db.size() != count || widths.size() != count + 1) {
      throw py::value_error("fastnn._C dense chain: the layer lists have different lengths");
    }
    std::vector<cpu::ChainLayer<T>> layers(count);
    for (size_t i = 0; i < count; ++i) {
      layers[i] = {reinterpret_cast<const T*>(W[i]), reinterpret_cast<const T*>(b[i]),
                   Activation(acts[i]),              T(alphas[i]),
                   reinterpret_cast<T*>(y[i]),       reinterpret_cast<T*>(aux[i]),
                   reinterpret_cast<T*>(dW[i]),      reinterpret_cast<T*>(db[i]),
                   widths[i],                        widths[i + 1]};
    }
    return layers;
  };
  cpu_m.def(
      "dense_chain_forward",
      [=](const std::string& dtype, uintptr_t x, int64_t n, const Ptrs& W, const Ptrs& b,
          const std::vector<int>& acts, const std::vector<double>& alphas, const Ptrs& y,
          const Ptrs& aux, const std::vector<int64_t>& widths, int64_t block_rows, bool bf16) {
        chain_call(dtype, "dense_chain_forward", [&](auto zero) {
          using T = decltype(zero);
          const Ptrs none(W.size(), 0);
          const auto layers = chain_layers(zero, W, b, acts, alphas, y, aux, none, none, widths);
          py::gil_scoped_release release;
          cpu::dense_chain_forward<T>(reinterpret_cast<const T*>(x), n, layers, block_rows, bf16);
        });
      },
      "Layer i: y_i = act_i(y_{i-1} W_i + b_i) (=), aux_i = the pre-activation (=) where "
      "given; y_{-1} = x (n, widths[0]). Row blocks of block_rows (0: chain_block_rows). bf16: "
      "GEMMs on bf16 operands, float32 sums (float32 only).",
      py::arg("dtype"), py::arg("x"), py::arg("n"), py::arg("W"), py::arg("b"), py::arg("acts"),
      py::arg("alphas"), py::arg("y"), py::arg("aux"), py::arg("widths"),
      py::arg("block_rows"), py::arg("bf16"));
  cpu_m.def(
      "dense_chain_backward",
      [=](const std::string& dtype, uintptr_t dy, uintptr_t x, int64_t n, const Ptrs& W,
          const std::vector<int>& acts, const std::vector<double>& alphas, const Ptrs& y,
          const Ptrs& aux, const Ptrs& dW, const Ptrs& db, uintptr_t dx,
          const std::vector<int64_t>& widths, int64_t block_rows, bool bf16) {
        chain_call(dtype, "dense_chain_backward", [&](auto zero) {
          using T = decltype(zero);
          const Ptrs none(W.size(), 0);
          const auto layers = chain_layers(zero, W, none, acts, alphas, y, aux, dW, db, widths);
          py::gil_scoped_release release;
          cpu::dense_chain_backward<T>(reinterpret_cast<const T*>(dy),
                                       reinterpret_cast<const T*>(x), n, layers,
                                       reinterpret_cast<T*>(dx), block_rows, bf16);
        });
      },
      "From dy = dL/d(last y): dW_i += y_{i-1}^T dz_i, db_i += sum_rows dz_i (db_i 0: no "
      "bias), dx = dz_0 W_0^T (=) unless dx is 0. bf16 as for dense_chain_forward.",
      py::arg("dtype"), py::arg("dy"), py::arg("x"), py::arg("n"), py::arg("W"), py::arg("acts"),
      py::arg("alphas"), py::arg("y"), py::arg("aux"), py::arg("dW"), py::arg("db"),
      py::arg("dx"), py::arg("widths"), py::arg("block_rows"), py::arg("bf16"));
  cpu_m.def(
      "dense_chain_step",
      [=](const std::string& dtype, uintptr_t x, int64_t n, const Ptrs& W, const Ptrs& b,
          const std::vector<int>& acts, const std::vector<double>& alphas, const Ptrs& dW,
          const Ptrs& db, const std::vector<int64_t>& widths, int loss, uintptr_t labels,
          bool labels64, uintptr_t targets, uintptr_t loss_out, uintptr_t out, uintptr_t dx,
          int64_t block_rows, bool bf16) {
        chain_call(dtype, "dense_chain_step", [&](auto zero) {
          using T = decltype(zero);
          const Ptrs none(W.size(), 0);
          const auto layers = chain_layers(zero, W, b, acts, alphas, none, none, dW, db, widths);
          py::gil_scoped_release release;
          cpu::dense_chain_step<T>(reinterpret_cast<const T*>(x), n, layers,
                                   cpu::ChainLoss(loss), reinterpret_cast<const void*>(labels),
                                   labels64, reinterpret_cast<const T*>(targets),
                                   reinterpret_cast<T*>(loss_out), reinterpret_cast<T*>(out),
                                   reinterpret_cast<T*>(dx), block_rows, bf16);
        });
      },
      "Forward, mean loss (loss code: ChainLoss) and backward of the chain in one pass over "
      "row blocks: loss_out (=), out = last layer's output (=) unless 0, dW/db (+=), dx (=) "
      "unless 0. bf16 as for dense_chain_forward.",
      py::arg("dtype"), py::arg("x"), py::arg("n"), py::arg("W"), py::arg("b"), py::arg("acts"),
      py::arg("alphas"), py::arg("dW"), py::arg("db"), py::arg("widths"), py::arg("loss"),
      py::arg("labels"), py::arg("labels64"), py::arg("targets"), py::arg("loss_out"),
      py::arg("out"), py::arg("dx"), py::arg("block_rows"), py::arg("bf16"));
#ifdef FASTNN_WITH_CUDA
  cuda_m->def("dense_forward_workspace", &cuda::dense_forward_workspace, py::arg("n"),
              py::arg("in_features"), py::arg("out_features"), py::arg("precision"),
              py::arg("itemsize"), "Workspace bytes dense_forward needs.");
  cuda_m->def(
      "dense_backward_workspace",
      [](int act, int64_t n, int64_t in, int64_t out, int precision, size_t itemsize) {
        return cuda::dense_backward_workspace(Activation(act), n, in, out, precision, itemsize);
      },
      py::arg("act"), py::arg("n"), py::arg("in_features"), py::arg("out_features"),
      py::arg("precision"), py::arg("itemsize"), "Workspace bytes dense_backward needs.");
  cuda_m->def("set_epilogues_enabled", &cuda::set_epilogues_enabled, py::arg("enabled"),
              "Use cuBLASLt epilogues where they run (default), or always the plain GEMM and "
              "fused passes (for tests).");
  cuda_m->def("epilogues_enabled", &cuda::epilogues_enabled);
  FASTNN_DEF(*cuda_m, cuda, dense_forward,
             "y = act(x W + b) (=), aux = x W + b (=) when given, through cuBLASLt on `stream`.",
             py::arg("act"), py::arg("x"), py::arg("W"), py::arg("b"), py::arg("y"),
             py::arg("aux"), py::arg("n"), py::arg("in_features"), py::arg("out_features"),
             py::arg("alpha"), py::arg("precision"), py::arg("workspace"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, dense_backward,
             "dz = dy act'(.), dW += x^T dz, db += sum dz, dx = dz W^T (=; times x_act' when "
             "x_act is given, x_db += its column sums) on `stream`.",
             py::arg("act"), py::arg("dy"), py::arg("x"), py::arg("W"), py::arg("saved"),
             py::arg("dW"), py::arg("db"), py::arg("dx"), py::arg("x_act"), py::arg("x_saved"),
             py::arg("x_db"), py::arg("n"), py::arg("in_features"), py::arg("out_features"),
             py::arg("alpha"), py::arg("x_alpha"), py::arg("precision"), py::arg("workspace"),
             py::arg("stream"));
#endif
}

// ---- losses --------------------------------------------------------------------------------

void bind_losses(py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  FASTNN_DEF(cpu_m, cpu, softmax_cross_entropy_forward,
             "Mean softmax cross-entropy (=) and its gradient (=); either output may be 0.",
             py::arg("logits"), py::arg("labels"), py::arg("labels64"), py::arg("loss"),
             py::arg("grad"), py::arg("rows"), py::arg("cols"));
  FASTNN_DEF(cpu_m, cpu, hinge_forward, "Mean multiclass hinge loss (=) and its subgradient (=).",
             py::arg("scores"), py::arg("labels"), py::arg("labels64"), py::arg("loss"),
             py::arg("grad"), py::arg("rows"), py::arg("cols"));
  FASTNN_DEF(cpu_m, cpu, bce_with_logits_forward, "Mean BCE with logits (=) and its gradient (=).",
             py::arg("logits"), py::arg("targets"), py::arg("loss"), py::arg("grad"), py::arg("n"));
  FASTNN_DEF(cpu_m, cpu, mse_forward, "Mean squared error (=) and its gradient (=).",
             py::arg("pred"), py::arg("target"), py::arg("loss"), py::arg("grad"), py::arg("n"));
  FASTNN_DEF(cpu_m, cpu, l1_forward, "Mean absolute error (=) and its subgradient (=).",
             py::arg("pred"), py::arg("target"), py::arg("loss"), py::arg("grad"), py::arg("n"));
#ifdef FASTNN_WITH_CUDA
  cuda_m->def("loss_workspace_bytes", &cuda::loss_workspace_bytes,
              "Workspace bytes every CUDA loss kernel needs.");
  FASTNN_DEF(*cuda_m, cuda, softmax_cross_entropy_forward,
             "Softmax cross-entropy on `stream`; status = first row with a bad label, or -1.",
             py::arg("logits"), py::arg("labels"), py::arg("labels64"), py::arg("loss"),
             py::arg("grad"), py::arg("rows"), py::arg("cols"), py::arg("status"),
             py::arg("workspace"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, hinge_forward,
             "Multiclass hinge loss on `stream`; status = first row with a bad label, or -1.",
             py::arg("scores"), py::arg("labels"), py::arg("labels64"), py::arg("loss"),
             py::arg("grad"), py::arg("rows"), py::arg("cols"), py::arg("status"),
             py::arg("workspace"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, bce_with_logits_forward, "BCE with logits on `stream`.",
             py::arg("logits"), py::arg("targets"), py::arg("loss"), py::arg("grad"), py::arg("n"),
             py::arg("workspace"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, mse_forward, "Mean squared error on `stream`.", py::arg("pred"),
             py::arg("target"), py::arg("loss"), py::arg("grad"), py::arg("n"),
             py::arg("workspace"), py::arg("stream"));
  FASTNN_DEF(*cuda_m, cuda, l1_forward, "Mean absolute error on `stream`.", py::arg("pred"),
             py::arg("target"), py::arg("loss"), py::arg("grad"), py::arg("n"),
             py::arg("workspace"), py::arg("stream"));
#endif
}

// ---- optim ---------------------------------------------------------------------------------
// One entry point per device for every rule (csrc/optim.h): `dtype` names how the parameters
// and gradients are stored ("float32", "float64", "bfloat16", "float16"), `state_dtype` how the
// state is (the same, "float32", "bfloat16" or "int8"); `tensors` lists the parameters'
// addresses, then the gradients', then each state list's (with int8 state, its codes' then its
// absmaxes'); `hyper` holds the rule's hyperparameters in the order fastnn._C.optim_rules[rule]
// names them; `scalars` is 0, or the address of the float64 [lr, step] array that capturable
// mode reads (and whose step it counts) instead of the lr and step in `hyper`; `rounding` is
// (stochastic, seed, step), bfloat16 state's rounding.

StateRounding state_rounding(const std::tuple<bool, uint64_t, uint64_t>& r) {
  return StateRounding{std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

void bind_optim(py::module_& m, py::module_& cpu_m, [[maybe_unused]] py::module_* cuda_m) {
  py::dict rules;
  for_each_entry(OptimRules{}, [&](auto entry) {
    using Rule = decltype(entry);
    py::list args;
    for (const char* name : Rule::kArgs) args.append(name);
    rules[Rule::kName] = py::tuple(args);
  });
  m.attr("optim_rules") = rules;
  // state_dtype's choices for each parameter dtype, the parameters' own first.
  py::dict states;
  for_each_entry(OptimDtypes{}, [&](auto entry) {
    using Param = decltype(entry);
    py::list names;
    for_each_entry(typename Param::states{}, [&](auto s) { names.append(decltype(s)::kName); });
    states[Param::kName] = py::tuple(names);
  });
  m.attr("optim_state_dtypes") = states;
  m.attr("optim_quant_block") = kQuantBlock;
  // Whether the CPU kernels round a*b+c once where torch's kernels do (csrc/optim_math.h): true
  // when the build targets FMA instructions.
  m.attr("optim_cpu_fma") = bool(FASTNN_OPTIM_FMA);
  cpu_m.def(
      "optim_step",
      [](const std::string& dtype, const std::string& state_dtype, const std::string& rule,
         const TensorPointers& tensors, const TensorSizes& sizes, const Hyperparameters& hyper,
         uintptr_t scalars, const std::tuple<bool, uint64_t, uint64_t>& rounding) {
        cpu::optim_step(dtype, state_dtype, rule, tensors, sizes, hyper,
                        reinterpret_cast<double*>(scalars), state_rounding(rounding));
      },
      py::call_guard<py::gil_scoped_release>(),
      "One step of optimizer `rule` (a key of optim_rules; formulas in csrc/optim.h) over every "
      "tensor of `sizes`, one parallel SIMD pass: parameters and state (=).",
      py::arg("dtype"), py::arg("state_dtype"), py::arg("rule"), py::arg("tensors"),
      py::arg("sizes"), py::arg("hyper"), py::arg("scalars"), py::arg("rounding"));
  cpu_m.def(
      "quantize_state",
      [](const std::string&, bool is_signed, uintptr_t x, uintptr_t codes, uintptr_t absmax,
         int64_t n) {
        cpu::quantize_state(is_signed, reinterpret_cast<const float*>(x),
                            reinterpret_cast<uint8_t*>(codes), reinterpret_cast<float*>(absmax), n);
      },
      py::call_guard<py::gil_scoped_release>(),
      "int8 blocks of float32 x[:n]: codes (one per element) and absmax (one per block) (=).",
      py::arg("dtype"), py::arg("is_signed"), py::arg("x"), py::arg("codes"), py::arg("absmax"),
      py::arg("n"));
  cpu_m.def(
      "dequantize_state",
      [](const std::string&, bool is_signed, uintptr_t codes, uintptr_t absmax, uintptr_t out,
         int64_t n) {
        cpu::dequantize_state(is_signed, reinterpret_cast<const uint8_t*>(codes),
                              reinterpret_cast<const float*>(absmax),
                              reinterpret_cast<float*>(out), n);
      },
      py::call_guard<py::gil_scoped_release>(), "float32 values of int8 blocks (=).",
      py::arg("dtype"), py::arg("is_signed"), py::arg("codes"), py::arg("absmax"), py::arg("out"),
      py::arg("n"));
  cpu_m.def("set_optim_avx512_loops", &cpu::set_optim_avx512_loops,
            "Run the hand-written AVX-512 optimizer loops where compiled in (bfloat16 state "
            "rounded by VCVTNEPS2BF16, Adam's int8 state) or the portable loops (same bits); "
            "returns the previous setting.",
            py::arg("enabled"));
#ifdef FASTNN_WITH_CUDA
  cuda_m->def(
      "optim_step",
      [](const std::string& dtype, const std::string& state_dtype, const std::string& rule,
         const TensorPointers& tensors, const TensorSizes& sizes, const Hyperparameters& hyper,
         uintptr_t scalars, const std::tuple<bool, uint64_t, uint64_t>& rounding,
         uintptr_t stream) {
        cuda::optim_step(dtype, state_dtype, rule, tensors, sizes, hyper,
                         reinterpret_cast<double*>(scalars), state_rounding(rounding),
                         reinterpret_cast<Stream>(stream));
      },
      py::call_guard<py::gil_scoped_release>(),
      "One step of optimizer `rule` on `stream`, multi-tensor launches: parameters and state (=).",
      py::arg("dtype"), py::arg("state_dtype"), py::arg("rule"), py::arg("tensors"),
      py::arg("sizes"), py::arg("hyper"), py::arg("scalars"), py::arg("rounding"),
      py::arg("stream"));
  cuda_m->def(
      "quantize_state",
      [](const std::string&, bool is_signed, uintptr_t x, uintptr_t codes, uintptr_t absmax,
         int64_t n, uintptr_t stream) {
        cuda::quantize_state(is_signed, reinterpret_cast<const float*>(x),
                             reinterpret_cast<uint8_t*>(codes), reinterpret_cast<float*>(absmax), n,
                             reinterpret_cast<Stream>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "int8 blocks of float32 x[:n] on `stream` (=).",
      py::arg("dtype"), py::arg("is_signed"), py::arg("x"), py::arg("codes"), py::arg("absmax"),
      py::arg("n"), py::arg("stream"));
  cuda_m->def(
      "dequantize_state",
      [](const std::string&, bool is_signed, uintptr_t codes, uintptr_t absmax, uintptr_t out,
         int64_t n, uintptr_t stream) {
        cuda::dequantize_state(is_signed, reinterpret_cast<const uint8_t*>(codes),
                               reinterpret_cast<const float*>(absmax),
                               reinterpret_cast<float*>(out), n, reinterpret_cast<Stream>(stream));
      },
      py::call_guard<py::gil_scoped_release>(), "float32 values of int8 blocks on `stream` (=).",
      py::arg("dtype"), py::arg("is_signed"), py::arg("codes"), py::arg("absmax"), py::arg("out"),
      py::arg("n"), py::arg("stream"));
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastnn's compiled kernels. Use fastnn.functional; these take raw pointers.";
  py::module_ cpu_m = m.def_submodule("cpu", "Native CPU kernels (OpenMP + SIMD).");
  py::module_* cuda_m = nullptr;
#ifdef FASTNN_WITH_CUDA
  py::module_ cuda_sub = m.def_submodule("cuda", "CUDA kernels (cuBLASLt for GEMMs).");
  cuda_m = &cuda_sub;
#endif
  bind_runtime(m, cpu_m, cuda_m);
  bind_codes(m);
  bind_activations(cpu_m, cuda_m);
  bind_batchnorm(cpu_m, cuda_m);
  bind_dropout(cpu_m, cuda_m);
  bind_dense(cpu_m, cuda_m);
  bind_losses(cpu_m, cuda_m);
  bind_optim(m, cpu_m, cuda_m);
}
