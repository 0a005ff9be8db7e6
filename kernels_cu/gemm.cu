// Batched, broadcast, strided GEMM with a fused epilogue (MatMul, Gemm, FusedGemm):
//   Y[z] = act(alpha * A[z] @ B[z] + beta * C[z] + R[z])
// on the tiled engine of gemm_core.cuh: SIMT fp32 (gemm_simt_k) or tensor cores (gemm_tc_k:
// TF32 for float, FP16 / BF16 with fp32 accumulation). AK / BKM say whether A / B are staged
// K-major (operand contiguous along k) or MN-major. The host picks the kernel and tile shape
// (ep_cuda/kernels/gemm.py), possibly by autotuning.
#include "gemm_core.cuh"

template <typename T, class CFG>
__global__ void __launch_bounds__(256)
gemm_simt_k(const T* __restrict__ A, const T* __restrict__ B, const T* C, const T* R, T* Y,
            float alpha, float beta, int act, float p0, float p1, GemmArgs g) {
  const Epi e = {alpha, beta, p0, p1, act};
  simt_body<T, CFG, false>(A, B, C, R, Y, e, g);
}

template <typename T, class CFG, bool AK, bool BKM>
__global__ void __launch_bounds__(32 * CFG::WM * CFG::WN)
gemm_tc_k(const T* __restrict__ A, const T* __restrict__ B, const T* C, const T* R, T* Y,
          float alpha, float beta, int act, float p0, float p1, GemmArgs g) {
  const Epi e = {alpha, beta, p0, p1, act};
  tc_body<T, CFG, AK, BKM, false>(A, B, C, R, Y, e, g);
}
