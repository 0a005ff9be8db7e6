// Data-movement kernels: strided copy (Transpose/Concat/Split/Slice/Expand/contiguous), tiled 2-D
// transpose, gathers, scatters, Pad, Resize, Tile, Range, CumSum, TopK, NonZero and fill.
// Kernels that only move data are templated on an unsigned storage type of the element size.
#include "common.cuh"

// dst[off1] = src[off0] over the iteration shape of s (operand 0: src, 1: dst).
template <typename T>
__global__ void copy_strided(const T* __restrict__ src, T* __restrict__ dst, i64 n, Strided s) {
  EP_LOOP(i, n) {
    i64 off[2];
    strided_offsets<2>(s, i, off);
    dst[off[1]] = src[off[0]];
  }
}

// (B, R, C) -> (B, C, R) through a 32x33 shared tile (the padding column avoids bank conflicts):
// both the global read and the global write are coalesced. Block (32, 8).
template <typename T>
__global__ void transpose_tiled(const T* __restrict__ x, T* __restrict__ y, i64 B, i64 R, i64 C) {
  __shared__ T tile[32][33];
  const i64 tiles_r = (R + 31) / 32, tiles_c = (C + 31) / 32;
  for (i64 b = blockIdx.z; b < B; b += gridDim.z) {          // uniform loops: barriers are safe
    for (i64 tr = blockIdx.y; tr < tiles_r; tr += gridDim.y) {
      for (i64 tc = blockIdx.x; tc < tiles_c; tc += gridDim.x) {
        const i64 r0 = tr * 32, c0 = tc * 32;
        for (int j = threadIdx.y; j < 32; j += 8) {
          const i64 r = r0 + j, c = c0 + threadIdx.x;
          if (r < R && c < C) tile[j][threadIdx.x] = x[(b * R + r) * C + c];
        }
        __syncthreads();
        for (int j = threadIdx.y; j < 32; j += 8) {
          const i64 c = c0 + j, r = r0 + threadIdx.x;
          if (c < C && r < R) y[(b * C + c) * R + r] = tile[threadIdx.x][j];
        }
        __syncthreads();
      }
    }
  }
}

// y[i] = v
template <typename T>
__global__ void fill_k(T* __restrict__ y, i64 n, T v) {
  EP_LOOP(i, n) y[i] = v;
}

// Pad (and Tile, as wrap padding with begin = 0) on an N-d tensor: output coordinate c maps to
// input coordinate c - begin[d], resolved per mode when it falls outside [0, L).
#define PAD_CONSTANT 0
#define PAD_REFLECT 1
#define PAD_EDGE 2
#define PAD_WRAP 3
struct PadInfo {
  i64 nd;
  i64 oshape[EP_MAXD];
  i64 ishape[EP_MAXD];
  i64 ist[EP_MAXD];     // input element strides
  i64 begin[EP_MAXD];   // leading pad (negative: crop)
};

__device__ __forceinline__ i64 pos_mod(i64 a, i64 m) {
  const i64 r = a % m;
  return r < 0 ? r + m : r;
}

template <typename T>
__global__ void pad_k(const T* __restrict__ x, T* __restrict__ y, i64 n, int mode, T value,
                      PadInfo p) {
  EP_LOOP(i, n) {
    i64 r = i, off = 0;
    bool outside = false;
    for (int d = (int)p.nd - 1; d >= 0; --d) {
      const i64 c = r % p.oshape[d];
      r /= p.oshape[d];
      i64 j = c - p.begin[d];
      const i64 L = p.ishape[d];
      if (j < 0 || j >= L) {
        if (mode == PAD_CONSTANT || L == 0) { outside = true; break; }
        if (mode == PAD_EDGE) j = j < 0 ? 0 : L - 1;
        else if (mode == PAD_WRAP) j = pos_mod(j, L);
        else if (L == 1) j = 0;  // reflect of a single element
        else {                   // reflect: period 2(L-1), mirrored without repeating the edge
          j = pos_mod(j, 2 * (L - 1));
          if (j >= L) j = 2 * (L - 1) - j;
        }
      }
      off += j * p.ist[d];
    }
    y[i] = outside ? value : x[off];
  }
}

