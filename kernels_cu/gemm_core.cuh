// The tiled GEMM engine shared by gemm.cu (MatMul/Gemm) and conv.cu (implicit-GEMM convolution):
//
//   Y[z](m, j) = act(alpha * sum_k A[z](m, k) * B[z](k, j) + beta * C[z](m, j) + R[z](m, j))
//
// * A(m, k) and B(k, j) are read through element strides (transposes, broadcast batch dims and
//   views cost nothing); for a convolution B is the im2col matrix gathered on the fly from x.
// * C (e.g. a bias, stride 0 along broadcast axes) and R (a residual) are optional; the column
//   index j may be split as (j / jdiv, j % jdiv) for C, R and Y, which lets a convolution write
//   (image, channel, position) layouts such as NCHW or NHWC directly.
// * Two main loops: SIMT fp32 FMA (simt_body: block tile BM x BN, 4x4 register sub-tiles, K step
//   BK, register-staged double buffer) and tensor cores (tc_body: mma.sync warp tiles, STAGES-deep
//   cp.async pipeline into dynamic shared memory).
// * Tiles are visited in groups of 8 tile rows (better L2 reuse) through a grid-stride loop, so
//   any grid size is correct (the CPU emulator clamps grids to 2 blocks per dimension).
#include "common.cuh"
#include "act.cuh"
#include "mma.cuh"

#define GEMM_MAXB 6  // batch dims after collapsing (MatMul broadcasting; conv groups)

struct GemmArgs {
  i64 M, N, K;
  i64 batches, nb;
  i64 bshape[GEMM_MAXB];
  i64 a_bst[GEMM_MAXB], b_bst[GEMM_MAXB], c_bst[GEMM_MAXB], r_bst[GEMM_MAXB], y_bst[GEMM_MAXB];
  i64 sam, sak, sbn, sbk;  // A(m,k) = A[m*sam + k*sak]; B(k,j) = B[j*sbn + k*sbk] (plain GEMM)
  i64 a_vec, b_vec;        // 0 scalar loads, 1 vectors along k, 2 vectors along m (A) / j (B)
  i64 jdiv;                // epilogue column split (>= N: no split)
  i64 c_m, c_jo, c_ji, r_m, r_jo, r_ji, y_m, y_jo, y_ji;
  // implicit-GEMM convolution: column j = (image, output position), k = (c, kd, kh, kw) or,
  // tap-major (channels innermost, for channels-last x), (kd, kh, kw, c)
  i64 cv_cpg, cv_tapmajor, cv_ksp, cv_khw;
  i64 cv_k[3], cv_out[3], cv_in[3], cv_stride[3], cv_pad[3], cv_dil[3];
  i64 cv_xn, cv_xc, cv_xs[3];
};

struct BatchOff { i64 a, b, c, r, y; };

__device__ __forceinline__ BatchOff batch_offsets(const GemmArgs& g, i64 z) {
  BatchOff o = {0, 0, 0, 0, 0};
  for (int d = (int)g.nb - 1; d >= 0; --d) {
    const i64 c = z % g.bshape[d];
    z /= g.bshape[d];
    o.a += c * g.a_bst[d];
    o.b += c * g.b_bst[d];
    o.c += c * g.c_bst[d];
    o.r += c * g.r_bst[d];
    o.y += c * g.y_bst[d];
  }
  return o;
}

// Linear tile t -> (tile row, tile column), walking 8 tile rows at a time.
__device__ __forceinline__ void tile_coords(i64 t, i64 tiles_m, i64 tiles_n, i64& tm, i64& tn) {
  const i64 per_group = 8 * tiles_n;
  const i64 first = (t / per_group) * 8;
  const i64 gsz = tiles_m - first < 8 ? tiles_m - first : 8;
  const i64 r = t % per_group;
  tm = first + r % gsz;
  tn = r / gsz;
}

struct Epi {
  float alpha, beta, p0, p1;
  int act;
};

