// Integer GEMM engine of the quantized ops (quant_gemm.cu): 8-bit A (M x K) times 8-bit B (K x N)
// with int32 accumulation, zero points subtracted exactly, and one of four epilogues:
//
//   acc(m, j) = sum_k (A(m,k) - za) * (B(k,j) - zb)
//             = sum_k A*B - zb * rowsum_A(m) - za * colsum_B(j) + K * za * zb
//
// The main loop multiplies the raw bytes (signed or unsigned per operand, as the types say); the
// row sums of A and column sums of B are taken from the same shared-memory stages by one thread
// per row, so the zero points cost nothing in the inner loop. Padding of the implicit-GEMM
// convolution gathers the input's zero point (x - xz = 0 there), bytes past K are 0 in both
// operands: both keep the identity above exact.
//
// Two main loops over the same staging (STAGES-deep cp.async pipeline of 64-byte K steps, each
// operand K-major in shared memory, rows padded to 80 bytes: conflict-free fragment reads):
//   * QDp4a: 256 threads, each 4x4 outputs of a 64x64 tile, dp4a (sm_61+) per 4 bytes;
//   * QImma / QImmaBig: int8 tensor cores, mma.sync m16n8k32 (sm_80+) per warp tile; the CPU
//     emulator runs an exact software MMA from the documented fragment layouts instead (same
//     staging, fragments, tiling and epilogue); below sm_80 the host never launches them.
//
// Reuses the float engine's GemmArgs (batch broadcasting, strides, conv geometry, output split).
#include "gemm_core.cuh"

template <typename T> struct IsS8 { static constexpr bool value = false; };
template <> struct IsS8<signed char> { static constexpr bool value = true; };

// c + sum over the 4 bytes of a.byte[q] * b.byte[q]; bytes signed or unsigned per operand.
template <typename TA, typename TB>
__device__ __forceinline__ int dot4(unsigned int a, unsigned int b, int c) {
#ifdef EP_HOST_EMULATION
  return emu_dp4a(a, b, c, IsS8<TA>::value, IsS8<TB>::value);
#else
  int d;
  if constexpr (IsS8<TA>::value && IsS8<TB>::value)
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else if constexpr (IsS8<TA>::value)
    asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else if constexpr (IsS8<TB>::value)
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else
    asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#endif
}

template <bool S> __device__ __forceinline__ int byte_at(unsigned int w, int q) {
  const unsigned int v = (w >> (8 * q)) & 0xffu;
  return S ? (int)(signed char)v : (int)v;
}

// Software m16n8k32 integer MMA from the PTX ISA fragment layouts (g = lane / 4, t = lane % 4;
// each register holds 4 consecutive k, low byte first):
//   A: a[r] = A[g + 8*(r%2)][4t + 16*(r/2) + 0..3]     B: b[r] = B[4t + 16*r + 0..3][g]
//   C: c[r] = C[g + 8*(r/2)][2t + r%2]
template <bool SA, bool SB>
__device__ __noinline__ void imma_sw(int* c, const unsigned int* a, const unsigned int* b) {
  unsigned int mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  unsigned int all[32 * 6];
  warp_allgather<6>(mine, all);
  const int lane = (int)(threadIdx.x & 31), g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
    unsigned int s = (unsigned int)c[r];  // 32-bit wrap-around, as the hardware adder
    for (int k = 0; k < 32; ++k) {
      const int kq = (k & 15) >> 2, hi = k >> 4, q = k & 3;
      const unsigned int aw = all[((row & 7) * 4 + kq) * 6 + (row >> 3) + 2 * hi];
      const unsigned int bw = all[(col * 4 + kq) * 6 + 4 + hi];
      s += (unsigned int)(byte_at<SA>(aw, q) * byte_at<SB>(bw, q));
    }
    c[r] = (int)s;
  }
}

#define EP_IMMA(TA_, TB_)                                                                     \
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32." TA_ "." TB_ ".s32 {%0,%1,%2,%3}, " \
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                    \
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])                              \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

