// Fused optimizers on the GPU. Formulas in optim.h, per-element math in optim_math.h, the
// multi-tensor launcher in multi_tensor.cuh: one launch per table of up to ~70-100 tensors,
// 16-byte vector loads where aligned, math in T (float32 or float64) registers, bias
// corrections on the host (or, in capturable mode, from the device [lr, step] array).
#include "cuda/multi_tensor.cuh"

namespace fastnn::cuda {

template <class T>
void sgd(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double momentum,
         double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step,
         double* scalars, Stream stream) {
  dispatch_sgd<T>(Run{{"sgd", tensors, sizes, lr, 0, scalars}, stream}, momentum, dampening,
                  weight_decay, nesterov, maximize, first_step);
}

template <class T>
void adagrad(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double lr_decay,
             double weight_decay, double eps, int64_t step, bool maximize, double* scalars,
             Stream stream) {
  dispatch_adagrad<T>(Run{{"adagrad", tensors, sizes, lr, double(step), scalars}, stream},
                      lr_decay, weight_decay, eps, maximize);
}

template <class T>
void rmsprop(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double alpha,
             double eps, double weight_decay, double momentum, bool centered, bool maximize,
             double* scalars, Stream stream) {
  dispatch_rmsprop<T>(Run{{"rmsprop", tensors, sizes, lr, 0, scalars}, stream}, alpha, eps,
                      weight_decay, momentum, centered, maximize);
}

template <class T>
void adam(const TensorPointers& tensors, const TensorSizes& sizes, double lr, double beta1,
          double beta2, double eps, double weight_decay, int64_t step, bool amsgrad,
          bool decoupled, bool maximize, double* scalars, Stream stream) {
  dispatch_adam<T>(Run{{"adam", tensors, sizes, lr, double(step), scalars}, stream}, beta1, beta2,
                   eps, weight_decay, amsgrad, decoupled, maximize);
}

template <class T>
void rprop(const TensorPointers& tensors, const TensorSizes& sizes, double etaminus,
           double etaplus, double step_size_min, double step_size_max, bool maximize,
           double* scalars, Stream stream) {
  dispatch_rprop<T>(Run{{"rprop", tensors, sizes, 0, 0, scalars}, stream}, etaminus, etaplus,
                    step_size_min, step_size_max, maximize);
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void sgd<T>(const TensorPointers&, const TensorSizes&, double, double, double,      \
                       double, bool, bool, bool, double*, Stream);                             \
  template void adagrad<T>(const TensorPointers&, const TensorSizes&, double, double, double,  \
                           double, int64_t, bool, double*, Stream);                            \
  template void rmsprop<T>(const TensorPointers&, const TensorSizes&, double, double, double,  \
                           double, double, bool, bool, double*, Stream);                       \
  template void adam<T>(const TensorPointers&, const TensorSizes&, double, double, double,     \
                        double, double, int64_t, bool, bool, bool, double*, Stream);           \
  template void rprop<T>(const TensorPointers&, const TensorSizes&, double, double, double,    \
                         double, bool, double*, Stream);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