// Epilogue of one BM' x BN tile whose fp32 accumulators were staged in shared memory
// Es[row * (BN + 1) + col] (odd stride: conflict-free for both walking orders). Threads walk the
// tile along the output's contiguous axis (columns, or rows when Y is contiguous along m, e.g.
// channels-last conv output), so the stores coalesce; the loop is not unrolled, which keeps a
// single copy of the epilogue code in the kernel.
template <typename T, int ROWS, int BN, int THREADS>
__device__ __forceinline__ void epi_tile(const float* Es, const GemmArgs& g, const BatchOff& o,
                                         const Epi& e, const T* C, const T* R, T* Y, i64 m0,
                                         i64 n0) {
  const bool rows_fast = g.y_m == 1 && g.y_ji != 1;
#pragma unroll 1
  for (int q = (int)threadIdx.x; q < ROWS * BN; q += THREADS) {
    const int row = rows_fast ? q % ROWS : q / BN, col = rows_fast ? q / ROWS : q % BN;
    const i64 m = m0 + row, j = n0 + col;
    if (m >= g.M || j >= g.N) continue;
    i64 jo = 0, ji = j;
    if (g.jdiv < g.N) {
      jo = j / g.jdiv;
      ji = j - jo * g.jdiv;
    }
    float v = e.alpha * Es[row * (BN + 1) + col];
    if (C) v += e.beta * cvt<float>(C[o.c + m * g.c_m + jo * g.c_jo + ji * g.c_ji]);
    if (R) v += cvt<float>(R[o.r + m * g.r_m + jo * g.r_jo + ji * g.r_ji]);
    if (e.act >= 0) v = act_rt(e.act, v, e.p0, e.p1);
    Y[o.y + m * g.y_m + jo * g.y_jo + ji * g.y_ji] = cvt<T>(v);
  }
}

// ---------------------------------------------------------------- convolution gather
struct ColInfo {
  i64 base;       // image offset in x
  int d0, h0, w0; // input coordinates of tap (0, 0, 0)
  int ok;         // column inside the matrix
};

__device__ __forceinline__ ColInfo col_info(const GemmArgs& g, i64 j) {
  ColInfo c;
  c.ok = j < g.N;
  if (!c.ok) j = 0;
  const i64 nb = j / g.jdiv;
  i64 p = j - nb * g.jdiv;
  const i64 ow = p % g.cv_out[2];
  p /= g.cv_out[2];
  const i64 oh = p % g.cv_out[1], od = p / g.cv_out[1];
  c.base = nb * g.cv_xn;
  c.d0 = (int)(od * g.cv_stride[0] - g.cv_pad[0]);
  c.h0 = (int)(oh * g.cv_stride[1] - g.cv_pad[1]);
  c.w0 = (int)(ow * g.cv_stride[2] - g.cv_pad[2]);
  return c;
}

// Offset in x of im2col element (k, column c), or -1 outside the input (padding) / matrix.
__device__ __forceinline__ i64 conv_offset(const GemmArgs& g, const ColInfo& c, i64 k) {
  if (!c.ok || k >= g.K) return -1;
  int ci, tap;
  const int kk = (int)k;
  if (g.cv_tapmajor) {
    tap = kk / (int)g.cv_cpg;
    ci = kk - tap * (int)g.cv_cpg;
  } else {
    ci = kk / (int)g.cv_ksp;
    tap = kk - ci * (int)g.cv_ksp;
  }
  const int kd = tap / (int)g.cv_khw;
  const int r = tap - kd * (int)g.cv_khw;
  const int kh = r / (int)g.cv_k[2], kw = r - kh * (int)g.cv_k[2];
  const int id = c.d0 + kd * (int)g.cv_dil[0], ih = c.h0 + kh * (int)g.cv_dil[1];
  const int iw = c.w0 + kw * (int)g.cv_dil[2];
  if (id < 0 || id >= g.cv_in[0] || ih < 0 || ih >= g.cv_in[1] || iw < 0 || iw >= g.cv_in[2]) return -1;
  return c.base + ci * g.cv_xc + id * g.cv_xs[0] + ih * g.cv_xs[1] + iw * g.cv_xs[2];
}

// ---------------------------------------------------------------- SIMT main loop
// Block tile BM x BN, K step BK; thread (tx, ty) owns RM x RN sub-tiles of 4x4 at rows
// ty*4 + i*(BM/RM) and columns tx*4 + j*(BN/RN), so its shared-memory reads are 16-byte vectors.
struct SimtBig { static constexpr int BM = 128, BN = 128, BK = 8, RM = 2, RN = 2; };
struct SimtTall { static constexpr int BM = 128, BN = 64, BK = 8, RM = 2, RN = 1; };
struct SimtSmall { static constexpr int BM = 64, BN = 64, BK = 16, RM = 1, RN = 1; };

