// Reductions over any set of axes: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare
// and ArgMax/ArgMin. The host splits the input dims into kept dims (one output per index) and
// reduced dims, collapses each group, and picks one of two schedules:
//   *_thread_k: one thread per output, serial loop (reduced axes outer: neighbouring threads read
//               neighbouring addresses);
//   *_block_k:  one block per output, strided partial results + warp-shuffle tree (reduced axes
//               innermost and long).
// Accumulation is fp32 for float16/float32 and int64 for integers.
#include "common.cuh"

#define R_SUM 0
#define R_MEAN 1
#define R_MAX 2
#define R_MIN 3
#define R_PROD 4
#define R_L1 5
#define R_L2 6
#define R_LOGSUM 7
#define R_LOGSUMEXP 8
#define R_SUMSQUARE 9

struct RedInfo {
  i64 kd;                   // kept dims (output index space), collapsed
  i64 kshape[EP_MAXD];
  i64 kst[EP_MAXD];         // input element strides of the kept dims
  i64 rd;                   // reduced dims, collapsed
  i64 rshape[EP_MAXD];
  i64 rst[EP_MAXD];
};

__device__ __forceinline__ i64 dims_offset(i64 i, i64 nd, const i64* shape, const i64* st) {
  if (nd == 1) return i * st[0];
  i64 off = 0;
  for (int d = (int)nd - 1; d >= 0; --d) {
    off += (i % shape[d]) * st[d];
    i /= shape[d];
  }
  return off;
}

template <int OP, typename A> __device__ __forceinline__ A r_init() {
  if constexpr (OP == R_MAX || OP == R_LOGSUMEXP) return Lim<A>::lowest();
  else if constexpr (OP == R_MIN) return Lim<A>::highest();
  else if constexpr (OP == R_PROD) return A(1);
  else return A(0);
}

template <int OP, typename A> __device__ __forceinline__ A r_combine(A a, A b) {
  if constexpr (OP == R_MAX) return RMax()(a, b);
  else if constexpr (OP == R_MIN) return RMin()(a, b);
  else if constexpr (OP == R_PROD) return a * b;
  else return a + b;
}

// value fed to the combine; `m` is the row maximum (LogSumExp's second pass only)
template <int OP, typename A> __device__ __forceinline__ A r_map(A v, A m) {
  if constexpr (OP == R_L1) return v < A(0) ? -v : v;
  else if constexpr (OP == R_L2 || OP == R_SUMSQUARE) return v * v;
  else if constexpr (OP == R_LOGSUMEXP) return expf(v - m);
  else return v;
}

template <int OP, typename A> __device__ __forceinline__ A r_final(A acc, i64 n, A m) {
  if constexpr (OP == R_MEAN) return acc / (A)n;
  else if constexpr (OP == R_L2) return sqrtf(acc);
  else if constexpr (OP == R_LOGSUM) return logf(acc);
  else if constexpr (OP == R_LOGSUMEXP) return logf(acc) + m;
  else return acc;
}

// LogSumExp needs the maximum first: pass 1 is a plain R_MAX, pass 2 sums exp(x - max).
// An infinite maximum (all -inf, an +inf, or an empty row) is the answer itself.
template <int OP, typename T>
__global__ void reduce_thread_k(const T* __restrict__ x, T* __restrict__ y, i64 n_out, i64 n_red,
                                RedInfo info) {
  typedef typename AccOf<T>::type A;
  EP_LOOP(o, n_out) {
    const i64 base = dims_offset(o, info.kd, info.kshape, info.kst);
    A m = A(0);
    if constexpr (OP == R_LOGSUMEXP) {
      m = Lim<A>::lowest();
      for (i64 r = 0; r < n_red; ++r)
        m = RMax()(m, to_acc(x[base + dims_offset(r, info.rd, info.rshape, info.rst)]));
      if (m == Lim<A>::lowest() || m == Lim<A>::highest() || m != m) {
        y[o] = cvt<T>(m);
        continue;
      }
    }
    A acc = OP == R_LOGSUMEXP ? A(0) : r_init<OP, A>();
    for (i64 r = 0; r < n_red; ++r) {
      const A v = to_acc(x[base + dims_offset(r, info.rd, info.rshape, info.rst)]);
      acc = r_combine<OP, A>(acc, r_map<OP, A>(v, m));
    }
    y[o] = cvt<T>(r_final<OP, A>(acc, n_red, m));
  }
}

