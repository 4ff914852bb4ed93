// Device code of the fused KD(+CE) kernel; see kd_common.h for the math and kd_cuda.cu for the launch.
//
// One thread block per row (grid-stride over rows). Per row:
//   pass 1  every element read once: online (rescaled) max and normalisers of the teacher at T, the
//           student at T and at 1, and for forward KL the sum A = sum exp(a_i) (a_i - b_i);
//   pass 2  reverse KL / JSD / skew KLs only: the loss and the gradient's row constant G (needs pass 1's maxima);
//   pass 3  when a gradient is asked for: grad[r, :] written in the student's dtype.
// Passes alternate direction over the row so that a re-read starts with what was loaded last (the
// part most likely still in L2). Nothing of size rows x V is allocated; the gradient is the only such
// output. Row offsets (r * stride) are int64, so rows * V may exceed 2^31; indices inside a row are
// int (the host rejects V > 2^30). Arithmetic is float32 (per-row constants in double).
// The gradient buffer must not alias the inputs (the CE term reads s[y] while pass 3 writes).
//
// The includer provides the CUDA types and intrinsics (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h) --
// or, for the host emulation in csrc/cuda/emu/, a stand-in for them.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kd_common.h"

namespace edgekd {
namespace cuda_kd {

// ---- element types ------------------------------------------------------------------------------

template <class X>
struct Elem;
template <>
struct Elem<float> {
  static __device__ __forceinline__ float from_bits(uint32_t w) { return __uint_as_float(w); }
  static __device__ __forceinline__ uint32_t to_bits(float x) { return __float_as_uint(x); }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float from_bits(uint32_t w) { return __uint_as_float((w & 0xffffu) << 16); }
  static __device__ __forceinline__ uint32_t to_bits(float x) {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
  }
};
template <>
struct Elem<__half> {
  static __device__ __forceinline__ float from_bits(uint32_t w) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
  }
  static __device__ __forceinline__ uint32_t to_bits(float x) {
    return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(x)));
  }
};

// Raw loads/stores. STREAM: last use of the data (evict-first); otherwise the read-only path.
template <class X, bool STREAM>
__device__ __forceinline__ float load1(const X* p) {
  if constexpr (sizeof(X) == 4) {
    const unsigned int* q = reinterpret_cast<const unsigned int*>(p);
    return Elem<X>::from_bits(STREAM ? __ldcs(q) : __ldg(q));
  } else {
    const unsigned short* q = reinterpret_cast<const unsigned short*>(p);
    return Elem<X>::from_bits(static_cast<uint32_t>(STREAM ? __ldcs(q) : __ldg(q)));
  }
}

template <class X>
__device__ __forceinline__ void store1(X* p, float v) {
  if constexpr (sizeof(X) == 4) {
    __stcs(reinterpret_cast<unsigned int*>(p), Elem<X>::to_bits(v));
  } else {
    __stcs(reinterpret_cast<unsigned short*>(p), static_cast<unsigned short>(Elem<X>::to_bits(v)));
  }
}

// N elements of X starting at p, which is aligned to N * sizeof(X) (8 or 16 bytes).
template <class X, int N, bool STREAM>
__device__ __forceinline__ void load_vec(const X* p, float* out) {
  constexpr int BYTES = N * static_cast<int>(sizeof(X));
  static_assert(BYTES == 8 || BYTES == 16, "vector loads are 8 or 16 bytes");
  uint32_t w[BYTES / 4];
  if constexpr (BYTES == 16) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    const uint4 u = STREAM ? __ldcs(q) : __ldg(q);
    w[0] = u.x;
    w[1] = u.y;
    w[2] = u.z;
    w[3] = u.w;
  } else {
    const uint2* q = reinterpret_cast<const uint2*>(p);
    const uint2 u = STREAM ? __ldcs(q) : __ldg(q);
    w[0] = u.x;
    w[1] = u.y;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) {
    if constexpr (sizeof(X) == 4) {
      out[k] = Elem<X>::from_bits(w[k]);
    } else {
      out[k] = Elem<X>::from_bits((k & 1) ? (w[k >> 1] >> 16) : w[k >> 1]);  // little endian: low half first
    }
  }
}