template <typename T> __device__ __forceinline__ void load4f(float* v, const T* p) {
  if constexpr (sizeof(T) == 4) {
    const vec16 w = *reinterpret_cast<const vec16*>(p);
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = __uint_as_float(w.w[q]);
  } else {
    const vec8 w = *reinterpret_cast<const vec8*>(p);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      T h;
      h.x = (unsigned short)((w.w[q >> 1] >> (16 * (q & 1))) & 0xffffu);
      v[q] = cvt<float>(h);
    }
  }
}

// Chunk c of an R x BK operand tile: mode 1 walks k within a row (vector along k), modes 0 and 2
// walk rows within a k (mode 2 vector along rows, mode 0 four scalar loads).
template <int R, int BK> __device__ __forceinline__ void chunk_pos(int c, int mode, int& row, int& kk) {
  if (mode == 1) {
    row = c / (BK / 4);
    kk = (c % (BK / 4)) * 4;
  } else {
    kk = c / (R / 4);
    row = (c % (R / 4)) * 4;
  }
}

// Global -> registers for a plain strided operand X(r, k) = X[off + r*sr + k*sk].
template <typename T, int R, int BK, int THREADS, int L>
__device__ __forceinline__ void simt_fetch(float (&v)[L][4], const T* X, i64 off, i64 sr, i64 sk,
                                           i64 rows, i64 K, i64 r0, i64 k0, int mode) {
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    if (c >= R * BK / 4) break;
    int row, kk;
    chunk_pos<R, BK>(c, mode, row, kk);
    const i64 r = r0 + row, k = k0 + kk;
    if (mode == 1) {  // host checked: sk == 1, K % 4 == 0, aligned
      if (r < rows && k < K) load4f(v[l], X + off + r * sr + k);
      else v[l][0] = v[l][1] = v[l][2] = v[l][3] = 0.0f;
    } else if (mode == 2) {  // sr == 1, rows % 4 == 0, aligned
      if (r < rows && k < K) load4f(v[l], X + off + r + k * sk);
      else v[l][0] = v[l][1] = v[l][2] = v[l][3] = 0.0f;
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        v[l][q] = (r + q < rows && k < K) ? cvt<float>(X[off + (r + q) * sr + k * sk]) : 0.0f;
    }
  }
}

// Registers -> shared tile S[BK][R + 4] (k-major rows of the operand's m or n index).
template <int R, int BK, int THREADS, int L>
__device__ __forceinline__ void simt_store(float* S, const float (&v)[L][4], int mode) {
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    if (c >= R * BK / 4) break;
    int row, kk;
    chunk_pos<R, BK>(c, mode, row, kk);
    if (mode == 1) {
#pragma unroll
      for (int q = 0; q < 4; ++q) S[(kk + q) * (R + 4) + row] = v[l][q];
    } else {  // 4 consecutive rows: one 16-byte store ((R + 4) and row are multiples of 4)
      float4v w;
#pragma unroll
      for (int q = 0; q < 4; ++q) w.v[q] = v[l][q];
      *reinterpret_cast<float4v*>(&S[kk * (R + 4) + row]) = w;
    }
  }
}

// Global -> registers for the im2col operand of a convolution (rows are output columns j).
template <typename T, int R, int BK, int THREADS, int L>
__device__ __forceinline__ void simt_fetch_conv(float (&v)[L][4], const T* x, i64 off,
                                                const GemmArgs& g, const ColInfo* ci, i64 k0,
                                                int mode) {
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    if (c >= R * BK / 4) break;
    int row, kk;
    chunk_pos<R, BK>(c, mode, row, kk);
    const i64 k = k0 + kk;
    if (mode == 1) {  // tap-major, channels contiguous, cpg % 4 == 0: 4 channels of one tap
      const i64 o = conv_offset(g, ci[l], k);
      if (o >= 0) load4f(v[l], x + off + o);
      else v[l][0] = v[l][1] = v[l][2] = v[l][3] = 0.0f;
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const i64 o = conv_offset(g, ci[q], k);
        v[l][q] = o >= 0 ? cvt<float>(x[off + o]) : 0.0f;
      }
    }
  }
}

