// Activation functions, computed in fp32 (float16 inputs are widened) and stored as T.
#include "common.cuh"

#define A_RELU 0
#define A_LEAKY 1       // p0 alpha
#define A_SIGMOID 2
#define A_HSIGMOID 3    // p0 alpha, p1 beta
#define A_TANH 4
#define A_ELU 5         // p0 alpha
#define A_SELU 6        // p0 alpha, p1 gamma
#define A_CELU 7        // p0 alpha
#define A_GELU 8        // exact (erf)
#define A_GELU_TANH 9   // tanh approximation
#define A_ERF 10
#define A_SOFTPLUS 11
#define A_SOFTSIGN 12
#define A_HSWISH 13
#define A_MISH 14
#define A_THRELU 15     // p0 alpha
#define A_SILU 16       // x * sigmoid(x) (used by fused graphs)

__device__ __forceinline__ float sigmoidf(float x) {
  // two branches keep exp's argument <= 0: no overflow for large |x|
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

__device__ __forceinline__ float softplusf(float x) {
  // log(1 + e^x) = max(x, 0) + log1p(e^-|x|): exact formula without overflow
  return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

template <int OP> __device__ __forceinline__ float act(float x, float p0, float p1) {
  if constexpr (OP == A_RELU) return x > 0.0f ? x : (x != x ? x : 0.0f);
  else if constexpr (OP == A_LEAKY) return x >= 0.0f ? x : x * p0;
  else if constexpr (OP == A_SIGMOID) return sigmoidf(x);
  else if constexpr (OP == A_HSIGMOID) return fmaxf(0.0f, fminf(1.0f, p0 * x + p1));
  else if constexpr (OP == A_TANH) return tanhf(x);
  else if constexpr (OP == A_ELU) return x >= 0.0f ? x : p0 * (expf(x) - 1.0f);
  else if constexpr (OP == A_SELU) return x > 0.0f ? p1 * x : p1 * p0 * (expf(x) - 1.0f);
  else if constexpr (OP == A_CELU) return fmaxf(0.0f, x) + fminf(0.0f, p0 * (expf(x / p0) - 1.0f));
  else if constexpr (OP == A_GELU) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  else if constexpr (OP == A_GELU_TANH) {
    const float k = 0.79788456080286536f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
  } else if constexpr (OP == A_ERF) return erff(x);
  else if constexpr (OP == A_SOFTPLUS) return softplusf(x);
  else if constexpr (OP == A_SOFTSIGN) return x / (1.0f + fabsf(x));
  else if constexpr (OP == A_HSWISH) return x * fmaxf(0.0f, fminf(1.0f, x * (1.0f / 6.0f) + 0.5f));
  else if constexpr (OP == A_MISH) return x * tanhf(softplusf(x));
  else if constexpr (OP == A_THRELU) return x > p0 ? x : 0.0f;
  else {
    static_assert(OP == A_SILU, "unknown activation");
    return x * sigmoidf(x);
  }
}

// y = act(x); operands 0,1 of s are x and y (x may be any strided view; y may be x).
template <int OP, typename T>
__global__ void act_k(const T* x, T* y, i64 n, float p0, float p1, Strided s) {
  EP_LOOP(i, n) {
    i64 off[2];
    strided_offsets<2>(s, i, off);
    y[off[1]] = cvt<T>(act<OP>(cvt<float>(x[off[0]]), p0, p1));
  }
}

// PRelu: y = x < 0 ? x * slope : x, slope broadcast to x (operands: x, slope, y).
template <typename T>
__global__ void prelu_k(const T* __restrict__ x, const T* __restrict__ slope, T* __restrict__ y,
                        i64 n, Strided s) {
  EP_LOOP(i, n) {
    i64 off[3];
    strided_offsets<3>(s, i, off);
    const float v = cvt<float>(x[off[0]]);
    y[off[2]] = cvt<T>(v < 0.0f ? v * cvt<float>(slope[off[1]]) : v);
  }
}
