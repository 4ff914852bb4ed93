// A host stand-in for the few CUDA features kd_cuda_kernel.cuh uses, so the kernel's logic (indexing,
// alignment paths, reductions, barriers, row tails, -inf handling) can be exercised on a machine
// without a GPU: every thread of a block is an OS thread, __syncthreads a std::barrier, warp shuffles
// go through per-warp slots. Blocks of the grid run one after another (so `__shared__` = `static`).
// Not a performance model, and host expf/logf stand in for the fast-math intrinsics.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 { unsigned int x, y, z; };
struct uint4 { unsigned int x, y, z, w; };
struct uint2 { unsigned int x, y; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }

namespace emu {
extern thread_local uint3 tls_thread;
extern uint3 g_block, g_grid;
extern std::barrier<>* g_block_barrier;
void warp_exchange_barrier(int warp);
float* warp_slots(int warp);
}  // namespace emu
#define threadIdx (emu::tls_thread)
#define blockIdx (emu::g_block)
#define gridDim (emu::g_grid)

inline void __syncthreads() { emu::g_block_barrier->arrive_and_wait(); }
inline float __shfl_down_sync(unsigned, float v, int off) {
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  float* slots = emu::warp_slots(warp);
  emu::warp_exchange_barrier(warp);  // everyone has read the previous exchange
  slots[lane] = v;
  emu::warp_exchange_barrier(warp);
  return lane + off < 32 ? slots[lane + off] : v;
}

inline float __uint_as_float(unsigned int w) { float f; std::memcpy(&f, &w, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int w; std::memcpy(&w, &f, 4); return w; }
inline float __int_as_float(int w) { float f; std::memcpy(&f, &w, 4); return f; }
// Like the GPU's fast-math intrinsics: exp via exp2 of a float product (ex2.approx), log via lg2.
inline float __expf(float x) { return std::exp2(x * 1.44269504f); }
inline float __logf(float x) { return std::log2(x) * 0.693147181f; }

struct __nv_bfloat16 { unsigned short x; };
struct __half { unsigned short x; };
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  unsigned int w = __float_as_uint(f);
  w += 0x7fffu + ((w >> 16) & 1u);  // round to nearest even (no NaN inputs here)
  return {static_cast<unsigned short>(w >> 16)};
}
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline float __half2float(__half h) { _Float16 v; std::memcpy(&v, &h.x, 2); return static_cast<float>(v); }
inline __half __float2half_rn(float f) { _Float16 v = static_cast<_Float16>(f); __half h; std::memcpy(&h.x, &v, 2); return h; }

template <class P> inline P __ldg(const P* p) { return *p; }
template <class P> inline P __ldcs(const P* p) { return *p; }
template <class P> inline void __stcs(P* p, P v) { *p = v; }