template <int OP, typename T>
__global__ void reduce_block_k(const T* __restrict__ x, T* __restrict__ y, i64 n_out, i64 n_red,
                               RedInfo info) {
  typedef typename AccOf<T>::type A;
  // o is uniform across the block, so every thread reaches the barriers in block_reduce
  for (i64 o = blockIdx.x; o < n_out; o += gridDim.x) {
    const i64 base = dims_offset(o, info.kd, info.kshape, info.kst);
    A m = A(0);
    if constexpr (OP == R_LOGSUMEXP) {
      A part = Lim<A>::lowest();
      for (i64 r = threadIdx.x; r < n_red; r += blockDim.x)
        part = RMax()(part, to_acc(x[base + dims_offset(r, info.rd, info.rshape, info.rst)]));
      m = block_reduce(part, RMax(), Lim<A>::lowest());
      if (m == Lim<A>::lowest() || m == Lim<A>::highest() || m != m) {
        if (threadIdx.x == 0) y[o] = cvt<T>(m);
        continue;  // uniform: m is the same in every thread
      }
    }
    const A init = OP == R_LOGSUMEXP ? A(0) : r_init<OP, A>();
    A acc = init;
    for (i64 r = threadIdx.x; r < n_red; r += blockDim.x) {
      const A v = to_acc(x[base + dims_offset(r, info.rd, info.rshape, info.rst)]);
      acc = r_combine<OP, A>(acc, r_map<OP, A>(v, m));
    }
    if constexpr (OP == R_MAX) acc = block_reduce(acc, RMax(), init);
    else if constexpr (OP == R_MIN) acc = block_reduce(acc, RMin(), init);
    else if constexpr (OP == R_PROD) acc = block_reduce(acc, RProd(), init);
    else acc = block_reduce(acc, RSum(), init);
    if (threadIdx.x == 0) y[o] = cvt<T>(r_final<OP, A>(acc, n_red, m));
  }
}

// ---------------------------------------------------------------- ArgMax / ArgMin
// (value, index) candidates; index < 0 marks "no element". NaN wins (first NaN, like numpy);
// ties keep the lower index unless LAST (select_last_index=1).
template <int IS_MIN, int LAST, typename A>
__device__ __forceinline__ bool arg_better(A v, i64 iv, A b, i64 ib) {
  if (ib < 0) return iv >= 0;
  if (iv < 0) return false;
  const bool vn = v != v, bn = b != b;
  if (bn) return vn && (LAST ? iv > ib : iv < ib);
  if (vn) return true;
  if (IS_MIN ? v < b : v > b) return true;
  if (v == b) return LAST ? iv > ib : iv < ib;
  return false;
}

template <int IS_MIN, int LAST, typename T>
__global__ void arg_thread_k(const T* __restrict__ x, i64* __restrict__ y, i64 n_out, i64 n_red,
                             RedInfo info) {
  typedef typename AccOf<T>::type A;
  EP_LOOP(o, n_out) {
    const i64 base = dims_offset(o, info.kd, info.kshape, info.kst);
    A best = A(0);
    i64 bi = -1;
    for (i64 r = 0; r < n_red; ++r) {
      const A v = to_acc(x[base + r * info.rst[0]]);
      if (arg_better<IS_MIN, LAST, A>(v, r, best, bi)) { best = v; bi = r; }
    }
    y[o] = bi < 0 ? 0 : bi;
  }
}

template <int IS_MIN, int LAST, typename T>
__global__ void arg_block_k(const T* __restrict__ x, i64* __restrict__ y, i64 n_out, i64 n_red,
                            RedInfo info) {
  typedef typename AccOf<T>::type A;
  __shared__ A sv[32];
  __shared__ i64 si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (i64 o = blockIdx.x; o < n_out; o += gridDim.x) {
    const i64 base = dims_offset(o, info.kd, info.kshape, info.kst);
    A best = A(0);
    i64 bi = -1;
    for (i64 r = threadIdx.x; r < n_red; r += blockDim.x) {
      const A v = to_acc(x[base + r * info.rst[0]]);
      if (arg_better<IS_MIN, LAST, A>(v, r, best, bi)) { best = v; bi = r; }
    }
    for (int m = 16; m > 0; m >>= 1) {
      const A ov = __shfl_xor_sync(0xffffffffu, best, m);
      const i64 oi = __shfl_xor_sync(0xffffffffu, bi, m);
      if (arg_better<IS_MIN, LAST, A>(ov, oi, best, bi)) { best = ov; bi = oi; }
    }
    __syncthreads();  // the previous output's readers are done with sv/si
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
      best = lane < nwarps ? sv[lane] : A(0);
      bi = lane < nwarps ? si[lane] : -1;
      for (int m = 16; m > 0; m >>= 1) {
        const A ov = __shfl_xor_sync(0xffffffffu, best, m);
        const i64 oi = __shfl_xor_sync(0xffffffffu, bi, m);
        if (arg_better<IS_MIN, LAST, A>(ov, oi, best, bi)) { best = ov; bi = oi; }
      }
      if (lane == 0) y[o] = bi < 0 ? 0 : bi;
    }
  }
}