template <class X, int N>
__device__ __forceinline__ void store_vec(X* p, const float* v) {
  constexpr int BYTES = N * static_cast<int>(sizeof(X));
  static_assert(BYTES == 8 || BYTES == 16, "vector stores are 8 or 16 bytes");
  uint32_t w[BYTES / 4];
#pragma unroll
  for (int k = 0; k < BYTES / 4; ++k) {
    if constexpr (sizeof(X) == 4) {
      w[k] = Elem<X>::to_bits(v[k]);
    } else {
      w[k] = Elem<X>::to_bits(v[2 * k]) | (Elem<X>::to_bits(v[2 * k + 1]) << 16);
    }
  }
  if constexpr (BYTES == 16) {
    __stcs(reinterpret_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));
  } else {
    __stcs(reinterpret_cast<uint2*>(p), make_uint2(w[0], w[1]));
  }
}

template <int N>
using IC = std::integral_constant<int, N>;

__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }

// ---- kernel arguments ---------------------------------------------------------------------------

struct Args {
  const void* s;
  const void* t;
  void* g;
  const int64_t* labels;
  float* loss;
  int64_t s_stride, t_stride, g_stride;
  int64_t rows, V;
  int64_t ignore_index;
  float T, invT, alpha, beta, grad_scale;
  const float* row_scale;  // [rows] or nullptr: per-row factor on the gradient
  int divergence;
  bool kd;   // the divergence term is present (alpha > 0 and not a degenerate JSD)
  bool ce;   // the hard-label term is present (labels and alpha < 1)
};

// Validates p and fills the kernel arguments; false when p is unusable (the launch is refused).
inline bool make_args(const KDParams& p, Args* a, bool* multi_pass) {
  const bool valid_dtypes = p.s_dtype >= kFloat32 && p.s_dtype <= kFloat16 && p.t_dtype >= kFloat32 &&
                            p.t_dtype <= kFloat16;
  const bool valid_div = p.divergence >= kForwardKL && p.divergence <= kSkewReverseKL;
  if (!valid_dtypes || !valid_div || p.V <= 0 || p.V > (int64_t{1} << 30) || !p.student || !p.loss ||
      !(p.temperature > 0.f) || (p.alpha > 0.f && !p.teacher) || (p.grad && p.g_stride < p.V && p.rows > 1))
    return false;
  a->s = p.student;
  a->t = p.teacher;
  a->g = p.grad;
  a->labels = p.labels;
  a->loss = p.loss;
  a->s_stride = p.s_stride;
  a->t_stride = p.t_stride;
  a->g_stride = p.g_stride;
  a->rows = p.rows;
  a->V = p.V;
  a->ignore_index = p.ignore_index;
  a->T = p.temperature;
  a->invT = static_cast<float>(1.0 / static_cast<double>(p.temperature));
  a->alpha = p.alpha;
  a->beta = p.beta;
  a->grad_scale = p.grad_scale;
  a->row_scale = p.row_scale;
  a->divergence = p.divergence;
  // JSD with beta 0 or 1 is KL(q||q) or KL(p||p), a skew KL with lambda 1 KL(p||p) or KL(q||q): exactly 0
  // with a zero gradient.
  const bool skewed = p.divergence == kSkewKL || p.divergence == kSkewReverseKL;
  const bool degenerate = (p.divergence == kJSD && (p.beta <= 0.f || p.beta >= 1.f)) || (skewed && p.beta >= 1.f);
  a->kd = p.alpha > 0.f && !degenerate;
  a->ce = p.labels != nullptr && p.alpha < 1.f;
  *multi_pass = p.grad != nullptr || (a->kd && p.divergence != kForwardKL);
  return true;
}

// Threads per block for a vocabulary of V.
inline int block_threads(int64_t V) { return V >= 16384 ? 512 : 256; }

