// Shared helpers of every kernel file. Inlined by kernels_cu.source() so NVRTC needs no include
// path and CuPy's cache key covers the whole text. No system header is used: the half type is our
// own 16-bit storage struct converted with the PTX cvt instructions (what cuda_fp16.h does too), so
// the sources compile wherever NVRTC runs, with or without the CUDA toolkit headers.

typedef long long i64;
typedef unsigned long long u64;

#define EP_MAXD 10     // most dimensions an N-d strided kernel handles (host collapses dims first)
#define EP_MAXOPS 4    // most operands described by one Strided struct

// Grid-stride loop over [0, n): correct for any grid size and any n (64-bit indices).
#define EP_LOOP(i, n) \
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); \
       i += (i64)blockDim.x * gridDim.x)

// ---------------------------------------------------------------- float16 storage type
struct __align__(2) half_t { unsigned short x; };

#ifndef EP_HOST_EMULATION
__device__ __forceinline__ float h2f(half_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.x));
  return f;
}
__device__ __forceinline__ half_t f2h(float f) {
  half_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.x) : "f"(f));
  return h;
}
__device__ __forceinline__ half_t d2h(double d) {
  half_t h;
  asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h.x) : "d"(d));
  return h;
}
#else  // CPU emulation (ep_cuda.emulator): the compiler's _Float16, also round-to-nearest-even
inline float h2f(half_t h) { _Float16 f; memcpy(&f, &h.x, 2); return (float)f; }
inline half_t f2h(float f) { _Float16 v = (_Float16)f; half_t h; memcpy(&h.x, &v, 2); return h; }
inline half_t d2h(double d) { _Float16 v = (_Float16)d; half_t h; memcpy(&h.x, &v, 2); return h; }
#endif

// ---------------------------------------------------------------- conversions
// cvt<D>(v): value conversion with C++ semantics; anything involving half goes through float.
template <typename D, typename S> struct Cvt {
  static __device__ __forceinline__ D f(S v) { return static_cast<D>(v); }
};
template <typename S> struct Cvt<half_t, S> {
  static __device__ __forceinline__ half_t f(S v) { return f2h(static_cast<float>(v)); }
};
template <typename D> struct Cvt<D, half_t> {
  static __device__ __forceinline__ D f(half_t v) { return static_cast<D>(h2f(v)); }
};
template <> struct Cvt<half_t, half_t> {
  static __device__ __forceinline__ half_t f(half_t v) { return v; }
};
template <> struct Cvt<half_t, double> {
  static __device__ __forceinline__ half_t f(double v) { return d2h(v); }
};
template <typename D, typename S> __device__ __forceinline__ D cvt(S v) { return Cvt<D, S>::f(v); }

// Accumulation type: fp32 for half and float, int64 for integers, double for double.
template <typename T> struct AccOf { typedef T type; };
template <> struct AccOf<half_t> { typedef float type; };
template <> struct AccOf<int> { typedef i64 type; };
template <> struct AccOf<signed char> { typedef i64 type; };
template <> struct AccOf<unsigned char> { typedef i64 type; };
template <> struct AccOf<short> { typedef i64 type; };
template <> struct AccOf<unsigned int> { typedef i64 type; };

template <typename T> __device__ __forceinline__ typename AccOf<T>::type to_acc(T v) {
  return cvt<typename AccOf<T>::type>(v);
}

template <typename T> struct IsFloat { static constexpr bool value = false; };
template <> struct IsFloat<float> { static constexpr bool value = true; };
template <> struct IsFloat<double> { static constexpr bool value = true; };
template <> struct IsFloat<half_t> { static constexpr bool value = true; };

// ---------------------------------------------------------------- limits and float tests
template <typename A> struct Lim;
template <> struct Lim<float> {
  static __device__ __forceinline__ float lowest() { return __int_as_float(0xff800000); }   // -inf
  static __device__ __forceinline__ float highest() { return __int_as_float(0x7f800000); }  // +inf
};
template <> struct Lim<double> {
  static __device__ __forceinline__ double lowest() { return __longlong_as_double(0xfff0000000000000ULL); }
  static __device__ __forceinline__ double highest() { return __longlong_as_double(0x7ff0000000000000ULL); }
};
template <> struct Lim<i64> {
  static __device__ __forceinline__ i64 lowest() { return (-9223372036854775807LL - 1); }
  static __device__ __forceinline__ i64 highest() { return 9223372036854775807LL; }
};
template <> struct Lim<int> {
  static __device__ __forceinline__ int lowest() { return (-2147483647 - 1); }
  static __device__ __forceinline__ int highest() { return 2147483647; }
};

__device__ __forceinline__ float ep_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float ep_nan() { return __int_as_float(0x7fffffff); }
template <typename A> __device__ __forceinline__ bool is_nan(A v) { return v != v; }

// ---------------------------------------------------------------- N-d strided indexing
// Output (or iteration) shape plus the element strides of up to EP_MAXOPS operands in that index
// space; a stride of 0 broadcasts. The host packs it as one int64 blob (see ep_cuda.launch.Strided).
struct Strided {
  i64 ndim;
  i64 shape[EP_MAXD];
  i64 st[EP_MAXOPS][EP_MAXD];
};

// Offsets of operands 0..NOPS-1 for the row-major linear index i of s.shape.
template <int NOPS>
__device__ __forceinline__ void strided_offsets(const Strided& s, i64 i, i64* off) {
#pragma unroll
  for (int k = 0; k < NOPS; ++k) off[k] = 0;
  if (s.ndim == 1) {  // the common collapsed case: no division
#pragma unroll
    for (int k = 0; k < NOPS; ++k) off[k] = i * s.st[k][0];
    return;
  }
  for (int d = (int)s.ndim - 1; d >= 0; --d) {
    const i64 n = s.shape[d];
    const i64 c = i % n;
    i /= n;
#pragma unroll
    for (int k = 0; k < NOPS; ++k) off[k] += c * s.st[k][d];
  }
}

// ---------------------------------------------------------------- reductions within a block
struct RSum { template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; } };
struct RProd { template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a * b; } };
// Max/Min propagate NaN like numpy (a NaN operand wins).
struct RMax { template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return (a > b || a != a) ? a : b; } };
struct RMin { template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return (a < b || a != a) ? a : b; } };

template <typename A, typename Op> __device__ __forceinline__ A warp_reduce(A v, Op op) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Reduce v over the whole block (blockDim.x must be a multiple of 32, at most 1024); every thread
// gets the result. Safe to call repeatedly: the leading barrier protects the scratch slots.
template <typename A, typename Op> __device__ A block_reduce(A v, Op op, A identity) {
  __shared__ A scratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    A w = lane < nwarps ? scratch[lane] : identity;
    w = warp_reduce(w, op);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  return scratch[0];
}
