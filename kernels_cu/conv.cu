// Convolutions, fp32 accumulation:
// * conv_simt_k / conv_tc_k: implicit GEMM on the tiles of gemm_core.cuh (no im2col buffer):
//   per group, Y(m, j) = W(m, k) . im2col(x)(k, j) with j = (image, output position); x, the
//   residual and y are addressed through strides, so NCHW and channels-last layouts both work;
//   bias, residual and activation are fused into the epilogue.
// * depthwise_k: group == channels (one input channel per group), one thread per output.
// * conv_transpose_k: direct kernel, gathering per output (no atomics), contiguous NC(D)(H)W.
// 1-D/2-D/3-D convolutions all run as 3-D (the host pads missing leading spatial dims with size 1,
// stride 1, pad 0, dilation 1).
#include "gemm_core.cuh"

struct ConvInfo {
  i64 N, C, M, G;            // batch, input channels, output channels, groups
  i64 in[3], out[3], k[3];   // spatial sizes (D, H, W)
  i64 stride[3], pad[3], dil[3];  // pad: leading (begin) padding
};

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

template <typename T, class CFG>
__global__ void __launch_bounds__(256)
conv_simt_k(const T* __restrict__ W, const T* __restrict__ x, const T* C, const T* R, T* Y,
            float alpha, float beta, int act, float p0, float p1, GemmArgs g) {
  const Epi e = {alpha, beta, p0, p1, act};
  simt_body<T, CFG, true>(W, x, C, R, Y, e, g);
}

template <typename T, class CFG>
__global__ void __launch_bounds__(32 * CFG::WM * CFG::WN)
conv_tc_k(const T* __restrict__ W, const T* __restrict__ x, const T* C, const T* R, T* Y,
          float alpha, float beta, int act, float p0, float p1, GemmArgs g) {
  const Epi e = {alpha, beta, p0, p1, act};
  tc_body<T, CFG, true, true, true>(W, x, C, R, Y, e, g);
}

// Depthwise 2-D convolution (1-D runs with height 1): output channel m reads input channel
// m / mult. x, y and the residual are addressed through (n, c, h, w) strides.
struct DwArgs {
  i64 N, M, mult;
  i64 in[2], out[2], k[2], stride[2], pad[2], dil[2];
  i64 xs[4], ys[4], rs[4];
  i64 chlast;  // thread order (n, h, w, m): consecutive threads walk channels (channels-last y)
};

template <typename T, int KH, int KW>
__global__ void depthwise_k(const T* __restrict__ x, const T* __restrict__ w,
                            const T* __restrict__ bias, const T* R, T* y, i64 n, int act,
                            float p0, float p1, DwArgs a) {
  const int kh_n = KH ? KH : (int)a.k[0], kw_n = KW ? KW : (int)a.k[1];
  EP_LOOP(i, n) {
    i64 t = i, nb, m, oh, ow;
    if (a.chlast) {
      m = t % a.M; t /= a.M;
      ow = t % a.out[1]; t /= a.out[1];
      oh = t % a.out[0]; nb = t / a.out[0];
    } else {
      ow = t % a.out[1]; t /= a.out[1];
      oh = t % a.out[0]; t /= a.out[0];
      m = t % a.M; nb = t / a.M;
    }
    const T* xc = x + nb * a.xs[0] + (m / a.mult) * a.xs[1];
    const T* wm = w + m * kh_n * kw_n;
    float acc = bias ? cvt<float>(bias[m]) : 0.0f;
    const i64 ih0 = oh * a.stride[0] - a.pad[0], iw0 = ow * a.stride[1] - a.pad[1];
#pragma unroll
    for (int kh = 0; kh < kh_n; ++kh) {
      const i64 ih = ih0 + kh * a.dil[0];
      if (ih < 0 || ih >= a.in[0]) continue;
#pragma unroll
      for (int kw = 0; kw < kw_n; ++kw) {
        const i64 iw = iw0 + kw * a.dil[1];
        if (iw < 0 || iw >= a.in[1]) continue;
        acc = fmaf(cvt<float>(xc[ih * a.xs[2] + iw * a.xs[3]]), cvt<float>(wm[kh * kw_n + kw]), acc);
      }
    }
    if (R) acc += cvt<float>(R[nb * a.rs[0] + m * a.rs[1] + oh * a.rs[2] + ow * a.rs[3]]);
    if (act >= 0) acc = act_rt(act, acc, p0, p1);
    y[nb * a.ys[0] + m * a.ys[1] + oh * a.ys[2] + ow * a.ys[3]] = cvt<T>(acc);
  }
}