// ---- row traversal ------------------------------------------------------------------------------
//
// Calls f(j, sv, tv, gv, IC<N>) for groups of N consecutive elements j..j+N-1 of the row, every
// element exactly once over the block: sv, tv hold the student and teacher values as float (tv zeros
// when !load_t); when WRITE, f fills gv and the gradient row g receives it.
// Vector path (vec_ok): elements [0, h) and the tail past the last full vector go one per thread;
// vectors k = 0..nvec-1 cover [h + k*VEC, h + (k+1)*VEC), thread tid taking k = c*B*U + u*B + tid
// (coalesced for each u), chunks c in forward or reverse order. Scalar path: j = i*B + tid.
template <class S, class Tt, int VEC, int U, int B, bool WRITE, bool STREAM, class F>
__device__ __forceinline__ void traverse(const S* s, const Tt* t, bool load_t, S* g, bool gvec, int V,
                                         int h, int nvec, bool vec_ok, bool rev, F&& f) {
  const int tid = static_cast<int>(threadIdx.x);
  if (vec_ok) {
    const int tail = h + nvec * VEC;  // first element after the vectors
    int j = -1;
    if (tid < h) {
      j = tid;
    } else if (tid - h < V - tail) {
      j = tail + (tid - h);
    }
    if (j >= 0) {
      float sv[1], tv[1], gv[1];
      sv[0] = load1<S, STREAM>(s + j);
      tv[0] = load_t ? load1<Tt, STREAM>(t + j) : 0.f;
      f(j, sv, tv, gv, IC<1>());
      if constexpr (WRITE) store1<S>(g + j, gv[0]);
    }
    constexpr int step = B * U;
    const int nch = (nvec + step - 1) / step;
    for (int i = 0; i < nch; ++i) {
      const int base = (rev ? nch - 1 - i : i) * step + tid;
      float sv[U][VEC], tv[U][VEC];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int k = base + u * B;
        if (k < nvec) {
          const int e = h + k * VEC;
          load_vec<S, VEC, STREAM>(s + e, sv[u]);
          if (load_t) {
            load_vec<Tt, VEC, STREAM>(t + e, tv[u]);
          } else {
#pragma unroll
            for (int q = 0; q < VEC; ++q) tv[u][q] = 0.f;
          }
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int k = base + u * B;
        if (k < nvec) {
          const int e = h + k * VEC;
          float gv[VEC];
          f(e, sv[u], tv[u], gv, IC<VEC>());
          if constexpr (WRITE) {
            if (gvec) {
              store_vec<S, VEC>(g + e, gv);
            } else {
#pragma unroll
              for (int q = 0; q < VEC; ++q) store1<S>(g + e + q, gv[q]);
            }
          }
        }
      }
    }
  } else {
    const int nit = (V + B - 1) / B;
    for (int i = 0; i < nit; ++i) {
      const int j = (rev ? nit - 1 - i : i) * B + tid;
      if (j < V) {
        float sv[1], tv[1], gv[1];
        sv[0] = load1<S, STREAM>(s + j);
        tv[0] = load_t ? load1<Tt, STREAM>(t + j) : 0.f;
        f(j, sv, tv, gv, IC<1>());
        if constexpr (WRITE) store1<S>(g + j, gv[0]);
      }
    }
  }
}

// ---- pass 1: online statistics ------------------------------------------------------------------
//
// ms: max of s (raw); z1 = sum exp(s - ms); mq: max of s over the entries in Zs (all of them, or for
// reverse KL those where t is finite: the student is renormalised over the teacher's support);
// zs = sum over those of exp((s - mq)/T); mt: max of finite t (raw);
// zt = sum over finite t of exp((t - mt)/T); a = sum over finite t of exp(a_i) (a_i - b_i) with
// a_i = (t_i - mt)/T, b_i = (s_i - ms)/T taken at the current maxima. An empty state has
// ms = mq = mt = -inf and zeros; the rescalings below only touch parts whose maximum is finite.
// Outside reverse KL, mq == ms.
struct Stat {
  float ms, mq, zs, z1, mt, zt, a;
};

__device__ __forceinline__ Stat empty_stat() {
  Stat st;
  st.ms = neg_inf();
  st.mq = neg_inf();
  st.zs = 0.f;
  st.z1 = 0.f;
  st.mt = neg_inf();
  st.zt = 0.f;
  st.a = 0.f;
  return st;
}