// One warp-wide 16x8x32 integer MMA, int32 accumulate.
template <typename TA, typename TB>
__device__ __forceinline__ void imma(int* c, const unsigned int* a, const unsigned int* b) {
#if EP_SM80
  if constexpr (IsS8<TA>::value && IsS8<TB>::value) EP_IMMA("s8", "s8");
  else if constexpr (IsS8<TA>::value) EP_IMMA("s8", "u8");
  else if constexpr (IsS8<TB>::value) EP_IMMA("u8", "s8");
  else EP_IMMA("u8", "u8");
#elif defined(EP_HOST_EMULATION)
  imma_sw<IsS8<TA>::value, IsS8<TB>::value>(c, a, b);
#else
  __trap();  // never launched below sm_80: ep_cuda/kernels/quant_gemm.py runs dp4a there
#endif
}

// ---------------------------------------------------------------- tile configurations
struct QDp4a { static constexpr int BM = 64, BN = 64, WM = 1, WN = 1, THREADS = 256, STAGES = 2; static constexpr bool IMMA = false; };
struct QImma { static constexpr int BM = 64, BN = 64, WM = 2, WN = 2, THREADS = 128, STAGES = 3; static constexpr bool IMMA = true; };
struct QImmaBig { static constexpr int BM = 128, BN = 128, WM = 2, WN = 4, THREADS = 256, STAGES = 3; static constexpr bool IMMA = true; };

#define QBK 64     // bytes of K per stage
#define QSTR 80    // bytes per staged row (64 + 16: conflict-free 32-bit fragment reads)

// Epilogue description (one int64 blob). Per-row parameters of batch z are indexed
// z * row_bst + m (conv groups), per-column ones by the column j; a stride of 0 broadcasts.
struct QArgs {
  i64 mode;    // 0: int32 acc; 1: QLinearMatMul requantization; 2: QLinearConv (+ int32 bias)
               // requantization; 3: float acc * (srow * scol) (+ float bias per column);
               // 4 / 5: QGemm, (acc + int32 bias) * alpha * srow * scol as float32 / requantized
  i64 ytype;   // 0 int32, 1 uint8, 2 int8, 3 float32
  i64 za_st, zb_st, srow_st, scol_st, ys_st, yz_st;
  i64 row_bst;
  i64 real_half;  // mode 1: the real value rounds to float16 (float16 scales), else to float32
  i64 bias_st;    // bias per column (1) or one value (0), modes 3-5
  i64 alpha_bits; // QGemm's alpha, float32 bits
};

template <typename T> __device__ __forceinline__ int zp_at(const T* z, i64 i) {
  return z ? (int)z[i] : 0;
}

// Stage one operand tile (R rows x QBK bytes, K-major) of X(r, k) = X[off + r*sr + k*sk]. mode 1:
// 16-byte cp.async along k (host checked sk == 1, K % 16 == 0, aligned); mode 2: scalar bytes,
// consecutive threads on consecutive rows (operand contiguous along r); mode 0: scalar bytes,
// consecutive threads along k. Bytes past K (and rows past the matrix) are 0.
template <typename T, int R, int THREADS>
__device__ __forceinline__ void q_load(unsigned char* S, const T* X, i64 off, i64 sr, i64 sk,
                                       i64 rows, i64 K, i64 r0, i64 k0, int mode) {
  const unsigned char* Xb = reinterpret_cast<const unsigned char*>(X);
  if (mode == 1) {
    constexpr int CH = R * (QBK / 16);
#pragma unroll
    for (int l = 0; l < (CH + THREADS - 1) / THREADS; ++l) {
      const int c = (int)threadIdx.x + l * THREADS;
      if (c >= CH) break;
      const int row = c / (QBK / 16), kc = (c % (QBK / 16)) * 16;
      const i64 r = r0 + row, k = k0 + kc;
      const bool p = r < rows && k < K;
      cp_async16(S + row * QSTR + kc, p ? Xb + off + r * sr + k : Xb, p);
    }
    return;
  }
  constexpr int CH = R * (QBK / 4);
#pragma unroll 2
  for (int l = 0; l < CH / THREADS; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    int row, kc;
    if (mode == 2) { row = c % R; kc = (c / R) * 4; }
    else { row = c / (QBK / 4); kc = (c % (QBK / 4)) * 4; }
    const i64 r = r0 + row, k = k0 + kc;
    unsigned int w = 0;
    if (r < rows) {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (k + q < K) w |= (unsigned int)Xb[off + r * sr + (k + q) * sk] << (8 * q);
    }
    *reinterpret_cast<unsigned int*>(S + row * QSTR + kc) = w;
  }
}

