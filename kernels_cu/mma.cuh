// Architecture-specific primitives of the GEMM/conv kernels, each with a portable fallback:
//
//   cp_async16 / cp_async_commit / cp_async_wait   cp.async on sm_80+; elsewhere a synchronous
//                                                  16-byte copy (same smem result, no overlap)
//   Mma<T>::run                                    one warp-wide 16x8xKS tensor-core MMA, fp32
//                                                  accumulate: mma.sync m16n8k8 .tf32 (sm_80+),
//                                                  m16n8k16 .f16/.bf16 (sm_80+), 2x m16n8k8 .f16
//                                                  (sm_75); elsewhere a software MMA
//
// The software MMA exchanges the fragments of the 32 lanes and computes exactly what the PTX
// instruction computes from the documented fragment layouts. The CPU emulator (ep_cuda.emulator)
// always takes the fallbacks, so it runs the tiling, staging, fragment indexing and epilogue of
// the tensor-core kernels; only the inline PTX itself is checked by NVRTC alone.

#if !defined(EP_HOST_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define EP_SM80 1
#else
#define EP_SM80 0
#endif
#if !defined(EP_HOST_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
#define EP_SM75 1
#else
#define EP_SM75 0
#endif

// Dynamic shared memory of a kernel (the emulator hands each block its own buffer).
#ifdef EP_HOST_EMULATION
#define EP_DYN_SMEM(type, name) type* name = reinterpret_cast<type*>(emu_dyn_smem)
#else
#define EP_DYN_SMEM(type, name) \
  extern __shared__ __align__(16) unsigned char ep_dyn_smem_[]; \
  type* name = reinterpret_cast<type*>(ep_dyn_smem_)
#endif

struct __align__(16) vec16 { unsigned int w[4]; };
struct __align__(8) vec8 { unsigned int w[2]; };
struct __align__(16) float4v { float v[4]; };

// ---------------------------------------------------------------- bfloat16 storage type
struct __align__(2) bf16_t { unsigned short x; };
__device__ __forceinline__ float b2f(bf16_t h) { return __uint_as_float((unsigned int)h.x << 16); }
__device__ __forceinline__ bf16_t f2b(float f) {  // round to nearest even; NaN stays NaN
  const unsigned int u = __float_as_uint(f);
  bf16_t h;
  if ((u & 0x7fffffffu) > 0x7f800000u) { h.x = (unsigned short)((u >> 16) | 0x40u); return h; }
  h.x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return h;
}
template <> struct Cvt<float, bf16_t> {
  static __device__ __forceinline__ float f(bf16_t v) { return b2f(v); }
};
template <> struct Cvt<bf16_t, float> {
  static __device__ __forceinline__ bf16_t f(float v) { return f2b(v); }
};

// ---------------------------------------------------------------- asynchronous copies
__device__ __forceinline__ unsigned int smem_u32(const void* p) {
#if EP_SM80
  return (unsigned int)__cvta_generic_to_shared(p);
#else
  return 0u;
#endif
}

// 16 bytes global -> shared; when !pred the destination is zero-filled and gmem is not read.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
#if EP_SM80
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 16 : 0));
#else
  vec16 v;
  if (pred) {
    v = *reinterpret_cast<const vec16*>(gmem);
  } else {
    v.w[0] = v.w[1] = v.w[2] = v.w[3] = 0u;
  }
  *reinterpret_cast<vec16*>(smem) = v;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if EP_SM80
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if EP_SM80
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---------------------------------------------------------------- software MMA
// Element (row, k) of the A fragment and (k, col) of the B fragment, per the PTX ISA layouts
// (g = lane / 4, t = lane % 4):
//   tf32 m16n8k8 : a[r] = A[g + 8*(r%2)][t + 4*(r/2)]        b[r] = B[t + 4*r][g]
//   16-bit k16   : a[r] = A[g + 8*(r%2)][2t + 8*(r/2) + {0,1}] (low half = even k)
//                  b[r] = B[2t + 8*r + {0,1}][g]
//   C/D          : c[r] = C[g + 8*(r/2)][2t + r%2]
template <int NW> __device__ __forceinline__ void warp_allgather(const unsigned int* mine,
                                                                 unsigned int* all) {
#ifdef EP_HOST_EMULATION
  emu_warp_allgather(mine, all, NW);
#else
  for (int l = 0; l < 32; ++l)
#pragma unroll
    for (int j = 0; j < NW; ++j) all[l * NW + j] = __shfl_sync(0xffffffffu, mine[j], l);
#endif
}

// KIND 0: tf32 (the tensor core reads the upper 19 bits of each fp32: the rest is dropped),
// 1: f16, 2: bf16.
template <int KIND> __device__ __forceinline__ float frag_elem(unsigned int w, int hi) {
  if constexpr (KIND == 0) return __uint_as_float(w & 0xffffe000u);
  else {
    const unsigned short h = (unsigned short)(hi ? (w >> 16) : (w & 0xffffu));
    if constexpr (KIND == 1) { half_t v; v.x = h; return h2f(v); }
    else { bf16_t v; v.x = h; return b2f(v); }
  }
}

template <int KIND>
__device__ __noinline__ void mma_sw(float* c, const unsigned int* a, const unsigned int* b) {
  unsigned int mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  unsigned int all[32 * 6];
  warp_allgather<6>(mine, all);
  const int lane = (int)(threadIdx.x & 31), g = lane >> 2, t = lane & 3;
  constexpr int KS = KIND == 0 ? 8 : 16;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
    float s = c[r];
    for (int k = 0; k < KS; ++k) {
      float av, bv;
      if constexpr (KIND == 0) {
        av = frag_elem<0>(all[((row & 7) * 4 + (k & 3)) * 6 + (row >> 3) + 2 * (k >> 2)], 0);
        bv = frag_elem<0>(all[(col * 4 + (k & 3)) * 6 + 4 + (k >> 2)], 0);
      } else {
        const int kp = k >> 1;  // index of the 2-element pair
        av = frag_elem<KIND>(all[((row & 7) * 4 + (kp & 3)) * 6 + (row >> 3) + 2 * (kp >> 2)], k & 1);
        bv = frag_elem<KIND>(all[(col * 4 + (kp & 3)) * 6 + 4 + (kp >> 2)], k & 1);
      }
      s = fmaf(av, bv, s);
    }
    c[r] = s;
  }
}

// ---------------------------------------------------------------- one warp MMA per element type
template <typename T> struct Mma;

template <> struct Mma<float> {  // TF32 inputs, FP32 accumulate
  static constexpr int KS = 8;
  static __device__ __forceinline__ void run(float* c, const unsigned int* a, const unsigned int* b) {
#if EP_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    mma_sw<0>(c, a, b);
#endif
  }
};

template <> struct Mma<half_t> {  // FP16 inputs, FP32 accumulate
  static constexpr int KS = 16;
  static __device__ __forceinline__ void run(float* c, const unsigned int* a, const unsigned int* b) {
#if EP_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif EP_SM75
    // k16 = two k8 halves: (a0, a1, b0) covers k 0..7, (a2, a3, b1) covers k 8..15
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#else
    mma_sw<1>(c, a, b);
#endif
  }
};

template <> struct Mma<bf16_t> {  // BF16 inputs, FP32 accumulate
  static constexpr int KS = 16;
  static __device__ __forceinline__ void run(float* c, const unsigned int* a, const unsigned int* b) {
#if EP_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    mma_sw<2>(c, a, b);
#endif
  }
};