// Gather along an axis of contiguous x viewed as (outer, axis_len, inner); y is
// (outer, n_idx, inner). Negative indices count from the end; out-of-range ones give 0.
template <typename T, typename I>
__global__ void gather_k(const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ y,
                         i64 n, i64 inner, i64 axis_len, i64 n_idx) {
  EP_LOOP(i, n) {
    const i64 in = i % inner, t = i / inner;
    const i64 j = t % n_idx, o = t / n_idx;
    i64 k = (i64)idx[j];
    if (k < 0) k += axis_len;
    y[i] = (k >= 0 && k < axis_len) ? x[(o * axis_len + k) * inner + in] : T(0);
  }
}

// Offset in data (strides s.st[0]) of the element addressed by index position i (shape
// s.shape) with its `axis` coordinate replaced by k; -1 when k is out of range.
__device__ __forceinline__ i64 elements_offset(const Strided& s, i64 i, int axis, i64 k,
                                               i64 axis_len) {
  if (k < 0) k += axis_len;
  if (k < 0 || k >= axis_len) return -1;
  i64 off = 0;
  for (int d = (int)s.ndim - 1; d >= 0; --d) {
    const i64 c = i % s.shape[d];
    i /= s.shape[d];
    off += (d == axis ? k : c) * s.st[0][d];
  }
  return off;
}

// GatherElements: y[i] = x[coords(i) with coords[axis] = idx[i]]; idx and y contiguous.
template <typename T, typename I>
__global__ void gather_elements_k(const T* __restrict__ x, const I* __restrict__ idx,
                                  T* __restrict__ y, i64 n, int axis, i64 axis_len, Strided s) {
  EP_LOOP(i, n) {
    const i64 off = elements_offset(s, i, axis, (i64)idx[i], axis_len);
    y[i] = off >= 0 ? x[off] : T(0);
  }
}

// Atomic read-modify-write for scatter reductions, by compare-and-swap on the containing
// 32- or 64-bit word (float16 updates its half of an aligned 32-bit word).
#define RED_NONE 0
#define RED_ADD 1
#define RED_MUL 2
#define RED_MAX 3
#define RED_MIN 4

template <int RED, typename T> __device__ __forceinline__ T red_apply(T a, T b) {
  typedef typename AccOf<T>::type A;
  const A x = to_acc(a), y = to_acc(b);
  if constexpr (RED == RED_ADD) return cvt<T>(x + y);
  else if constexpr (RED == RED_MUL) return cvt<T>(x * y);
  else if constexpr (RED == RED_MAX) return cvt<T>(x > y ? x : y);
  else return cvt<T>(x < y ? x : y);
}

template <typename T, typename U> __device__ __forceinline__ U bits_of(T v) {
  union { T t; U u; } c;
  c.u = 0;
  c.t = v;
  return c.u;
}
template <typename T, typename U> __device__ __forceinline__ T from_bits(U v) {
  union { T t; U u; } c;
  c.u = v;
  return c.t;
}

template <int RED, typename T> __device__ void atomic_red(T* addr, T v) {
  if constexpr (RED == RED_NONE) {
    *addr = v;
  } else if constexpr (sizeof(T) == 4) {
    unsigned int* a = (unsigned int*)addr;
    unsigned int old = *a, assumed;
    do {
      assumed = old;
      const T nv = red_apply<RED, T>(from_bits<T, unsigned int>(assumed), v);
      old = atomicCAS(a, assumed, bits_of<T, unsigned int>(nv));
    } while (assumed != old);
  } else if constexpr (sizeof(T) == 8) {
    unsigned long long* a = (unsigned long long*)addr;
    unsigned long long old = *a, assumed;
    do {
      assumed = old;
      const T nv = red_apply<RED, T>(from_bits<T, unsigned long long>(assumed), v);
      old = atomicCAS(a, assumed, bits_of<T, unsigned long long>(nv));
    } while (assumed != old);
  } else {
    static_assert(sizeof(T) == 2, "scatter reductions need 2, 4 or 8 byte elements");
    const u64 p = (u64)addr;
    unsigned int* a = (unsigned int*)(p & ~(u64)3);
    const unsigned int shift = (p & 2) ? 16u : 0u;
    unsigned int old = *a, assumed;
    do {
      assumed = old;
      const T cur = from_bits<T, unsigned short>((unsigned short)((assumed >> shift) & 0xffffu));
      const T nv = red_apply<RED, T>(cur, v);
      const unsigned int nb = (unsigned int)bits_of<T, unsigned short>(nv);
      old = atomicCAS(a, assumed, (assumed & ~(0xffffu << shift)) | (nb << shift));
    } while (assumed != old);
  }
}