// Stage the im2col tile of a convolution (R columns x QBK bytes of k): padding reads the input's
// zero point `pad`. Consecutive threads take consecutive columns (output positions).
template <typename T, int R, int THREADS, int L>
__device__ __forceinline__ void q_load_conv(unsigned char* S, const T* x, i64 off, const GemmArgs& g,
                                            const ColInfo* ci, i64 k0, unsigned int pad) {
  const unsigned char* xb = reinterpret_cast<const unsigned char*>(x);
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    const int row = c % R, kc = (c / R) * 4;
    unsigned int w = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const i64 k = k0 + kc + q;
      if (k >= g.K) break;
      const i64 o = conv_offset(g, ci[l], k);
      w |= (o >= 0 ? (unsigned int)xb[off + o] : pad) << (8 * q);
    }
    *reinterpret_cast<unsigned int*>(S + row * QSTR + kc) = w;
  }
}

template <class CFG> struct QGeom {
  static constexpr int BM = CFG::BM, BN = CFG::BN, THREADS = CFG::THREADS, STAGES = CFG::STAGES;
  static constexpr int STAGE_BYTES = (BM + BN) * QSTR;
  static constexpr int EPI_BYTES = BM * (BN + 1) * 4;
  static constexpr int MAIN = STAGES * STAGE_BYTES > EPI_BYTES ? STAGES * STAGE_BYTES : EPI_BYTES;
  static constexpr int SMEM = MAIN + (BM + BN) * 4;   // + row / column sums
  static constexpr int NSUM = (BM + BN + THREADS - 1) / THREADS;
};

// Store one output element v (int32 accumulator with zero points applied) per the epilogue.
__device__ __forceinline__ void q_store(void* Y, i64 off, const QArgs& q, int v, const float* srow,
                                        const float* scol, const float* ys, const void* yz,
                                        const void* bias, i64 rid, i64 j) {
  if (q.mode == 0) {
    reinterpret_cast<int*>(Y)[off] = v;
    return;
  }
  const double s2 = (double)srow[rid * q.srow_st] * (double)scol[j * q.scol_st];
  if (q.mode == 3) {
    const float mult = srow[rid * q.srow_st] * scol[j * q.scol_st];
    float y = (float)((double)v * (double)mult);
    if (bias) y += reinterpret_cast<const float*>(bias)[j * q.bias_st];
    reinterpret_cast<float*>(Y)[off] = y;
    return;
  }
  double r;
  if (q.mode >= 4) {  // QGemm: float32 multiplier (alpha * a_scale) * b_scale [/ y_scale]
    if (bias) v += reinterpret_cast<const int*>(bias)[j * q.bias_st];
    float mult = (__uint_as_float((unsigned int)q.alpha_bits) * srow[rid * q.srow_st]) * scol[j * q.scol_st];
    if (q.mode == 4) {
      reinterpret_cast<float*>(Y)[off] = (float)((double)v * (double)mult);
      return;
    }
    mult = mult / ys[j * q.ys_st];
    r = rint((double)v * (double)mult);
  } else if (q.mode == 1) {
    const double ysc = (double)ys[j * q.ys_st];
    const double prod = (double)v * s2;          // the real value in the scales' precision
    const float real = q.real_half ? h2f(d2h(prod)) : (float)prod;
    r = rint((double)real / ysc);
  } else {
    if (bias) v += reinterpret_cast<const int*>(bias)[rid];
    const float mult = (float)(s2 / (double)ys[j * q.ys_st]);   // one float32 multiplier per channel
    r = rint((double)v * (double)mult);
  }
  const i64 zi = j * q.yz_st;
  if (q.ytype == 1) {
    r += yz ? (double)reinterpret_cast<const unsigned char*>(yz)[zi] : 0.0;
    r = r < 0.0 ? 0.0 : (r > 255.0 ? 255.0 : r);
    reinterpret_cast<unsigned char*>(Y)[off] = (unsigned char)(int)r;
  } else {
    r += yz ? (double)reinterpret_cast<const signed char*>(yz)[zi] : 0.0;
    r = r < -128.0 ? -128.0 : (r > 127.0 ? 127.0 : r);
    reinterpret_cast<signed char*>(Y)[off] = (signed char)(int)r;
  }
}

