// Activations: the C++ API the bindings call (pointers, sizes, scalars, a stream).
//
//   activation_forward   y = f(x)                        (=), n elements, any shape
//   activation_backward  dx = dy * f'(.)                 (=), saved = y or x (activation_math.h)
//   prelu_forward        y = x > 0 ? x : alpha[c] x      (=)
//   prelu_backward       dx = dy * (x > 0 ? 1 : alpha[c]) (=), dalpha[c] += sum dy x [x <= 0]
//     x viewed as (outer, channels, inner), alpha has `channels` entries (a shared slope is
//     channels = 1, inner = n).
//   softmax_forward      y = softmax(x) row-wise, or log_softmax when log       (=)
//   softmax_backward     dx = y (dy - <dy, y>), or dy - e^y sum(dy) when log    (=)
//     x viewed as (rows, cols), each row normalised.
#pragma once

#include <cstdint>

#include "activation_math.h"
#include "common.h"

namespace fastnn {

namespace cpu {
template <class T>
void activation_forward(Activation act, const T* x, T* y, int64_t n, T alpha);
template <class T>
void activation_backward(Activation act, const T* dy, const T* saved, T* dx, int64_t n, T alpha);
template <class T>
void prelu_forward(const T* x, const T* alpha, T* y, int64_t outer, int64_t channels,
                   int64_t inner);
template <class T>
void prelu_backward(const T* dy, const T* x, const T* alpha, T* dx, T* dalpha, int64_t outer,
                    int64_t channels, int64_t inner);
template <class T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, bool log);
template <class T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool log);
}  // namespace cpu

namespace cuda {
template <class T>
void activation_forward(Activation act, const T* x, T* y, int64_t n, T alpha, Stream stream);
template <class T>
void activation_backward(Activation act, const T* dy, const T* saved, T* dx, int64_t n, T alpha,
                         Stream stream);
template <class T>
void prelu_forward(const T* x, const T* alpha, T* y, int64_t outer, int64_t channels,
                   int64_t inner, Stream stream);
template <class T>
void prelu_backward(const T* dy, const T* x, const T* alpha, T* dx, T* dalpha, int64_t outer,
                    int64_t channels, int64_t inner, Stream stream);
template <class T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols, bool log, Stream stream);
template <class T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t rows, int64_t cols, bool log,
                      Stream stream);
}  // namespace cuda

}  // namespace fastnn