// ScatterElements on y (already a copy of data): y[coords(i) with axis = idx[i]] (op)= upd[i].
template <int RED, typename T, typename I>
__global__ void scatter_elements_k(T* __restrict__ y, const I* __restrict__ idx,
                                   const T* __restrict__ upd, i64 n, int axis, i64 axis_len,
                                   Strided s) {
  EP_LOOP(i, n) {
    const i64 off = elements_offset(s, i, axis, (i64)idx[i], axis_len);
    if (off >= 0) atomic_red<RED, T>(y + off, upd[i]);
  }
}

// Index tuples of GatherND/ScatterND: k leading dims of (contiguous) data, with their strides.
struct NdInfo {
  i64 k;
  i64 dims[EP_MAXD];
  i64 st[EP_MAXD];
};

__device__ __forceinline__ i64 nd_offset(const i64* __restrict__ tuple, const NdInfo& d) {
  i64 off = 0;
  for (int j = 0; j < (int)d.k; ++j) {
    i64 v = tuple[j];
    if (v < 0) v += d.dims[j];
    if (v < 0 || v >= d.dims[j]) return -1;
    off += v * d.st[j];
  }
  return off;
}

// GatherND: y[t, s] = x[batch(t) * batch_stride + offset(idx[t]) + s] for index tuple t and
// position s inside the gathered slice; per_batch tuples share one batch.
template <typename T>
__global__ void gather_nd_k(const T* __restrict__ x, const i64* __restrict__ idx,
                            T* __restrict__ y, i64 n, i64 slice, i64 per_batch, i64 batch_stride,
                            NdInfo d) {
  EP_LOOP(i, n) {
    const i64 t = i / slice, s = i % slice;
    const i64 off = nd_offset(idx + t * d.k, d);
    y[i] = off >= 0 ? x[(t / per_batch) * batch_stride + off + s] : T(0);
  }
}

// ScatterND on y (already a copy of data): y[offset(idx[t]) + s] (op)= upd[t * slice + s].
template <int RED, typename T>
__global__ void scatter_nd_k(T* __restrict__ y, const i64* __restrict__ idx,
                             const T* __restrict__ upd, i64 n, i64 slice, NdInfo d) {
  EP_LOOP(i, n) {
    const i64 t = i / slice, s = i % slice;
    const i64 off = nd_offset(idx + t * d.k, d);
    if (off >= 0) atomic_red<RED, T>(y + off + s, upd[i]);
  }
}

// Resize along ONE axis of contiguous x viewed as (outer, in_len, inner) -> (outer, out_len,
// inner). N-d resizes apply this per resized axis (nearest, n-linear and n-cubic interpolation
// are separable), with fp32 intermediates.
#define RS_NEAREST 0
#define RS_LINEAR 1
#define RS_CUBIC 2
// coordinate_transformation_mode
#define CT_HALF_PIXEL 0
#define CT_ASYMMETRIC 1
#define CT_ALIGN_CORNERS 2
#define CT_PYTORCH_HALF_PIXEL 3
#define CT_HALF_PIXEL_SYMMETRIC 4
#define CT_TF_HALF_PIXEL_FOR_NN 5
// nearest_mode
#define NM_ROUND_PREFER_FLOOR 0
#define NM_ROUND_PREFER_CEIL 1
#define NM_FLOOR 2
#define NM_CEIL 3
#define NM_SIMPLE 4   // Resize-10 / Upsample: ceil when downscaling, else truncate

struct ResizeAxis {
  float scale;          // output / input scale used by the coordinate transform
  float cubic_a;
  int coord_mode;
  int nearest_mode;
  int exclude_outside;
  int pad_;
};