template <typename TA, typename TB, class CFG, bool CONV>
__device__ void qgemm_body(const TA* __restrict__ A, const TB* __restrict__ B, void* Y,
                           const TA* za, const TB* zb, const float* srow, const float* scol,
                           const float* ys, const void* yz, const void* bias, const QArgs& q,
                           const GemmArgs& g) {
  typedef QGeom<CFG> G;
  constexpr int BM = G::BM, BN = G::BN, THREADS = G::THREADS, STAGES = G::STAGES;
  constexpr int AE = BM * QSTR, SE = G::STAGE_BYTES;
  constexpr int LC = BN * (QBK / 4) / THREADS;   // conv gather chunks per thread
  EP_DYN_SMEM(unsigned char, smem);
  int* sums = reinterpret_cast<int*>(smem + G::MAIN);   // [0, BM): rows of A; [BM, BM+BN): B
  const int tid = (int)threadIdx.x;
  const int amode = (int)g.a_vec, bmode = (int)g.b_vec;
  const i64 tiles_m = (g.M + BM - 1) / BM, tiles_n = (g.N + BN - 1) / BN;
  const i64 ktiles = (g.K + QBK - 1) / QBK;
  // conv padding value: the input's zero point (a scalar), so that x - xz = 0 there
  const unsigned int pad = CONV && zb ? (unsigned int)(unsigned char)zb[0] : 0u;
  for (i64 z = blockIdx.y; z < g.batches; z += gridDim.y) {
    const BatchOff o = batch_offsets(g, z);
    for (i64 t = blockIdx.x; t < tiles_m * tiles_n; t += gridDim.x) {
      i64 tm, tn;
      tile_coords(t, tiles_m, tiles_n, tm, tn);
      const i64 m0 = tm * BM, n0 = tn * BN;
      ColInfo ci[CONV ? LC : 1];
      if constexpr (CONV) {
#pragma unroll
        for (int l = 0; l < LC; ++l) ci[l] = col_info(g, n0 + (tid + l * THREADS) % BN);
      }
      auto load_stage = [&](int s, i64 k0) {
        unsigned char* as = smem + s * SE;
        q_load<TA, BM, THREADS>(as, A, o.a, g.sam, g.sak, g.M, g.K, m0, k0, amode);
        if constexpr (CONV) q_load_conv<TB, BN, THREADS, LC>(as + AE, B, o.b, g, ci, k0, pad);
        else q_load<TB, BN, THREADS>(as + AE, B, o.b, g.sbn, g.sbk, g.N, g.K, n0, k0, bmode);
      };
      int rsum[G::NSUM];
#pragma unroll
      for (int i = 0; i < G::NSUM; ++i) rsum[i] = 0;
      constexpr int MI = CFG::IMMA ? BM / CFG::WM / 16 : BM / 16;
      constexpr int NI = CFG::IMMA ? BN / CFG::WN / 8 : BN / 16;
      int acc[MI][NI][CFG::IMMA ? 4 : 1];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int r = 0; r < (CFG::IMMA ? 4 : 1); ++r) acc[i][j][r] = 0;
#pragma unroll
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, (i64)s * QBK);
        cp_async_commit();
      }
      for (i64 kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kt landed for every thread; stage kt-1 is no longer read
        const i64 nk = kt + STAGES - 1;
        if (nk < ktiles) load_stage((int)(nk % STAGES), nk * QBK);
        cp_async_commit();
        const unsigned char* as = smem + (int)(kt % STAGES) * SE;
        const unsigned char* bs = as + AE;
        // row sums of A and column sums of B for the zero points
#pragma unroll
        for (int i = 0; i < G::NSUM; ++i) {
          const int r = tid + i * THREADS;
          if (r < BM) {
#pragma unroll
            for (int w = 0; w < QBK / 4; ++w)
              rsum[i] = dot4<TA, unsigned char>(*reinterpret_cast<const unsigned int*>(as + r * QSTR + 4 * w), 0x01010101u, rsum[i]);
          } else if (r < BM + BN) {
#pragma unroll
            for (int w = 0; w < QBK / 4; ++w)
              rsum[i] = dot4<TB, unsigned char>(*reinterpret_cast<const unsigned int*>(bs + (r - BM) * QSTR + 4 * w), 0x01010101u, rsum[i]);
          }
        }
        if constexpr (CFG::IMMA) {
          const int lane = tid & 31, warp = tid >> 5, g8 = lane >> 2, t4 = lane & 3;
          const int wm = (warp / CFG::WN) * (BM / CFG::WM), wn = (warp % CFG::WN) * (BN / CFG::WN);
#pragma unroll
          for (int ks = 0; ks < QBK; ks += 32) {
            unsigned int af[MI][4], bf[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
              const unsigned char* p = as + (wm + i * 16 + g8) * QSTR + ks + 4 * t4;
              af[i][0] = *reinterpret_cast<const unsigned int*>(p);
              af[i][1] = *reinterpret_cast<const unsigned int*>(p + 8 * QSTR);
              af[i][2] = *reinterpret_cast<const unsigned int*>(p + 16);
              af[i][3] = *reinterpret_cast<const unsigned int*>(p + 8 * QSTR + 16);
            }
#pragma unroll
            for (int j = 0; j < NI; ++j) {
              const unsigned char* p = bs + (wn + j * 8 + g8) * QSTR + ks + 4 * t4;
              bf[j][0] = *reinterpret_cast<const unsigned int*>(p);
              bf[j][1] = *reinterpret_cast<const unsigned int*>(p + 16);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
              for (int j = 0; j < NI; ++j) imma<TA, TB>(acc[i][j], af[i], bf[j]);
          }
        } else {
          const int tx = tid & 15, ty = tid >> 4;
#pragma unroll 4
          for (int w = 0; w < QBK / 4; ++w) {
            unsigned int a[MI], b[NI];
#pragma unroll
            for (int i = 0; i < MI; ++i) a[i] = *reinterpret_cast<const unsigned int*>(as + (ty + 16 * i) * QSTR + 4 * w);
#pragma unroll
            for (int j = 0; j < NI; ++j) b[j] = *reinterpret_cast<const unsigned int*>(bs + (tx + 16 * j) * QSTR + 4 * w);
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
              for (int j = 0; j < NI; ++j) acc[i][j][0] = dot4<TA, TB>(a[i], b[j], acc[i][j][0]);
          }
        }
      }
      cp_async_wait<0>();
      __syncthreads();  // every warp is done with the stages: reuse them for the epilogue
      int* Es = reinterpret_cast<int*>(smem);
      if constexpr (CFG::IMMA) {
        const int lane = tid & 31, warp = tid >> 5, g8 = lane >> 2, t4 = lane & 3;
        const int wm = (warp / CFG::WN) * (BM / CFG::WM), wn = (warp % CFG::WN) * (BN / CFG::WN);
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r)
              Es[(wm + i * 16 + g8 + 8 * (r >> 1)) * (BN + 1) + wn + j * 8 + 2 * t4 + (r & 1)] = acc[i][j][r];
      } else {
        const int tx = tid & 15, ty = tid >> 4;
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j) Es[(ty + 16 * i) * (BN + 1) + tx + 16 * j] = acc[i][j][0];
      }