// Merge two partial states over disjoint element sets (never produces NaN from empty parts).
__device__ __forceinline__ Stat merge(const Stat& x, const Stat& y, float invT, bool kd, bool ce, bool fkl) {
  Stat r;
  r.ms = fmaxf(x.ms, y.ms);
  r.mq = fmaxf(x.mq, y.mq);
  r.zs = 0.f;
  r.z1 = 0.f;
  if (kd && x.mq != neg_inf()) r.zs += x.zs * __expf((x.mq - r.mq) * invT);
  if (kd && y.mq != neg_inf()) r.zs += y.zs * __expf((y.mq - r.mq) * invT);
  if (ce && x.ms != neg_inf()) r.z1 += x.z1 * __expf(x.ms - r.ms);
  if (ce && y.ms != neg_inf()) r.z1 += y.z1 * __expf(y.ms - r.ms);
  r.mt = fmaxf(x.mt, y.mt);
  r.zt = 0.f;
  r.a = 0.f;
  if (kd) {
    // For the elements of part x, a_i - b_i moves by ((r.ms - x.ms) - (r.mt - x.mt)) / T.
    if (x.mt != neg_inf()) {
      const float c = __expf((x.mt - r.mt) * invT);
      r.zt += c * x.zt;
      if (fkl) r.a += c * (x.a + ((r.ms - x.ms) - (r.mt - x.mt)) * invT * x.zt);
    }
    if (y.mt != neg_inf()) {
      const float c = __expf((y.mt - r.mt) * invT);
      r.zt += c * y.zt;
      if (fkl) r.a += c * (y.a + ((r.ms - y.ms) - (r.mt - y.mt)) * invT * y.zt);
    }
  }
  return r;
}

__device__ __forceinline__ Stat shfl_down(const Stat& st, int off) {
  Stat o;
  o.ms = __shfl_down_sync(0xffffffffu, st.ms, off);
  o.mq = __shfl_down_sync(0xffffffffu, st.mq, off);
  o.zs = __shfl_down_sync(0xffffffffu, st.zs, off);
  o.z1 = __shfl_down_sync(0xffffffffu, st.z1, off);
  o.mt = __shfl_down_sync(0xffffffffu, st.mt, off);
  o.zt = __shfl_down_sync(0xffffffffu, st.zt, off);
  o.a = __shfl_down_sync(0xffffffffu, st.a, off);
  return o;
}

// ---- per-element pieces of passes 2 and 3 -------------------------------------------------------

struct RowConst {
  float ms, mq, mt;      // raw maxima of s, of s in Zs (Stat::mq) and of the finite t
  float lzs, lzt, lz1;   // log normalisers: student at T, teacher at T, student at 1
  float G;               // reverse KL / JSD / skew KLs: sum_j q_j g_j
};

// ---- the kernel ---------------------------------------------------------------------------------

