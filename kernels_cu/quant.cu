// Quantization kernels: QuantizeLinear, DequantizeLinear (per tensor or per axis),
// DynamicQuantizeLinear (min/max reduction, then quantization), and MatMulNBits (block-wise
// 2/4/8-bit weights dequantized while staging, float accumulation). Rounding follows the CPU
// provider exactly: IEEE division in the input's precision, round half to even, saturation.
#include "common.cuh"

// Per-axis parameter index of the linear element i: (i / inner) % axis_dim (axis_dim 1: scalar).
__device__ __forceinline__ i64 axis_index(i64 i, i64 inner, i64 axis_dim) {
  return axis_dim == 1 ? 0 : (i / inner) % axis_dim;
}

template <typename T> struct QRange;
template <> struct QRange<unsigned char> { static constexpr double lo = 0.0, hi = 255.0; };
template <> struct QRange<signed char> { static constexpr double lo = -128.0, hi = 127.0; };
template <> struct QRange<unsigned short> { static constexpr double lo = 0.0, hi = 65535.0; };
template <> struct QRange<short> { static constexpr double lo = -32768.0, hi = 32767.0; };

// y = saturate(rint(x / scale) + zero_point); the division in TX's precision (float16 rounds the
// fp32 quotient to half, as numpy's float16 division does).
template <typename TX, typename TY>
__global__ void quantize_k(const TX* __restrict__ x, const TX* __restrict__ scale,
                           const TY* __restrict__ zp, TY* __restrict__ y, i64 n, i64 inner,
                           i64 axis_dim) {
  EP_LOOP(i, n) {
    const i64 p = axis_index(i, inner, axis_dim);
    float v = cvt<float>(x[i]) / cvt<float>(scale[p]);
    if constexpr (sizeof(TX) == 2) v = h2f(f2h(v));
    double r = rint((double)v) + (zp ? (double)zp[p] : 0.0);
    r = r < QRange<TY>::lo ? QRange<TY>::lo : (r > QRange<TY>::hi ? QRange<TY>::hi : r);
    if (r != r) r = 0.0;  // NaN input
    y[i] = (TY)(int)r;
  }
}

// y = (x - zero_point) * scale: the difference exact (float32 for 8/16-bit x, double for int32),
// rounded to TO, times the scale in TO's precision.
template <typename TX, typename TO>
__global__ void dequantize_k(const TX* __restrict__ x, const TO* __restrict__ scale,
                             const TX* __restrict__ zp, TO* __restrict__ y, i64 n, i64 inner,
                             i64 axis_dim) {
  EP_LOOP(i, n) {
    const i64 p = axis_index(i, inner, axis_dim);
    TO d;
    if constexpr (sizeof(TX) == 4) d = cvt<TO>((double)x[i] - (zp ? (double)zp[p] : 0.0));
    else d = cvt<TO>((float)x[i] - (zp ? (float)zp[p] : 0.0f));
    y[i] = cvt<TO>(cvt<float>(d) * cvt<float>(scale[p]));
  }
}

// DynamicQuantizeLinear, pass 1: min and max of each of `parts` chunks of x (virtual blocks, so
// any grid size is correct) into partial[2 * part], partial[2 * part + 1].
__global__ void dql_minmax_k(const float* __restrict__ x, i64 n, i64 parts, float* partial) {
  const i64 chunk = (n + parts - 1) / parts;
  for (i64 part = blockIdx.x; part < parts; part += gridDim.x) {
    float lo = Lim<float>::highest(), hi = Lim<float>::lowest();
    const i64 end = (part + 1) * chunk < n ? (part + 1) * chunk : n;
    for (i64 i = part * chunk + threadIdx.x; i < end; i += blockDim.x) {
      lo = RMin()(lo, x[i]);
      hi = RMax()(hi, x[i]);
    }
    lo = block_reduce(lo, RMin(), Lim<float>::highest());
    hi = block_reduce(hi, RMax(), Lim<float>::lowest());
    if (threadIdx.x == 0) {
      partial[2 * part] = lo;
      partial[2 * part + 1] = hi;
    }
  }
}

