// CPU emulation of the CUDA features our kernels use, for testing without a GPU
// (ep_cuda.emulator compiles a kernel file with g++ after this header). Blocks run one after the
// other; the threads of a block are real threads, so __syncthreads, warp shuffles/ballots,
// __shared__ memory and atomics keep their CUDA semantics. Not used by the real provider.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define EP_HOST_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static  // one block runs at a time: its threads share function statics

struct emu_dim3 { unsigned int x = 1, y = 1, z = 1; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline thread_local int emu_tid = 0;
inline emu_dim3 blockDim, gridDim;

struct EmuWarp {
  std::unique_ptr<std::barrier<>> bar;
  unsigned long long slots[32];
  unsigned int xbuf[32][8];  // warp all-gather buffer (software tensor-core MMA)
};
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<EmuWarp>* emu_warps = nullptr;
inline std::atomic<int> emu_count{0};
inline unsigned char* emu_dyn_smem = nullptr;  // the block's dynamic shared memory

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline int __syncthreads_count(int p) {
  __syncthreads();
  if (p) emu_count.fetch_add(1);
  __syncthreads();
  const int r = emu_count.load();
  __syncthreads();
  if (emu_tid == 0) emu_count.store(0);
  return r;
}

template <typename T> inline T __shfl_xor_sync(unsigned int, T v, int m) {
  static_assert(sizeof(T) <= 8, "shuffle of a wide type");
  EmuWarp& w = (*emu_warps)[emu_tid / 32];
  const int lane = emu_tid % 32;
  std::memcpy(&w.slots[lane], &v, sizeof(T));
  w.bar->arrive_and_wait();
  T r;
  std::memcpy(&r, &w.slots[lane ^ m], sizeof(T));
  w.bar->arrive_and_wait();
  return r;
}
template <typename T> inline T __shfl_sync(unsigned int, T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a wide type");
  EmuWarp& w = (*emu_warps)[emu_tid / 32];
  const int lane = emu_tid % 32;
  std::memcpy(&w.slots[lane], &v, sizeof(T));
  w.bar->arrive_and_wait();
  T r;
  std::memcpy(&r, &w.slots[src & 31], sizeof(T));
  w.bar->arrive_and_wait();
  return r;
}
// Every lane of the warp receives the n (<= 8) words of all 32 lanes: all[lane * n + j].
inline void emu_warp_allgather(const unsigned int* mine, unsigned int* all, int n) {
  EmuWarp& w = (*emu_warps)[emu_tid / 32];
  const int lane = emu_tid % 32;
  for (int j = 0; j < n; ++j) w.xbuf[lane][j] = mine[j];
  w.bar->arrive_and_wait();
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < n; ++j) all[l * n + j] = w.xbuf[l][j];
  w.bar->arrive_and_wait();
}
inline unsigned int __ballot_sync(unsigned int, int p) {
  EmuWarp& w = (*emu_warps)[emu_tid / 32];
  const int lane = emu_tid % 32;
  w.slots[lane] = p ? 1 : 0;
  w.bar->arrive_and_wait();
  unsigned int mask = 0;
  for (int l = 0; l < 32; ++l) mask |= (unsigned int)(w.slots[l] ? 1u : 0u) << l;
  w.bar->arrive_and_wait();
  return mask;
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline unsigned int atomicCAS(unsigned int* a, unsigned int c, unsigned int v) {
  return __sync_val_compare_and_swap(a, c, v);
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
  return __sync_val_compare_and_swap(a, c, v);
}
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __int_as_float(unsigned int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned int __float_as_uint(float v) { unsigned int u; std::memcpy(&u, &v, 4); return u; }
inline double __longlong_as_double(unsigned long long v) { double d; std::memcpy(&d, &v, 8); return d; }

// dp4a: c + the dot product of the four bytes of a and b, each operand's bytes signed or unsigned;
// the sum wraps at 32 bits as the hardware's does.
inline int emu_dp4a(unsigned int a, unsigned int b, int c, bool sa, bool sb) {
  unsigned int s = (unsigned int)c;
  for (int q = 0; q < 4; ++q) {
    const unsigned int x = (a >> (8 * q)) & 0xffu, y = (b >> (8 * q)) & 0xffu;
    const int xv = sa ? (int)(signed char)x : (int)x, yv = sb ? (int)(signed char)y : (int)y;
    s += (unsigned int)(xv * yv);
  }
  return (int)s;
}
inline int __dp4a(int a, int b, int c) { return emu_dp4a((unsigned int)a, (unsigned int)b, c, true, true); }
inline unsigned int __dp4a(unsigned int a, unsigned int b, unsigned int c) {
  return (unsigned int)emu_dp4a(a, b, (int)c, false, false);
}

// cuLaunchKernel semantics: args[i] points at the bytes of parameter i.
template <typename... P, std::size_t... I>
void emu_call(void (*k)(P...), void** args, std::index_sequence<I...>) {
  k(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}

// dims: grid x/y/z, block x/y/z, dynamic shared memory bytes.
template <typename... P> void emu_launch(void (*k)(P...), const unsigned int* dims, void** args) {
  gridDim = {dims[0], dims[1], dims[2]};
  blockDim = {dims[3], dims[4], dims[5]};
  const int n = (int)(dims[3] * dims[4] * dims[5]);
  // all-ones bytes: a float read before it was written is NaN, which the tests notice
  std::vector<unsigned long long> dyn((dims[6] + 7) / 8 + 2, ~0ull);
  emu_dyn_smem = reinterpret_cast<unsigned char*>(((reinterpret_cast<std::uintptr_t>(dyn.data()) + 15) / 16) * 16);
  for (unsigned int bz = 0; bz < dims[2]; ++bz)
    for (unsigned int by = 0; by < dims[1]; ++by)
      for (unsigned int bx = 0; bx < dims[0]; ++bx) {
        std::barrier<> bar(n);
        std::vector<EmuWarp> warps((n + 31) / 32);
        for (int w = 0; w < (int)warps.size(); ++w)
          warps[w].bar = std::make_unique<std::barrier<>>(std::min(32, n - 32 * w));
        emu_block_barrier = &bar;
        emu_warps = &warps;
        std::vector<std::thread> ts;
        ts.reserve(n);
        for (int t = 0; t < n; ++t) {
          ts.emplace_back([=, &bar, &warps] {
            emu_tid = t;
            threadIdx = {t % dims[3], (t / dims[3]) % dims[4], t / (dims[3] * dims[4])};
            blockIdx = {bx, by, bz};
            emu_call(k, args, std::index_sequence_for<P...>{});
            bar.arrive_and_drop();  // like a CUDA thread that exited: later barriers skip it
            warps[t / 32].bar->arrive_and_drop();
          });
        }
        for (auto& th : ts) th.join();
      }
}
