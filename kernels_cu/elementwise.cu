// Element-wise kernels: unary, binary and ternary ops with full N-d broadcasting through the
// Strided struct (the host collapses dimensions first), plus Cast. One thread per output element
// in a grid-stride loop; math in the accumulation type (fp32 for float16).
#include "common.cuh"

#include "ew_ops.cuh"

// y = a OP b; operands 0,1,2 of s are a, b, y (y may be strided too, and may be a itself:
// no __restrict__, each element is read and then written by the same thread).
template <int OP, typename TA, typename TB, typename TO>
__global__ void binary_k(const TA* a, const TB* b, TO* y, i64 n, Strided s) {
  typedef typename AccOf<TA>::type C;
  EP_LOOP(i, n) {
    i64 off[3];
    strided_offsets<3>(s, i, off);
    y[off[2]] = binop<OP, C, TO>(cvt<C>(a[off[0]]), cvt<C>(b[off[1]]));
  }
}

// y = OP(x); operands 0,1 of s are x, y (in place allowed).
template <int OP, typename T, typename O>
__global__ void unary_k(const T* x, O* y, i64 n, float p0, float p1, Strided s) {
  typedef typename AccOf<T>::type C;
  EP_LOOP(i, n) {
    i64 off[2];
    strided_offsets<2>(s, i, off);
    y[off[1]] = unop<OP, C, O>(cvt<C>(x[off[0]]), p0, p1);
  }
}

// Cast: y = D(x) with C++ conversion semantics (float->bool is x != 0; NaN -> true).
template <typename S, typename D>
__global__ void cast_k(const S* __restrict__ x, D* __restrict__ y, i64 n, Strided s) {
  EP_LOOP(i, n) {
    i64 off[2];
    strided_offsets<2>(s, i, off);
    y[off[1]] = cvt<D>(x[off[0]]);
  }
}

// Where: y = c ? a : b, moved as raw bits of the element size (works for every dtype).
// Operands 0..3 of s are c, a, b, y.
template <typename T>
__global__ void where_k(const bool* __restrict__ c, const T* __restrict__ a,
                        const T* __restrict__ b, T* __restrict__ y, i64 n, Strided s) {
  EP_LOOP(i, n) {
    i64 off[4];
    strided_offsets<4>(s, i, off);
    y[off[3]] = c[off[0]] ? a[off[1]] : b[off[2]];
  }
}
