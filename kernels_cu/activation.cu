// Activation functions, computed in fp32 (float16 inputs are widened) and stored as T.
#include "common.cuh"

#include "act.cuh"

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