// Pass 2: every block reduces the partials, derives scale and zero point (uint8 range spanning
// [min(x, 0), max(x, 0)]), block 0 writes them, and all quantize their share of x.
__global__ void dql_apply_k(const float* __restrict__ x, i64 n, const float* __restrict__ partial,
                            i64 parts, unsigned char* __restrict__ y, float* scale_out,
                            unsigned char* zp_out) {
  float lo = Lim<float>::highest(), hi = Lim<float>::lowest();
  for (i64 p = threadIdx.x; p < parts; p += blockDim.x) {
    lo = RMin()(lo, partial[2 * p]);
    hi = RMax()(hi, partial[2 * p + 1]);
  }
  lo = block_reduce(lo, RMin(), Lim<float>::highest());
  hi = block_reduce(hi, RMax(), Lim<float>::lowest());
  lo = fminf(0.0f, lo);  // min(0, NaN) is 0, as Python's min(0.0, nan)
  hi = fmaxf(0.0f, hi);
  const float scale = (float)(((double)hi - (double)lo) / 255.0);
  float zpf = 0.0f;
  if (scale != 0.0f) {
    zpf = rintf((0.0f - lo) / scale);
    zpf = zpf < 0.0f ? 0.0f : (zpf > 255.0f ? 255.0f : zpf);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *scale_out = scale;
    *zp_out = (unsigned char)(int)zpf;
  }
  EP_LOOP(i, n) {
    float q = 0.0f;
    if (scale != 0.0f) {
      q = rintf(x[i] / scale) + zpf;
      q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
      if (q != q) q = 0.0f;
    }
    y[i] = (unsigned char)(int)q;
  }
}

// ---------------------------------------------------------------- MatMulNBits
// Y (M x N) = A (M x K, contiguous) @ W^T + bias, W (N x K) stored as BITS-bit values packed
// low bits first, `blob` bytes per block of `block` values along K:
//   W[n][k] = (q - zero_point) * scale[n][k / block]
// zero points: zkind 0 none (2^(BITS-1)), 1 BITS-bit packed uint8 (zrow bytes per n), 2 float T.
struct NbArgs { i64 M, N, K, block, kblocks, blob, zkind, zrow; };

template <typename T, int BITS>
__device__ __forceinline__ float nbits_weight(const unsigned char* Bq, const T* scales, const void* zps,
                                              const NbArgs& a, i64 n, i64 k) {
  constexpr int PER = 8 / BITS, MASK = (1 << BITS) - 1;
  const i64 blk = k / a.block, kin = k - blk * a.block;
  const unsigned int byte = Bq[(n * a.kblocks + blk) * a.blob + kin / PER];
  const float qv = (float)((byte >> ((kin % PER) * BITS)) & MASK);
  float zp;
  if (a.zkind == 0) zp = (float)(1 << (BITS - 1));
  else if (a.zkind == 1) {
    const unsigned int zb = reinterpret_cast<const unsigned char*>(zps)[n * a.zrow + blk / PER];
    zp = (float)((zb >> ((blk % PER) * BITS)) & MASK);
  } else zp = cvt<float>(reinterpret_cast<const T*>(zps)[n * a.kblocks + blk]);
  return (qv - zp) * cvt<float>(scales[n * a.kblocks + blk]);
}

// 32x32 output tiles, 256 threads with 2x2 outputs each, K steps of 32 staged in shared memory.
template <typename T, int BITS>
__global__ void __launch_bounds__(256)
nbits_gemm_k(const T* __restrict__ A, const unsigned char* __restrict__ Bq,
             const T* __restrict__ scales, const void* zps, const T* bias, T* Y, NbArgs a) {
  __shared__ float As[32][33];
  __shared__ float Ws[32][33];
  const int tid = (int)threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const i64 tiles_n = (a.N + 31) / 32, tiles = ((a.M + 31) / 32) * tiles_n;
  for (i64 t = blockIdx.x; t < tiles; t += gridDim.x) {
    const i64 m0 = (t / tiles_n) * 32, n0 = (t % tiles_n) * 32;
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (i64 k0 = 0; k0 < a.K; k0 += 32) {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int e = tid + 256 * l, r = e >> 5, kk = e & 31;
        const i64 k = k0 + kk;
        As[r][kk] = (m0 + r < a.M && k < a.K) ? cvt<float>(A[(m0 + r) * a.K + k]) : 0.0f;
        Ws[r][kk] = (n0 + r < a.N && k < a.K) ? nbits_weight<T, BITS>(Bq, scales, zps, a, n0 + r, k) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < 32; ++kk) {
        const float a0 = As[ty][kk], a1 = As[ty + 16][kk];
        const float w0 = Ws[tx][kk], w1 = Ws[tx + 16][kk];
        acc[0][0] = fmaf(a0, w0, acc[0][0]);
        acc[0][1] = fmaf(a0, w1, acc[0][1]);
        acc[1][0] = fmaf(a1, w0, acc[1][0]);
        acc[1][1] = fmaf(a1, w1, acc[1][1]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const i64 m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
        if (m < a.M && n < a.N) {
          float v = acc[i][j];
          if (bias) v += cvt<float>(bias[n]);
          Y[m * a.N + n] = cvt<T>(v);
        }
      }
  }
}