template <typename T, class CFG, bool CONV>
__device__ void simt_body(const T* __restrict__ A, const T* __restrict__ B, const T* C, const T* R,
                          T* Y, const Epi& e, const GemmArgs& g) {
  constexpr int BM = CFG::BM, BN = CFG::BN, BK = CFG::BK, RM = CFG::RM, RN = CFG::RN;
  constexpr int TX = BN / (4 * RN), TY = BM / (4 * RM), THREADS = TX * TY;
  constexpr int LA = (BM * BK / 4 + THREADS - 1) / THREADS, LB = (BN * BK / 4 + THREADS - 1) / THREADS;
  constexpr int CI = LB > 4 ? LB : 4;
  constexpr int AE = BK * (BM + 4), BE = BK * (BN + 4), EROWS = BM / RM;
  constexpr int STAGE_F = 2 * (AE + BE), EPI_F = EROWS * (BN + 1);
  // the operand stages and the epilogue staging share one buffer
  constexpr int SMEM_F = STAGE_F > EPI_F ? STAGE_F : EPI_F;
  __shared__ float4v smem_v[(SMEM_F + 3) / 4];  // float4v: 16-byte aligned
  float* smem = reinterpret_cast<float*>(smem_v);
  const int tx = (int)threadIdx.x % TX, ty = (int)threadIdx.x / TX;
  const int amode = (int)g.a_vec, bmode = (int)g.b_vec;
  const i64 tiles_m = (g.M + BM - 1) / BM, tiles_n = (g.N + BN - 1) / BN;
  const i64 ktiles = (g.K + BK - 1) / BK;
  for (i64 z = blockIdx.y; z < g.batches; z += gridDim.y) {
    const BatchOff o = batch_offsets(g, z);
    for (i64 t = blockIdx.x; t < tiles_m * tiles_n; t += gridDim.x) {
      i64 tm, tn;
      tile_coords(t, tiles_m, tiles_n, tm, tn);
      const i64 m0 = tm * BM, n0 = tn * BN;
      ColInfo ci[CI];
      if constexpr (CONV) {  // the columns this thread gathers stay fixed for the whole tile
        if (bmode == 1) {
#pragma unroll
          for (int l = 0; l < LB; ++l) {
            int row, kk;
            chunk_pos<BN, BK>((int)threadIdx.x + l * THREADS, 1, row, kk);
            ci[l] = col_info(g, n0 + row);
          }
        } else {
          int row, kk;
          chunk_pos<BN, BK>((int)threadIdx.x, 0, row, kk);
#pragma unroll
          for (int q = 0; q < 4; ++q) ci[q] = col_info(g, n0 + row + q);
        }
      }
      float acc[RM * 4][RN * 4];
#pragma unroll
      for (int i = 0; i < RM * 4; ++i)
#pragma unroll
        for (int j = 0; j < RN * 4; ++j) acc[i][j] = 0.0f;
      float ra[LA][4], rb[LB][4];
      // register-staged double buffer: fetch tile k+1 while computing tile k
      simt_fetch<T, BM, BK, THREADS, LA>(ra, A, o.a, g.sam, g.sak, g.M, g.K, m0, 0, amode);
      if constexpr (CONV) simt_fetch_conv<T, BN, BK, THREADS, LB>(rb, B, o.b, g, ci, 0, bmode);
      else simt_fetch<T, BN, BK, THREADS, LB>(rb, B, o.b, g.sbn, g.sbk, g.N, g.K, n0, 0, bmode);
      simt_store<BM, BK, THREADS, LA>(smem, ra, amode);
      simt_store<BN, BK, THREADS, LB>(smem + 2 * AE, rb, bmode);
      __syncthreads();
      for (i64 kt = 0; kt < ktiles; ++kt) {
        const int cur = (int)(kt & 1);
        const bool more = kt + 1 < ktiles;
        if (more) {
          const i64 k1 = (kt + 1) * BK;
          simt_fetch<T, BM, BK, THREADS, LA>(ra, A, o.a, g.sam, g.sak, g.M, g.K, m0, k1, amode);
          if constexpr (CONV) simt_fetch_conv<T, BN, BK, THREADS, LB>(rb, B, o.b, g, ci, k1, bmode);
          else simt_fetch<T, BN, BK, THREADS, LB>(rb, B, o.b, g.sbn, g.sbk, g.N, g.K, n0, k1, bmode);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          float a[RM * 4], b[RN * 4];
#pragma unroll
          for (int i = 0; i < RM; ++i) {
            const float4v w = *reinterpret_cast<const float4v*>(&smem[cur * AE + kk * (BM + 4) + ty * 4 + i * (BM / RM)]);
            a[i * 4 + 0] = w.v[0]; a[i * 4 + 1] = w.v[1]; a[i * 4 + 2] = w.v[2]; a[i * 4 + 3] = w.v[3];
          }
#pragma unroll
          for (int j = 0; j < RN; ++j) {
            const float4v w = *reinterpret_cast<const float4v*>(&smem[2 * AE + cur * BE + kk * (BN + 4) + tx * 4 + j * (BN / RN)]);
            b[j * 4 + 0] = w.v[0]; b[j * 4 + 1] = w.v[1]; b[j * 4 + 2] = w.v[2]; b[j * 4 + 3] = w.v[3];
          }
#pragma unroll
          for (int i = 0; i < RM * 4; ++i)
#pragma unroll
            for (int j = 0; j < RN * 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {
          simt_store<BM, BK, THREADS, LA>(smem + (cur ^ 1) * AE, ra, amode);
          simt_store<BN, BK, THREADS, LB>(smem + 2 * AE + (cur ^ 1) * BE, rb, bmode);
        }
        __syncthreads();
      }
      // epilogue, one row group (BM / RM rows) at a time through shared memory
#pragma unroll
      for (int i = 0; i < RM; ++i) {
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int j = 0; j < RN * 4; ++j)
            smem[(ty * 4 + q) * (BN + 1) + tx * 4 + (j & 3) + (j >> 2) * (BN / RN)] = acc[i * 4 + q][j];
        __syncthreads();
        epi_tile<T, EROWS, BN, THREADS>(smem, g, o, e, C, R, Y, m0 + i * EROWS, n0);
        __syncthreads();
      }
    }
  }
}

// ---------------------------------------------------------------- tensor-core main loop
// BM x BN block tile of WM x WN warps; a warp owns (BM/WM) x (BN/WN) as MI x NI mma tiles of
// 16 x 8. K step BK = 64 bytes of T; STAGES stages in dynamic shared memory, filled with 16-byte
// cp.async copies when the operand is contiguous and aligned along the stage's inner axis, with
// plain loads otherwise. Each operand is staged K-major ([rows][BK + VEC], for operands
// contiguous along k) or MN-major ([BK][rows + 8]); both paddings keep the fragment reads free
// of bank conflicts and the rows 16-byte aligned.
struct TcBig { static constexpr int BM = 128, BN = 128, WM = 2, WN = 4, STAGES = 4; };
struct TcSmall { static constexpr int BM = 64, BN = 64, WM = 2, WN = 2, STAGES = 3; };

template <typename T, class CFG> struct TcGeom {
  static constexpr int BM = CFG::BM, BN = CFG::BN, WM = CFG::WM, WN = CFG::WN;
  static constexpr int STAGES = CFG::STAGES, THREADS = 32 * WM * WN;
  static constexpr int BK = 64 / (int)sizeof(T), VEC = 16 / (int)sizeof(T);
  static constexpr int WTM = BM / WM, WTN = BN / WN, MI = WTM / 16, NI = WTN / 8;
  static constexpr int KS = Mma<T>::KS;
  static constexpr int KSTRIDE = BK + VEC, ASTRIDE_MN = BM + 8, BSTRIDE_MN = BN + 8;
};

template <typename T> __device__ __forceinline__ T zero_of() {
  T z{};
  return z;
}

template <typename T, int R, int BK, int VEC, int STRIDE, int THREADS>
__device__ __forceinline__ void tc_load_k(T* S, const T* X, i64 off, i64 sr, i64 sk, i64 rows,
                                          i64 K, i64 r0, i64 k0, bool vec) {
  constexpr int CPR = BK / VEC, CH = R * CPR;
#pragma unroll
  for (int l = 0; l < (CH + THREADS - 1) / THREADS; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    if (c >= CH) break;
    const int row = c / CPR, kc = (c % CPR) * VEC;
    const i64 r = r0 + row, k = k0 + kc;
    T* dst = S + row * STRIDE + kc;
    if (vec) {  // host checked: sk == 1, K % VEC == 0, aligned
      const bool p = r < rows && k < K;
      cp_async16(dst, p ? X + off + r * sr + k : X, p);
    } else {
#pragma unroll
      for (int q = 0; q < VEC; ++q)
        dst[q] = (r < rows && k + q < K) ? X[off + r * sr + (k + q) * sk] : zero_of<T>();
    }
  }
}

template <typename T, int R, int BK, int VEC, int STRIDE, int THREADS>
__device__ __forceinline__ void tc_load_mn(T* S, const T* X, i64 off, i64 sr, i64 sk, i64 rows,
                                           i64 K, i64 r0, i64 k0, bool vec) {
  constexpr int CPR = R / VEC, CH = BK * CPR;
#pragma unroll
  for (int l = 0; l < (CH + THREADS - 1) / THREADS; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    if (c >= CH) break;
    const int kk = c / CPR, row = (c % CPR) * VEC;
    const i64 r = r0 + row, k = k0 + kk;
    T* dst = S + kk * STRIDE + row;
    if (vec) {  // host checked: sr == 1, rows % VEC == 0, aligned
      const bool p = r < rows && k < K;
      cp_async16(dst, p ? X + off + r + k * sk : X, p);
    } else {
#pragma unroll
      for (int q = 0; q < VEC; ++q)
        dst[q] = (r + q < rows && k < K) ? X[off + (r + q) * sr + k * sk] : zero_of<T>();
    }
  }
}

template <typename T, int R, int BK, int VEC, int STRIDE, int THREADS, int L>
__device__ __forceinline__ void tc_load_conv(T* S, const T* x, i64 off, const GemmArgs& g,
                                             const ColInfo* ci, i64 k0, bool vec) {
  constexpr int CPR = BK / VEC, CH = R * CPR;
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int c = (int)threadIdx.x + l * THREADS;
    if (c >= CH) break;
    const int row = c / CPR, kc = (c % CPR) * VEC;
    const i64 k = k0 + kc;
    T* dst = S + row * STRIDE + kc;
    (void)row;
    if (vec) {  // tap-major, channels contiguous, cpg % VEC == 0: VEC channels of one tap
      const i64 o = conv_offset(g, ci[l], k);
      cp_async16(dst, o >= 0 ? x + off + o : x, o >= 0);
    } else {
#pragma unroll
      for (int q = 0; q < VEC; ++q) {
        const i64 o = conv_offset(g, ci[l], k + q);
        dst[q] = o >= 0 ? x[off + o] : zero_of<T>();
      }
    }
  }
}

