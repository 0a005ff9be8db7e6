// Integer GEMM and implicit-GEMM convolution of the quantized ops (MatMulInteger, QLinearMatMul,
// MatMulIntegerToFloat, DynamicQuantizeMatMul, QLinearConv) on the engine of quant_core.cuh:
// int8 / uint8 operands, int32 accumulation, zero points, requantizing or float epilogues.
// *_dp4a_k: dp4a main loop (sm_61+; the default below sm_80). *_tc_k: int8 tensor cores,
// mma.sync m16n8k32 (sm_80+; an exact software MMA elsewhere, which the CPU emulator runs).
// A plain GEMM reads A and B through strides; the convolution's A is the weight matrix
// (M/G x C/G*kernel per group) and its B the im2col matrix gathered while staging.
#include "quant_core.cuh"

#define EP_QGEMM(NAME, CONV)                                                                    \
  template <typename TA, typename TB, class CFG>                                                \
  __global__ void __launch_bounds__(CFG::THREADS)                                               \
  NAME(const TA* __restrict__ A, const TB* __restrict__ B, void* Y, const TA* za, const TB* zb, \
       const float* srow, const float* scol, const float* ys, const void* yz, const void* bias, \
       QArgs q, GemmArgs g) {                                                                   \
    qgemm_body<TA, TB, CFG, CONV>(A, B, Y, za, zb, srow, scol, ys, yz, bias, q, g);             \
  }

EP_QGEMM(qgemm_dp4a_k, false)
EP_QGEMM(qgemm_tc_k, false)
EP_QGEMM(qconv_dp4a_k, true)
EP_QGEMM(qconv_tc_k, true)
