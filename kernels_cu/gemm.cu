// Batched, broadcast, strided GEMM with shared-memory tiling (MatMul, Gemm):
//   Y[z, m, n] = alpha * sum_k A[z, m, k] * B[z, k, n] + beta * C[z, m, n]
// A, B and C are read through element strides, so transposes and broadcast batch / bias dims
// cost nothing. Y is contiguous (batch, M, N). 64x64 output tile per 256-thread block, K in
// steps of 16; each thread accumulates a 4x4 sub-tile in fp32 registers.
#include "common.cuh"

#define GBM 64
#define GBN 64
#define GBK 16

struct GemmInfo {
  i64 nb;                 // collapsed batch dims
  i64 bshape[EP_MAXD];
  i64 a_bst[EP_MAXD];     // batch strides of A, B, C (0 where broadcast)
  i64 b_bst[EP_MAXD];
  i64 c_bst[EP_MAXD];
  i64 M, N, K;
  i64 sam, sak;           // A element strides along m and k
  i64 sbk, sbn;
  i64 scm, scn;           // C strides (0 where broadcast)
};

template <typename T>
__global__ void __launch_bounds__(256)
gemm_k(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ Cin,
       T* __restrict__ Y, float alpha, float beta, i64 batches, GemmInfo g) {
  __shared__ float As[GBK][GBM + 4];  // As[k][m]
  __shared__ float Bs[GBK][GBN + 4];  // Bs[k][n]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const i64 M = g.M, N = g.N, K = g.K;
  const i64 tiles_m = (M + GBM - 1) / GBM, tiles_n = (N + GBN - 1) / GBN;
  // every loop bound below is uniform over the block, so the barriers are reached by all threads
  for (i64 z = blockIdx.z; z < batches; z += gridDim.z) {
    i64 ao = 0, bo = 0, co = 0, r = z;
    for (int d = (int)g.nb - 1; d >= 0; --d) {
      const i64 c = r % g.bshape[d];
      r /= g.bshape[d];
      ao += c * g.a_bst[d];
      bo += c * g.b_bst[d];
      co += c * g.c_bst[d];
    }
    for (i64 tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      for (i64 tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
        const i64 m0 = tm * GBM, n0 = tn * GBN;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        for (i64 k0 = 0; k0 < K; k0 += GBK) {
#pragma unroll
          for (int l = 0; l < 4; ++l) {  // A tile 64x16: consecutive threads walk k
            const int e = threadIdx.x + l * 256;
            const int mm = e / GBK, kk = e % GBK;
            const i64 m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? cvt<float>(A[ao + m * g.sam + k * g.sak]) : 0.0f;
          }
#pragma unroll
          for (int l = 0; l < 4; ++l) {  // B tile 16x64: consecutive threads walk n
            const int e = threadIdx.x + l * 256;
            const int kk = e / GBN, nn = e % GBN;
            const i64 k = k0 + kk, n = n0 + nn;
            Bs[kk][nn] = (k < K && n < N) ? cvt<float>(B[bo + k * g.sbk + n * g.sbn]) : 0.0f;
          }
          __syncthreads();
#pragma unroll
          for (int kk = 0; kk < GBK; ++kk) {
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
          if (m >= M) continue;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const i64 n = n0 + tx + 16 * j;
            if (n >= N) continue;
            float v = alpha * acc[i][j];
            if (Cin) v += beta * cvt<float>(Cin[co + m * g.scm + n * g.scn]);
            Y[(z * M + m) * N + n] = cvt<T>(v);
          }
        }
      }
    }
  }
}