template <class S, class Tt, int B>
__global__ void __launch_bounds__(B, 1024 / B) kd_fwd_kernel(const Args a) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(S) > sizeof(Tt) ? sizeof(S) : sizeof(Tt));
  constexpr int U = VEC >= 8 ? 1 : 2;  // 8 elements (up to 32 bytes of each input) in flight per thread
  constexpr int NW = B / 32;
  static_assert(B % 32 == 0 && NW <= 32, "block size");
  __shared__ Stat sh_stat[NW];
  __shared__ float sh_acc[2][NW];

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const int V = static_cast<int>(a.V);  // the host guarantees V <= 2^30: in-row indices are int
  const float invT = a.invT, T = a.T, beta = a.beta;
  // The mixture m = wmix p + (1 - wmix) q of JSD and the skew KLs (kd_common.h): wmix = beta, lambda, 1 - lambda.
  const float wmix = a.divergence == kSkewReverseKL ? 1.f - a.beta : a.beta, omw = 1.f - wmix;
  const bool kd = a.kd, ce = a.ce;
  const bool fkl = kd && a.divergence == kForwardKL;
  const bool rkl = kd && a.divergence == kReverseKL;
  const bool two_pass = kd && a.divergence != kForwardKL;

  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const S* srow = static_cast<const S*>(a.s) + r * a.s_stride;
    const Tt* trow = kd ? static_cast<const Tt*>(a.t) + r * a.t_stride : nullptr;
    S* grow = a.g ? static_cast<S*>(a.g) + r * a.g_stride : nullptr;
    int64_t y = -1;
    bool ignored = false;
    if (a.labels) {
      y = a.labels[r];
      ignored = y == a.ignore_index;
    }
    if (ignored || !(kd || ce)) {  // block-uniform: no barrier is skipped by part of the block
      if (tid == 0) a.loss[r] = 0.f;
      if (grow) {
        for (int j = tid; j < V; j += B) store1<S>(grow + j, 0.f);
      }
      continue;
    }

    // Vector path when s and t (and, for stores, g) reach their VEC-element alignment at the same h.
    constexpr uintptr_t SA = VEC * sizeof(S), TA = VEC * sizeof(Tt);
    const uintptr_t saddr = reinterpret_cast<uintptr_t>(srow);
    int h = 0;
    bool vec_ok = false;
    if (saddr % sizeof(S) == 0) {
      h = static_cast<int>(((SA - saddr % SA) % SA) / sizeof(S));
      vec_ok = V >= h + VEC && (!kd || reinterpret_cast<uintptr_t>(trow + h) % TA == 0);
    }
    const bool gvec = vec_ok && grow && reinterpret_cast<uintptr_t>(grow + h) % SA == 0;
    const int nvec = vec_ok ? (V - h) / VEC : 0;

    // ---- pass 1 (forward direction)
    Stat st = empty_stat();
    traverse<S, Tt, VEC, U, B, false, false>(
        srow, trow, kd, grow, false, V, h, nvec, vec_ok, false,
        [&](int, const float* sv, const float* tv, float*, auto nc) {
          constexpr int N = decltype(nc)::value;
          float cms = sv[0];
#pragma unroll
          for (int k = 1; k < N; ++k) cms = fmaxf(cms, sv[k]);
          if (cms > st.ms) {
            if (st.ms != neg_inf()) {
              const float d = st.ms - cms;  // < 0
              if (ce) st.z1 *= __expf(d);
              if (fkl) st.a -= d * invT * st.zt;  // every b_i seen so far drops by -d/T
            }
            st.ms = cms;
          }
          if (kd) {
            float cmq = cms;
            if (rkl) {  // reverse KL: the student's max over the teacher's support
              cmq = tv[0] != neg_inf() ? sv[0] : neg_inf();
#pragma unroll
              for (int k = 1; k < N; ++k) cmq = fmaxf(cmq, tv[k] != neg_inf() ? sv[k] : neg_inf());
            }
            if (cmq > st.mq) {
              if (st.mq != neg_inf()) st.zs *= __expf((st.mq - cmq) * invT);
              st.mq = cmq;
            }
            float cmt = tv[0];
#pragma unroll
            for (int k = 1; k < N; ++k) cmt = fmaxf(cmt, tv[k]);
            if (cmt > st.mt) {
              if (st.mt != neg_inf()) {
                const float d = st.mt - cmt;  // < 0: every a_i seen so far drops by -d/T
                const float c = __expf(d * invT);
                if (fkl) st.a = c * (st.a + d * invT * st.zt);
                st.zt *= c;
              }
              st.mt = cmt;
            }
          }
#pragma unroll
          for (int k = 0; k < N; ++k) {
            // A student -inf (a vocabulary entry masked in both models) adds nothing; never -inf - -inf.
            const float ds = sv[k] != neg_inf() ? sv[k] - st.ms : neg_inf();
            if (kd) {
              const float b = ds * invT;
              // Reverse KL leaves the entries the teacher masks out of Zs (q = 0 there).
              const bool in_q = sv[k] != neg_inf() && (!rkl || tv[k] != neg_inf());
              st.zs += in_q ? __expf((sv[k] - st.mq) * invT) : 0.f;
              if (tv[k] != neg_inf()) {
                const float at = (tv[k] - st.mt) * invT;
                const float e = __expf(at);
                st.zt += e;
                if (fkl) st.a += e * (at - b);
              }
            }
            if (ce) st.z1 += __expf(ds);
          }
        });
    // Block reduction: warps by shuffles, then every thread merges the warp partials in the same
    // order (so all threads hold bit-identical row constants).
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) st = merge(st, shfl_down(st, off), invT, kd, ce, fkl);
    if (lane == 0) sh_stat[warp] = st;
    __syncthreads();
    st = sh_stat[0];
