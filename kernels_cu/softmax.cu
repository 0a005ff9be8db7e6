// Softmax / LogSoftmax / Hardmax along one axis of a contiguous tensor viewed as
// (outer, L, inner). Max-subtracted exponentials, fp32 accumulation.
//   softmax_block_k:  inner == 1, one block per row of L contiguous elements;
//   softmax_thread_k: inner > 1, one thread per (outer, inner) line (coalesced across inner).
#include "common.cuh"

#define S_SOFTMAX 0
#define S_LOGSOFTMAX 1
#define S_HARDMAX 2

template <int MODE, typename T>
__global__ void softmax_block_k(const T* __restrict__ x, T* __restrict__ y, i64 rows, i64 L) {
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform per block: barriers are safe
    const T* xr = x + r * L;
    T* yr = y + r * L;
    float m = Lim<float>::lowest();
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) m = RMax()(m, cvt<float>(xr[j]));
    m = block_reduce(m, RMax(), Lim<float>::lowest());
    if constexpr (MODE == S_HARDMAX) {
      i64 first = L;  // lowest index holding the maximum
      for (i64 j = threadIdx.x; j < L; j += blockDim.x)
        if (cvt<float>(xr[j]) == m && j < first) first = j;
      first = block_reduce(first, RMin(), L);
      for (i64 j = threadIdx.x; j < L; j += blockDim.x) yr[j] = cvt<T>(j == first ? 1.0f : 0.0f);
    } else {
      float s = 0.0f;
      for (i64 j = threadIdx.x; j < L; j += blockDim.x) s += expf(cvt<float>(xr[j]) - m);
      s = block_reduce(s, RSum(), 0.0f);
      if constexpr (MODE == S_SOFTMAX) {
        const float inv = 1.0f / s;
        for (i64 j = threadIdx.x; j < L; j += blockDim.x) yr[j] = cvt<T>(expf(cvt<float>(xr[j]) - m) * inv);
      } else {
        const float ls = logf(s);
        for (i64 j = threadIdx.x; j < L; j += blockDim.x) yr[j] = cvt<T>(cvt<float>(xr[j]) - m - ls);
      }
    }
  }
}

template <int MODE, typename T>
__global__ void softmax_thread_k(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 L,
                                 i64 inner) {
  EP_LOOP(t, outer * inner) {
    const i64 base = (t / inner) * L * inner + (t % inner);
    float m = Lim<float>::lowest();
    for (i64 j = 0; j < L; ++j) m = RMax()(m, cvt<float>(x[base + j * inner]));
    if constexpr (MODE == S_HARDMAX) {
      i64 first = L;
      for (i64 j = 0; j < L && first == L; ++j)
        if (cvt<float>(x[base + j * inner]) == m) first = j;
      for (i64 j = 0; j < L; ++j) y[base + j * inner] = cvt<T>(j == first ? 1.0f : 0.0f);
    } else {
      float s = 0.0f;
      for (i64 j = 0; j < L; ++j) s += expf(cvt<float>(x[base + j * inner]) - m);
      if constexpr (MODE == S_SOFTMAX) {
        const float inv = 1.0f / s;
        for (i64 j = 0; j < L; ++j) y[base + j * inner] = cvt<T>(expf(cvt<float>(x[base + j * inner]) - m) * inv);
      } else {
        const float ls = logf(s);
        for (i64 j = 0; j < L; ++j) y[base + j * inner] = cvt<T>(cvt<float>(x[base + j * inner]) - m - ls);
      }
    }
  }
}