// "length_resized" of the spec formulas is the fractional in_len * scale (equal to out_len when
// sizes were given), as the ONNX reference and the CPU provider use it.
__device__ __forceinline__ float resize_coord(i64 o, i64 in_len, i64 out_len, const ResizeAxis& a) {
  const float x = (float)o;
  const float length = (float)in_len * a.scale;
  switch (a.coord_mode) {
    case CT_ASYMMETRIC: return x / a.scale;
    case CT_ALIGN_CORNERS: return length > 1.0f ? x * (float)(in_len - 1) / (length - 1.0f) : 0.0f;
    case CT_PYTORCH_HALF_PIXEL: return length > 1.0f ? (x + 0.5f) / a.scale - 0.5f : 0.0f;
    case CT_HALF_PIXEL_SYMMETRIC: {
      const float adj = (float)out_len / length;
      const float center = (float)in_len * 0.5f * (1.0f - adj);
      return center + (x + 0.5f) / a.scale - 0.5f;
    }
    case CT_TF_HALF_PIXEL_FOR_NN: return (x + 0.5f) / a.scale;
    default: return (x + 0.5f) / a.scale - 0.5f;  // half_pixel
  }
}

__device__ __forceinline__ i64 clamp_index(i64 k, i64 n) { return k < 0 ? 0 : (k >= n ? n - 1 : k); }

__device__ __forceinline__ float cubic_weight(float t, float A) {
  // Keys cubic convolution kernel with coefficient A
  t = fabsf(t);
  if (t <= 1.0f) return ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
  if (t < 2.0f) return ((A * t - 5.0f * A) * t + 8.0f * A) * t - 4.0f * A;
  return 0.0f;
}

template <int MODE, typename TI, typename TO>
__global__ void resize_axis_k(const TI* __restrict__ x, TO* __restrict__ y, i64 n, i64 in_len,
                              i64 out_len, i64 inner, ResizeAxis a) {
  EP_LOOP(i, n) {
    const i64 in = i % inner, t = i / inner;
    const i64 o = t % out_len, outer = t / out_len;
    const TI* xl = x + outer * in_len * inner + in;  // element k of this line: xl[k * inner]
    const float c = resize_coord(o, in_len, out_len, a);
    float v;
    if constexpr (MODE == RS_NEAREST) {
      float k;
      switch (a.nearest_mode) {
        case NM_ROUND_PREFER_CEIL: k = floorf(c + 0.5f); break;
        case NM_FLOOR: k = floorf(c); break;
        case NM_CEIL: k = ceilf(c); break;
        case NM_SIMPLE: k = a.scale < 1.0f ? ceilf(c) : truncf(c); break;
        default: k = ceilf(c - 0.5f); break;  // round_prefer_floor
      }
      v = cvt<float>(xl[clamp_index((i64)k, in_len) * inner]);
    } else {
      // taps floor(c)+j, j in [0, 1] (linear) or [-1, 2] (cubic); taps beyond the border are
      // edge-clamped, or dropped with the weights renormalized when exclude_outside is set
      const float f = floorf(c);
      const i64 base = (i64)f;
      const int j0 = MODE == RS_LINEAR ? 0 : -1, j1 = MODE == RS_LINEAR ? 1 : 2;
      float s = 0.0f, wsum = 0.0f;
      for (int j = j0; j <= j1; ++j) {
        const i64 k = base + j;
        const float d = (f + (float)j) - c;
        const float w = MODE == RS_LINEAR ? fmaxf(0.0f, 1.0f - fabsf(d)) : cubic_weight(d, a.cubic_a);
        if (a.exclude_outside && (k < 0 || k >= in_len)) continue;
        s += w * cvt<float>(xl[clamp_index(k, in_len) * inner]);
        wsum += w;
      }
      v = (a.exclude_outside && wsum != 0.0f) ? s / wsum : s;
    }
    y[i] = cvt<TO>(v);
  }
}

// Range: y[i] = start + i * delta, in T's arithmetic.
template <typename T>
__global__ void range_k(T* __restrict__ y, i64 n, T start, T delta) {
  EP_LOOP(i, n) y[i] = start + (T)i * delta;
}