#pragma unroll
      for (int i = 0; i < G::NSUM; ++i)
        if (tid + i * THREADS < BM + BN) sums[tid + i * THREADS] = rsum[i];
      __syncthreads();
      const bool rows_fast = g.y_m == 1 && g.y_ji != 1;
      const int Kz = (int)g.K;
#pragma unroll 1
      for (int e = tid; e < BM * BN; e += THREADS) {
        const int row = rows_fast ? e % BM : e / BN, col = rows_fast ? e / BM : e % BN;
        const i64 m = m0 + row, j = n0 + col;
        if (m >= g.M || j >= g.N) continue;
        i64 jo = 0, ji = j;
        if (g.jdiv < g.N) {
          jo = j / g.jdiv;
          ji = j - jo * g.jdiv;
        }
        const i64 rid = z * q.row_bst + m;
        const int a0 = zp_at(za, rid * q.za_st), b0 = zp_at(zb, j * q.zb_st);  // conv: zb_st = 0
        const int v = Es[row * (BN + 1) + col] - b0 * sums[row] - a0 * sums[BM + col] + Kz * a0 * b0;
        q_store(Y, o.y + m * g.y_m + jo * g.y_jo + ji * g.y_ji, q, v, srow, scol, ys, yz, bias, rid, j);
      }
      __syncthreads();  // the next tile's prologue overwrites the staging buffer
    }
  }
}
