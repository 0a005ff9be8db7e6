// Direct convolution and transposed convolution, one thread per output element, fp32
// accumulation. 1-D/2-D/3-D convolutions all run as 3-D (the host pads missing leading spatial
// dims with size 1, stride 1, pad 0, dilation 1). Tensors are contiguous NC(D)(H)W.
#include "common.cuh"

struct ConvInfo {
  i64 N, C, M, G;            // batch, input channels, output channels, groups
  i64 in[3], out[3], k[3];   // spatial sizes (D, H, W)
  i64 stride[3], pad[3], dil[3];  // pad: leading (begin) padding
};

// Conv: x (N, C, in), w (M, C/G, k), bias (M) or NULL -> y (N, M, out).
template <typename T>
__global__ void conv_k(const T* __restrict__ x, const T* __restrict__ w,
                       const T* __restrict__ bias, T* __restrict__ y, i64 n, ConvInfo c) {
  const i64 in_sp = c.in[0] * c.in[1] * c.in[2];
  const i64 k_sp = c.k[0] * c.k[1] * c.k[2];
  const i64 cpg = c.C / c.G, mpg = c.M / c.G;
  EP_LOOP(i, n) {
    i64 t = i;
    const i64 ow = t % c.out[2]; t /= c.out[2];
    const i64 oh = t % c.out[1]; t /= c.out[1];
    const i64 od = t % c.out[0]; t /= c.out[0];
    const i64 m = t % c.M;
    const i64 nb = t / c.M;
    const i64 g = m / mpg;
    float acc = bias ? cvt<float>(bias[m]) : 0.0f;
    for (i64 ci = 0; ci < cpg; ++ci) {
      const T* xc = x + (nb * c.C + g * cpg + ci) * in_sp;
      const T* wc = w + (m * cpg + ci) * k_sp;
      for (i64 kd = 0; kd < c.k[0]; ++kd) {
        const i64 id = od * c.stride[0] - c.pad[0] + kd * c.dil[0];
        if (id < 0 || id >= c.in[0]) continue;
        for (i64 kh = 0; kh < c.k[1]; ++kh) {
          const i64 ih = oh * c.stride[1] - c.pad[1] + kh * c.dil[1];
          if (ih < 0 || ih >= c.in[1]) continue;
          const T* xrow = xc + (id * c.in[1] + ih) * c.in[2];
          const T* wrow = wc + (kd * c.k[1] + kh) * c.k[2];
          for (i64 kw = 0; kw < c.k[2]; ++kw) {
            const i64 iw = ow * c.stride[2] - c.pad[2] + kw * c.dil[2];
            if (iw < 0 || iw >= c.in[2]) continue;
            acc = fmaf(cvt<float>(xrow[iw]), cvt<float>(wrow[kw]), acc);
          }
        }
      }
    }
    y[i] = cvt<T>(acc);
  }
}

// ConvTranspose: x (N, C, in), w (C, M/G, k), bias (M) or NULL -> y (N, M, out), gathered per
// output element: out position o receives x[i] * w[k] for every o = i * stride - pad + k * dil.
template <typename T>
__global__ void conv_transpose_k(const T* __restrict__ x, const T* __restrict__ w,
                                 const T* __restrict__ bias, T* __restrict__ y, i64 n,
                                 ConvInfo c) {
  const i64 in_sp = c.in[0] * c.in[1] * c.in[2];
  const i64 k_sp = c.k[0] * c.k[1] * c.k[2];
  const i64 cpg = c.C / c.G, mpg = c.M / c.G;
  EP_LOOP(i, n) {
    i64 t = i;
    const i64 ow = t % c.out[2]; t /= c.out[2];
    const i64 oh = t % c.out[1]; t /= c.out[1];
    const i64 od = t % c.out[0]; t /= c.out[0];
    const i64 m = t % c.M;
    const i64 nb = t / c.M;
    const i64 g = m / mpg, mg = m % mpg;
    float acc = bias ? cvt<float>(bias[m]) : 0.0f;
    for (i64 ci = 0; ci < cpg; ++ci) {
      const i64 cin = g * cpg + ci;
      const T* xc = x + (nb * c.C + cin) * in_sp;
      const T* wc = w + (cin * mpg + mg) * k_sp;
      for (i64 kd = 0; kd < c.k[0]; ++kd) {
        const i64 td = od + c.pad[0] - kd * c.dil[0];
        if (td < 0 || td % c.stride[0]) continue;
        const i64 id = td / c.stride[0];
        if (id >= c.in[0]) continue;
        for (i64 kh = 0; kh < c.k[1]; ++kh) {
          const i64 th = oh + c.pad[1] - kh * c.dil[1];
          if (th < 0 || th % c.stride[1]) continue;
          const i64 ih = th / c.stride[1];
          if (ih >= c.in[1]) continue;
          for (i64 kw = 0; kw < c.k[2]; ++kw) {
            const i64 tw = ow + c.pad[2] - kw * c.dil[2];
            if (tw < 0 || tw % c.stride[2]) continue;
            const i64 iw = tw / c.stride[2];
            if (iw >= c.in[2]) continue;
            acc = fmaf(cvt<float>(xc[(id * c.in[1] + ih) * c.in[2] + iw]),
                       cvt<float>(wc[(kd * c.k[1] + kh) * c.k[2] + kw]), acc);
          }
        }
      }
    }
    y[i] = cvt<T>(acc);
  }
}