#pragma unroll 1
    for (int w = 1; w < NW; ++w) st = merge(st, sh_stat[w], invT, kd, ce, fkl);

    RowConst rc;
    rc.ms = st.ms;
    rc.mq = st.mq;
    rc.mt = st.mt;
    const double lzs = kd ? log(static_cast<double>(st.zs)) : 0.0;
    const double lzt = kd ? log(static_cast<double>(st.zt)) : 0.0;
    const double lz1 = ce ? log(static_cast<double>(st.z1)) : 0.0;
    rc.lzs = static_cast<float>(lzs);
    rc.lzt = static_cast<float>(lzt);
    rc.lz1 = static_cast<float>(lz1);
    rc.G = 0.f;
    double D = 0.0;  // divergence without the T^2 factor
    if (fkl) D = static_cast<double>(st.a) / static_cast<double>(st.zt) + lzs - lzt;

    // ---- pass 2 (reverse KL, JSD, skew KLs; reverse direction): loss and G
    if (two_pass) {
      float acc0 = 0.f, acc1 = 0.f;
      if (a.divergence == kReverseKL) {
        // acc0 = sum_{t finite} q (log q - log p), acc1 = sum_{t finite} q; q = 0 terms are 0 (0 log 0)
        traverse<S, Tt, VEC, U, B, false, false>(
            srow, trow, true, grow, false, V, h, nvec, vec_ok, true,
            [&](int, const float* sv, const float* tv, float*, auto nc) {
              constexpr int N = decltype(nc)::value;
#pragma unroll
              for (int k = 0; k < N; ++k) {
                if (tv[k] != neg_inf()) {
                  const float lq = (sv[k] - rc.mq) * invT - rc.lzs;
                  const float lp = (tv[k] - rc.mt) * invT - rc.lzt;
                  const float q = __expf(lq);
                  if (q > 0.f) {
                    acc0 += q * (lq - lp);
                    acc1 += q;
                  }
                }
              }
            });
      } else {
        // jsd: acc0 = sum beta p log(p/m) + (1-beta) q log(q/m), acc1 = sum (1-beta) q log(q/m);
        // skew KLs: acc0 = D, acc1 = sum q g (g_j of kd_common.h)
        const int div = a.divergence;
        traverse<S, Tt, VEC, U, B, false, false>(
            srow, trow, true, grow, false, V, h, nvec, vec_ok, true,
            [&](int, const float* sv, const float* tv, float*, auto nc) {
              constexpr int N = decltype(nc)::value;
#pragma unroll
              for (int k = 0; k < N; ++k) {
                const float lq = (sv[k] - rc.mq) * invT - rc.lzs;
                const float q = __expf(lq);
                float p = 0.f, lp = 0.f;
                if (tv[k] != neg_inf()) {
                  lp = (tv[k] - rc.mt) * invT - rc.lzt;
                  p = __expf(lp);
                }
                const float m = wmix * p + omw * q;
                if (m > 0.f) {
                  const float lm = __logf(m);
                  if (div == kJSD) {
                    if (p > 0.f) acc0 += beta * p * (lp - lm);
                    if (q > 0.f) {
                      const float x = omw * q * (lq - lm);
                      acc0 += x;
                      acc1 += x;
                    }
                  } else if (div == kSkewKL) {
                    if (p > 0.f) acc0 += p * (lp - lm);
                    acc1 -= omw * q * p / m;
                  } else if (q > 0.f) {
                    const float x = q * (lq - lm);
                    acc0 += x;
                    acc1 += x - omw * q * q / m;
                  }
                }
              }
            });
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        acc0 += __shfl_down_sync(0xffffffffu, acc0, off);
        acc1 += __shfl_down_sync(0xffffffffu, acc1, off);
      }
      if (lane == 0) {
        sh_acc[0][warp] = acc0;
        sh_acc[1][warp] = acc1;
      }
      __syncthreads();
      double s0 = 0.0, s1 = 0.0;
#pragma unroll 1
      for (int w = 0; w < NW; ++w) {
        s0 += static_cast<double>(sh_acc[0][w]);
        s1 += static_cast<double>(sh_acc[1][w]);
      }
      D = s0;
      rc.G = static_cast<float>(a.divergence == kReverseKL ? s0 + s1 : s1);
    }

    if (tid == 0) {
      double loss = 0.0;
      if (kd) loss += static_cast<double>(a.alpha) * T * T * D;
      if (ce) {
        if (y >= 0 && y < V) {
          const double sy = static_cast<double>(load1<S, false>(srow + y));
          loss += (1.0 - static_cast<double>(a.alpha)) * (static_cast<double>(st.ms) - sy + lz1);
        } else {
          loss = __int_as_float(0x7fc00000);  // a label outside [0, V): NaN rather than a wild read
        }
      }
      a.loss[r] = static_cast<float>(loss);
    }

    // ---- pass 3: the gradient (direction opposite to the previous pass)
    if (grow) {
      const float gs = a.row_scale ? a.grad_scale * a.row_scale[r] : a.grad_scale;
      const float ck = kd ? gs * a.alpha * T : 0.f;  // times dD/ds / T
      const float cc = ce ? gs * (1.f - a.alpha) : 0.f;
      const bool rev = !two_pass;
      const int yi = (y >= 0 && y < V) ? static_cast<int>(y) : -1;
      // One body per divergence (DIV = -1: no divergence term, CE only).
      auto grad_pass = [&](auto divc) {
        constexpr int DIV = decltype(divc)::value;
        traverse<S, Tt, VEC, U, B, true, true>(
            srow, trow, DIV >= 0, grow, gvec, V, h, nvec, vec_ok, rev,
            [&](int j, const float* sv, const float* tv, float* gv, auto nc) {
              constexpr int N = decltype(nc)::value;
#pragma unroll
              for (int k = 0; k < N; ++k) {
                float v = 0.f;
                if constexpr (DIV >= 0) {
                  const float lq = (sv[k] - rc.mq) * invT - rc.lzs;
                  const float q = __expf(lq);
                  const bool finite_t = tv[k] != neg_inf();
                  const float lp = finite_t ? (tv[k] - rc.mt) * invT - rc.lzt : 0.f;
                  if constexpr (DIV == kForwardKL) {
                    // dD/ds = T (q - p)
                    v = ck * (q - (finite_t ? __expf(lp) : 0.f));
                  } else if constexpr (DIV == kReverseKL) {
                    // dD/ds_j = T q_j (g_j - G), g_j = log q_j - log p_j + 1; 0 where q_j = 0 (t_j masked:
                    // off the student's renormalised support; s_j = -inf: 0 log 0)
                    v = (finite_t && q > 0.f) ? ck * q * (lq - lp + 1.f - rc.G) : 0.f;
                  } else if constexpr (DIV == kJSD) {
                    // dD/ds_j = T q_j (g_j - G), g_j = (1 - beta) log(q_j / m_j)
                    const float m = wmix * (finite_t ? __expf(lp) : 0.f) + omw * q;
                    v = ck * q * (((q > 0.f && m > 0.f) ? omw * (lq - __logf(m)) : 0.f) - rc.G);
                  } else {
                    // dD/ds_j = T q_j (g_j - G); skew KL g_j = -(1 - lambda) p_j / m_j, skew reverse KL
                    // g_j = log(q_j / m_j) - lambda q_j / m_j (m > 0 wherever q > 0)
                    const float p = finite_t ? __expf(lp) : 0.f;
                    const float m = wmix * p + omw * q;
                    float gj = 0.f;
                    if (q > 0.f && m > 0.f) {
                      gj = DIV == kSkewKL ? -omw * p / m : (lq - __logf(m)) - omw * q / m;
                    }
                    v = q > 0.f ? ck * q * (gj - rc.G) : 0.f;
                  }
                }
                if (ce) v += cc * (__expf(sv[k] - rc.ms - rc.lz1) - (j + k == yi ? 1.f : 0.f));
                gv[k] = v;
              }
            });
      };
      if (!kd) {
        grad_pass(IC<-1>());
      } else if (a.divergence == kForwardKL) {
        grad_pass(IC<kForwardKL>());
      } else if (a.divergence == kReverseKL) {
        grad_pass(IC<kReverseKL>());
      } else if (a.divergence == kJSD) {
        grad_pass(IC<kJSD>());
      } else if (a.divergence == kSkewKL) {
        grad_pass(IC<kSkewKL>());
      } else {
        grad_pass(IC<kSkewReverseKL>());
      }
    }
    __syncthreads();  // the shared partials of this row are read by all before the next row writes them
  }
}

}  // namespace cuda_kd
}  // namespace edgekd