// One 32-bit fragment register: element (r, k) of a 32-bit T, elements (r, k), (r, k + 1) of a
// 16-bit T (low half first), from a K-major or MN-major stage.
template <typename T, bool KMAJ, int STRIDE>
__device__ __forceinline__ unsigned int frag_word(const T* S, int r, int k) {
  if constexpr (KMAJ) return *reinterpret_cast<const unsigned int*>(&S[r * STRIDE + k]);
  else if constexpr (sizeof(T) == 4) return *reinterpret_cast<const unsigned int*>(&S[k * STRIDE + r]);
  else return (unsigned int)S[k * STRIDE + r].x | ((unsigned int)S[(k + 1) * STRIDE + r].x << 16);
}

template <typename T, class CFG, bool AK, bool BKM, bool CONV>
__device__ void tc_body(const T* __restrict__ A, const T* __restrict__ B, const T* C, const T* R,
                        T* Y, const Epi& e, const GemmArgs& g) {
  typedef TcGeom<T, CFG> G;
  constexpr int BM = G::BM, BN = G::BN, BK = G::BK, VEC = G::VEC, THREADS = G::THREADS;
  constexpr int MI = G::MI, NI = G::NI, STAGES = G::STAGES;
  constexpr int AST = AK ? G::KSTRIDE : G::ASTRIDE_MN, BST = BKM ? G::KSTRIDE : G::BSTRIDE_MN;
  constexpr int AE = AK ? BM * G::KSTRIDE : BK * G::ASTRIDE_MN;
  constexpr int BE = BKM ? BN * G::KSTRIDE : BK * G::BSTRIDE_MN;
  constexpr int KQ = sizeof(T) == 4 ? 1 : 2, KOFF = sizeof(T) == 4 ? 4 : 8;
  constexpr int LC = (BN * (BK / VEC) + THREADS - 1) / THREADS;
  EP_DYN_SMEM(T, smem);
  T* As = smem;
  T* Bs = smem + STAGES * AE;
  const int lane = (int)(threadIdx.x & 31), warp = (int)(threadIdx.x >> 5);
  const int g8 = lane >> 2, t4 = lane & 3;
  const int wm = (warp / G::WN) * G::WTM, wn = (warp % G::WN) * G::WTN;
  const bool avec = g.a_vec != 0, bvec = g.b_vec != 0;
  const i64 tiles_m = (g.M + BM - 1) / BM, tiles_n = (g.N + BN - 1) / BN;
  const i64 ktiles = (g.K + BK - 1) / BK;
  for (i64 z = blockIdx.y; z < g.batches; z += gridDim.y) {
    const BatchOff o = batch_offsets(g, z);
    for (i64 t = blockIdx.x; t < tiles_m * tiles_n; t += gridDim.x) {
      i64 tm, tn;
      tile_coords(t, tiles_m, tiles_n, tm, tn);
      const i64 m0 = tm * BM, n0 = tn * BN;
      ColInfo ci[LC];
      if constexpr (CONV) {
#pragma unroll
        for (int l = 0; l < LC; ++l) ci[l] = col_info(g, n0 + ((int)threadIdx.x + l * THREADS) / (BK / VEC));
      }
      auto load_stage = [&](int s, i64 k0) {
        T* as = As + s * AE;
        T* bs = Bs + s * BE;
        if constexpr (AK) tc_load_k<T, BM, BK, VEC, AST, THREADS>(as, A, o.a, g.sam, g.sak, g.M, g.K, m0, k0, avec);
        else tc_load_mn<T, BM, BK, VEC, AST, THREADS>(as, A, o.a, g.sam, g.sak, g.M, g.K, m0, k0, avec);
        if constexpr (CONV) tc_load_conv<T, BN, BK, VEC, BST, THREADS, LC>(bs, B, o.b, g, ci, k0, bvec);
        else if constexpr (BKM) tc_load_k<T, BN, BK, VEC, BST, THREADS>(bs, B, o.b, g.sbn, g.sbk, g.N, g.K, n0, k0, bvec);
        else tc_load_mn<T, BN, BK, VEC, BST, THREADS>(bs, B, o.b, g.sbn, g.sbk, g.N, g.K, n0, k0, bvec);
      };
      float acc[MI][NI][4];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
#pragma unroll
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, (i64)s * BK);
        cp_async_commit();
      }
      for (i64 kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kt landed for every thread; stage kt-1 is no longer read
        const i64 nk = kt + STAGES - 1;
        if (nk < ktiles) load_stage((int)(nk % STAGES), nk * BK);
        cp_async_commit();
        const T* as = As + (int)(kt % STAGES) * AE;
        const T* bs = Bs + (int)(kt % STAGES) * BE;
#pragma unroll
        for (int ks = 0; ks < BK; ks += G::KS) {
          unsigned int af[MI][4], bf[NI][2];
#pragma unroll
          for (int i = 0; i < MI; ++i) {
            const int r = wm + i * 16 + g8, k = ks + KQ * t4;
            af[i][0] = frag_word<T, AK, AST>(as, r, k);
            af[i][1] = frag_word<T, AK, AST>(as, r + 8, k);
            af[i][2] = frag_word<T, AK, AST>(as, r, k + KOFF);
            af[i][3] = frag_word<T, AK, AST>(as, r + 8, k + KOFF);
          }
#pragma unroll
          for (int j = 0; j < NI; ++j) {
            const int n = wn + j * 8 + g8, k = ks + KQ * t4;
            bf[j][0] = frag_word<T, BKM, BST>(bs, n, k);
            bf[j][1] = frag_word<T, BKM, BST>(bs, n, k + KOFF);
          }
#pragma unroll
          for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NI; ++j) Mma<T>::run(acc[i][j], af[i], bf[j]);
        }
      }
      cp_async_wait<0>();
      __syncthreads();  // all warps are done reading the stages
      float* Es = reinterpret_cast<float*>(smem);  // BM x (BN + 1), over the drained stages
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r)
            Es[(wm + i * 16 + g8 + 8 * (r >> 1)) * (BN + 1) + wn + j * 8 + 2 * t4 + (r & 1)] = acc[i][j][r];
      __syncthreads();
      epi_tile<T, BM, BN, THREADS>(Es, g, o, e, C, R, Y, m0, n0);
      __syncthreads();  // the next tile's prologue overwrites the staging buffer
    }
  }
}