// Conv as an implicit GEMM (no im2col buffer): for image nb and group g,
//   Y[m, p] = sum_k W[m, k] * Xcol[k, p] (+ bias[m])
// with m an output channel of the group, p an output position, and k = (ci, kd, kh, kw) in the
// weight's own flattening order. Xcol is gathered on the fly while loading the shared-memory
// tile (zero outside the input: padding). Same 64x64x16 tiling as gemm.cu. Grid z walks
// (nb, g) pairs; every loop bound is uniform per block, so the barriers are safe.
template <typename T>
__global__ void __launch_bounds__(256)
conv_gemm_k(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
            T* __restrict__ y, ConvInfo c) {
  __shared__ float As[16][64 + 4];
  __shared__ float Bs[16][64 + 4];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const i64 cpg = c.C / c.G, mpg = c.M / c.G;
  const i64 k_sp = c.k[0] * c.k[1] * c.k[2];
  const i64 P = c.out[0] * c.out[1] * c.out[2];
  const i64 in_sp = c.in[0] * c.in[1] * c.in[2];
  const i64 Kd = cpg * k_sp;
  const i64 tiles_m = (mpg + 63) / 64, tiles_n = (P + 63) / 64;
  for (i64 z = blockIdx.z; z < c.N * c.G; z += gridDim.z) {
    const i64 nb = z / c.G, g = z % c.G;
    const T* wg = w + g * mpg * Kd;
    const T* xg = x + (nb * c.C + g * cpg) * in_sp;
    T* yg = y + (nb * c.M + g * mpg) * P;
    for (i64 tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      for (i64 tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
        const i64 m0 = tm * 64, n0 = tn * 64;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        for (i64 k0 = 0; k0 < Kd; k0 += 16) {
#pragma unroll
          for (int l = 0; l < 4; ++l) {  // weights: row m, column k (contiguous in k)
            const int e = threadIdx.x + l * 256;
            const int mm = e / 16, kk = e % 16;
            const i64 m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < mpg && k < Kd) ? cvt<float>(wg[m * Kd + k]) : 0.0f;
          }
#pragma unroll
          for (int l = 0; l < 4; ++l) {  // input patches: row k, column p (consecutive p)
            const int e = threadIdx.x + l * 256;
            const int kk = e / 64, nn = e % 64;
            const i64 k = k0 + kk, p = n0 + nn;
            float v = 0.0f;
            if (k < Kd && p < P) {
              const i64 ci = k / k_sp, r = k % k_sp;
              const i64 kw = r % c.k[2], kh = (r / c.k[2]) % c.k[1], kd = r / (c.k[1] * c.k[2]);
              const i64 ow = p % c.out[2], oh = (p / c.out[2]) % c.out[1];
              const i64 od = p / (c.out[1] * c.out[2]);
              const i64 id = od * c.stride[0] - c.pad[0] + kd * c.dil[0];
              const i64 ih = oh * c.stride[1] - c.pad[1] + kh * c.dil[1];
              const i64 iw = ow * c.stride[2] - c.pad[2] + kw * c.dil[2];
              if (id >= 0 && id < c.in[0] && ih >= 0 && ih < c.in[1] && iw >= 0 && iw < c.in[2])
                v = cvt<float>(xg[ci * in_sp + (id * c.in[1] + ih) * c.in[2] + iw]);
            }
            Bs[kk][nn] = v;
          }
          __syncthreads();
#pragma unroll
          for (int kk = 0; kk < 16; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
              for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
          }
          __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const i64 m = m0 + ty + 16 * i;
          if (m >= mpg) continue;
          const float bm = bias ? cvt<float>(bias[g * mpg + m]) : 0.0f;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const i64 p = n0 + tx + 16 * j;
            if (p < P) yg[m * P + p] = cvt<T>(acc[i][j] + bm);
          }
        }
      }
    }
  }
}