// CumSum along an axis of contiguous x viewed as (outer, L, inner): one thread per line.
template <typename T>
__global__ void cumsum_k(const T* __restrict__ x, T* __restrict__ y, i64 lines, i64 L, i64 inner,
                         int exclusive, int reverse) {
  typedef typename AccOf<T>::type A;
  EP_LOOP(t, lines) {
    const i64 base = (t / inner) * L * inner + (t % inner);
    A acc = A(0);
    for (i64 j = 0; j < L; ++j) {
      const i64 p = base + (reverse ? L - 1 - j : j) * inner;
      const A v = to_acc(x[p]);
      if (exclusive) { y[p] = cvt<T>(acc); acc += v; }
      else { acc += v; y[p] = cvt<T>(acc); }
    }
  }
}

// TopK along an axis of contiguous x viewed as (outer, L, inner). Each thread ranks one element
// by counting the elements that precede it in the output order (value, then lower index first;
// NaN above everything). Ranks are unique, so elements with rank < K land in distinct output
// slots, already sorted. O(L) per element with an early exit once K predecessors are found.
template <typename A> __device__ __forceinline__ bool key_gt(A u, A v) {
  if (u != u) return v == v;   // NaN > any number
  if (v != v) return false;
  return u > v;
}

template <int LARGEST, typename T>
__global__ void topk_k(const T* __restrict__ x, T* __restrict__ vals, i64* __restrict__ idx,
                       i64 n, i64 L, i64 inner, i64 K) {
  typedef typename AccOf<T>::type A;
  EP_LOOP(i, n) {
    const i64 l = i % L, row = i / L;
    const i64 o = row / inner, in = row % inner;
    const i64 base = o * L * inner + in;
    const A v = to_acc(x[base + l * inner]);
    i64 rank = 0;
    for (i64 j = 0; j < L && rank < K; ++j) {
      const A u = to_acc(x[base + j * inner]);
      const bool before = LARGEST ? key_gt(u, v) : key_gt(v, u);
      const bool tie = !key_gt(u, v) && !key_gt(v, u);
      if (before || (tie && j < l)) ++rank;
    }
    if (rank < K) {
      const i64 out = (o * K + rank) * inner + in;
      vals[out] = x[base + l * inner];
      idx[out] = l;
    }
  }
}

// NonZero, pass 1: number of non-zero elements in each chunk of 256 (blockDim must be 256).
template <typename T> __device__ __forceinline__ bool nonzero(T v) { return to_acc(v) != 0; }
template <> __device__ __forceinline__ bool nonzero<bool>(bool v) { return v; }

template <typename T>
__global__ void nonzero_count_k(const T* __restrict__ x, i64 n, i64 chunks, int* __restrict__ counts) {
  for (i64 b = blockIdx.x; b < chunks; b += gridDim.x) {  // uniform per block
    const i64 i = b * 256 + threadIdx.x;
    const int c = __syncthreads_count(i < n && nonzero(x[i]));
    if (threadIdx.x == 0) counts[b] = c;
  }
}

// Pass 2: each chunk writes the coordinates of its non-zeros in order, starting at
// offsets[chunk] (exclusive prefix of pass 1); out is (ndim, nnz). s.shape is x's shape.
template <typename T>
__global__ void nonzero_write_k(const T* __restrict__ x, i64 n, i64 chunks,
                                const i64* __restrict__ offsets, i64* __restrict__ out, i64 nnz,
                                Strided s) {
  __shared__ int warp_counts[8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (i64 b = blockIdx.x; b < chunks; b += gridDim.x) {
    const i64 i = b * 256 + threadIdx.x;
    const bool flag = i < n && nonzero(x[i]);
    const unsigned int mask = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    if (flag) {
      i64 pos = offsets[b] + __popc(mask & ((1u << lane) - 1u));
      for (int w = 0; w < warp; ++w) pos += warp_counts[w];
      i64 r = i;
      for (int d = (int)s.ndim - 1; d >= 0; --d) {
        out[d * nnz + pos] = r % s.shape[d];
        r /= s.shape[d];
      }
    }
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
}
