// Normalizations. Statistics in fp32 with two passes over the row (mean, then centred variance)
// for accuracy; affine parameters arrive as fp32 arrays (the host casts them once per call).
#include "common.cuh"

// LayerNormalization over rows of L contiguous elements (dims [axis:] flattened).
// scale/bias have L elements (bias may be NULL); mean_out/inv_out (one per row) may be NULL.
template <typename T>
__global__ void layernorm_k(const T* __restrict__ x, const float* __restrict__ scale,
                            const float* __restrict__ bias, T* __restrict__ y,
                            float* __restrict__ mean_out, float* __restrict__ inv_out, i64 rows,
                            i64 L, float eps) {
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform per block
    const T* xr = x + r * L;
    T* yr = y + r * L;
    float s = 0.0f;
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) s += cvt<float>(xr[j]);
    const float mean = block_reduce(s, RSum(), 0.0f) / (float)L;
    float v = 0.0f;
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      const float d = cvt<float>(xr[j]) - mean;
      v += d * d;
    }
    const float inv = 1.0f / sqrtf(block_reduce(v, RSum(), 0.0f) / (float)L + eps);
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      const float o = (cvt<float>(xr[j]) - mean) * inv * scale[j];
      yr[j] = cvt<T>(bias ? o + bias[j] : o);
    }
    if (threadIdx.x == 0) {
      if (mean_out) mean_out[r] = mean;
      if (inv_out) inv_out[r] = inv;
    }
  }
}

// SkipLayerNormalization in one pass over memory: s = x + skip (+ bias), each sum rounded to T as
// the unfused adds would store it, written to sum_out (or, as scratch, to y: every thread reads
// back only the elements it wrote), then LayerNorm of s over rows of L. x, skip contiguous.
template <typename T>
__global__ void skip_layernorm_k(const T* __restrict__ x, const T* __restrict__ skip,
                                 const T* __restrict__ sbias, const float* __restrict__ scale,
                                 const float* __restrict__ bias, T* y, T* sum_out,
                                 float* __restrict__ mean_out, float* __restrict__ inv_out,
                                 i64 rows, i64 L, float eps) {
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * L;
    const T* kr = skip + r * L;
    T* yr = y + r * L;
    T* sr = sum_out ? sum_out + r * L : yr;
    float s = 0.0f;
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      T t = cvt<T>(cvt<float>(xr[j]) + cvt<float>(kr[j]));
      if (sbias) t = cvt<T>(cvt<float>(t) + cvt<float>(sbias[j]));
      sr[j] = t;
      s += cvt<float>(t);
    }
    const float mean = block_reduce(s, RSum(), 0.0f) / (float)L;
    float v = 0.0f;
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      const float d = cvt<float>(sr[j]) - mean;
      v += d * d;
    }
    const float inv = 1.0f / sqrtf(block_reduce(v, RSum(), 0.0f) / (float)L + eps);
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      const float o = (cvt<float>(sr[j]) - mean) * inv * scale[j];
      yr[j] = cvt<T>(bias ? o + bias[j] : o);
    }
    if (threadIdx.x == 0) {
      if (mean_out) mean_out[r] = mean;
      if (inv_out) inv_out[r] = inv;
    }
  }
}

// GroupNormalization / InstanceNormalization on contiguous (N, C, spatial...): row r = (n, g)
// holds cpg = C/G channels of `spatial` elements each (L = cpg * spatial). The affine parameter
// index is the channel (per_channel != 0) or the group.
template <typename T>
__global__ void groupnorm_k(const T* __restrict__ x, const float* __restrict__ scale,
                            const float* __restrict__ bias, T* __restrict__ y, i64 rows, i64 L,
                            i64 G, i64 cpg, i64 spatial, int per_channel, float eps) {
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * L;
    T* yr = y + r * L;
    const i64 g = r % G;
    float s = 0.0f;
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) s += cvt<float>(xr[j]);
    const float mean = block_reduce(s, RSum(), 0.0f) / (float)L;
    float v = 0.0f;
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      const float d = cvt<float>(xr[j]) - mean;
      v += d * d;
    }
    const float inv = 1.0f / sqrtf(block_reduce(v, RSum(), 0.0f) / (float)L + eps);
    for (i64 j = threadIdx.x; j < L; j += blockDim.x) {
      const i64 p = per_channel ? g * cpg + j / spatial : g;
      yr[j] = cvt<T>((cvt<float>(xr[j]) - mean) * inv * scale[p] + bias[p]);
    }
  }
}

// BatchNormalization (inference): y = (x - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c]
// on contiguous (N, C, inner).
template <typename T>
__global__ void batchnorm_k(const T* __restrict__ x, const float* __restrict__ scale,
                            const float* __restrict__ bias, const float* __restrict__ mean,
                            const float* __restrict__ var, T* __restrict__ y, i64 n, i64 C,
                            i64 inner, float eps) {
  EP_LOOP(i, n) {
    const i64 c = (i / inner) % C;
    const float a = scale[c] / sqrtf(var[c] + eps);
    y[i] = cvt<T>((cvt<float>(x[i]) - mean[c]) * a + bias[c]);
  }
}

// LRN across channels of contiguous (N, C, inner):
// y = x / (bias + alpha / size * sum_{c' in window} x[c']^2) ^ beta,
// window = [c - floor((size-1)/2), c + ceil((size-1)/2)] clipped to [0, C).
template <typename T>
__global__ void lrn_k(const T* __restrict__ x, T* __restrict__ y, i64 n, i64 C, i64 inner,
                      i64 size, float alpha, float beta, float bias) {
  EP_LOOP(i, n) {
    const i64 c = (i / inner) % C;
    const i64 base = i - c * inner;
    const i64 lo = c - (size - 1) / 2 < 0 ? 0 : c - (size - 1) / 2;
    const i64 hi = c + size / 2 > C - 1 ? C - 1 : c + size / 2;
    float s = 0.0f;
    for (i64 k = lo; k <= hi; ++k) {
      const float v = cvt<float>(x[base + k * inner]);
      s += v * v;
    }
    y[i] = cvt<T>(cvt<float>(x[i]) / powf(bias + alpha / (float)size * s, beta));
  }
}
