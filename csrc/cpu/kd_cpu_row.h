// The fused KD row kernel, written once over a vector-ops type `VO` and compiled per ISA
// (kd_cpu_scalar.cpp, kd_cpu_avx2.cpp, kd_cpu_neon.cpp). See kd_common.h for the math.
//
// Per row: pass 1 max of student and teacher (reverse KL: and of the student over the teacher's
// support, where its normaliser is taken); pass 2 the three normalisers (and, for forward KL,
// the loss); pass 3 (reverse KL, JSD, skew KLs only) the loss and the gradient's row constant; pass 4 the
// gradient. The row is read from memory once; later passes hit L2 (a 32k-vocab row pair is 256 KB).
// Everything lives in an anonymous namespace so each ISA's copy stays private to its TU.
#pragma once
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kd_common.h"
#include "cpu/half.h"

namespace {

using edgekd::KDParams;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <class VO>
struct RowKernel {
  using V = typename VO::V;
  static constexpr int W = VO::W;

  // Load up to W floats at x[i..i+n) padding the rest with `pad`.
  static inline V load(const float* x, int64_t i, int64_t n, float pad) {
    if (n >= W) return VO::loadu(x + i);
    alignas(64) float tmp[W];
    for (int k = 0; k < W; ++k) tmp[k] = k < n ? x[i + k] : pad;
    return VO::loadu(tmp);
  }
  static inline void store(float* x, int64_t i, int64_t n, V v) {
    if (n >= W) {
      VO::storeu(x + i, v);
      return;
    }
    alignas(64) float tmp[W];
    VO::storeu(tmp, v);
    for (int k = 0; k < n; ++k) x[i + k] = tmp[k];
  }

  static float row_max(const float* x, int64_t n) {
    V m0 = VO::set1(kNegInf), m1 = m0;
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      m0 = VO::max(m0, VO::loadu(x + i));
      m1 = VO::max(m1, VO::loadu(x + i + W));
    }
    for (; i < n; i += W) m0 = VO::max(m0, load(x, i, n - i, kNegInf));
    return VO::hmax(VO::max(m0, m1));
  }

  // Max of t and, in *mq, max of s over the entries where t is finite (reverse KL's student shift).
  static float row_max_masked(const float* s, const float* t, int64_t n, float* mq) {
    const V ninf = VO::set1(kNegInf);
    V m0 = ninf, q0 = ninf;
    for (int64_t i = 0; i < n; i += W) {
      const V tv = load(t, i, n - i, kNegInf);
      m0 = VO::max(m0, tv);
      q0 = VO::max(q0, VO::select(VO::gt(tv, ninf), load(s, i, n - i, kNegInf), ninf));
    }
    *mq = VO::hmax(q0);
    return VO::hmax(m0);
  }

  // x^k for a small integer k (exact enough: k roundings).
  static inline V ipow(V x, int k) {
    V r = x;
    for (int j = 1; j < k; ++j) r = VO::mul(r, x);
    return r;
  }

  // Small positive integer k with x == k, else 0 (lets exp(s - max) come from exp((s - max)/T) by powers).
  static int small_int(float x) {
    const float r = std::nearbyint(x);
    return (r >= 1.f && r <= 16.f && r == x) ? (int)r : 0;
  }

  // One row. s, t: float rows of length n. es, et, e1: scratch rows (the exponentials of pass 2,
  // reused by passes 3-4 so each element costs two or three exps in all). g: gradient out (may alias s),
  // gs: its factor (grad_scale times the row's row_scale).
  static float row(const KDParams& p, const float* s, const float* t, float* es_buf, float* et_buf, float* e1_buf,
                   float* g, int64_t label, bool has_label, float gs) {
    const int64_t n = p.V;
    const float T = p.temperature, invT = 1.f / T, alpha = p.alpha, beta = p.beta;
    const bool need_kd = alpha > 0.f;
    const bool need_ce = has_label && alpha < 1.f;
    const bool need_grad = g != nullptr;
    const bool t_is_one = T == 1.f;
    const bool fwd = p.divergence == edgekd::kForwardKL, rev = p.divergence == edgekd::kReverseKL;
    const bool jsd = p.divergence == edgekd::kJSD, skl = p.divergence == edgekd::kSkewKL;
    // The mixture m = w p + (1 - w) q of JSD and the skew KLs: w = beta, lambda, 1 - lambda (kd_common.h).
    const float w = p.divergence == edgekd::kSkewReverseKL ? 1.f - beta : beta;
    // Reverse KL takes the student's softmax over the teacher's support only (kd_common.h): its
    // normaliser Zs skips masked entries and is shifted by mq, the student's max there.
    const bool rev_kd = rev && need_kd;

    const float ms = row_max(s, n);
    float mq = ms;
    const float mt = !need_kd ? 0.f : rev ? row_max_masked(s, t, n, &mq) : row_max(t, n);
    // CE's normaliser Z1 is over every entry; it comes from the KD exponentials when they share its shift.
    const bool same_shift = mq == ms;
    const bool z1_separate = need_ce && (!t_is_one || rev_kd);
    const int pow_up = z1_separate && same_shift ? (t_is_one ? 1 : small_int(T)) : 0;  // e1 = es^T
    const int pow_down = z1_separate && same_shift && !pow_up ? small_int(invT) : 0;   // es = e1^(1/T)
    const V vms = VO::set1(ms), vmq = VO::set1(mq), vmt = VO::set1(mt), vinvT = VO::set1(invT);
    const V zero = VO::set1(0.f), vneginf = VO::set1(kNegInf);

    // Pass 2: normalisers Zs (student at T), Zt (teacher at T), Z1 (student at 1); forward-KL sum A.
    V zs0 = zero, zs1 = zero, zt0 = zero, zt1 = zero, z10 = zero, z11 = zero, a0 = zero, a1 = zero;
    auto pass2 = [&](int64_t i, int64_t m, V& zs, V& zt, V& z1, V& acc) {
      V sv = load(s, i, m, kNegInf);
      V tv = need_kd ? load(t, i, m, kNegInf) : zero;
      V b = VO::mul(VO::sub(sv, vmq), vinvT);
      V es, e1 = zero;
      if (pow_down) {
        e1 = VO::exp(VO::sub(sv, vms));
        es = ipow(e1, pow_down);
      } else {
        es = VO::exp(b);
        if (pow_up) e1 = ipow(es, pow_up);
        else if (z1_separate) e1 = VO::exp(VO::sub(sv, vms));
      }
      if (rev_kd) es = VO::select(VO::gt(tv, vneginf), es, zero);  // off the teacher's support: q = 0
      zs = VO::add(zs, es);
      if (need_grad || !fwd) store(es_buf, i, m, es);
      if (z1_separate) {
        z1 = VO::add(z1, e1);
        if (need_grad) store(e1_buf, i, m, e1);
      }
      if (need_kd) {
        V a = VO::mul(VO::sub(tv, vmt), vinvT);
        V et = VO::exp(a);
        zt = VO::add(zt, et);
        if (need_grad || !fwd) store(et_buf, i, m, et);
        if (fwd) acc = VO::add(acc, VO::select(VO::gt(et, zero), VO::mul(et, VO::sub(a, b)), zero));
      }
    };
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      pass2(i, W, zs0, zt0, z10, a0);
      pass2(i + W, W, zs1, zt1, z11, a1);
    }
    for (; i < n; i += W) pass2(i, n - i, zs0, zt0, z10, a0);
    const double Zs = VO::hsum(VO::add(zs0, zs1));
    const double Zt = need_kd ? VO::hsum(VO::add(zt0, zt1)) : 1.0;
    const double Z1 = z1_separate ? VO::hsum(VO::add(z10, z11)) : Zs;
    const float logZs = (float)std::log(Zs), logZt = (float)std::log(Zt), logZ1 = (float)std::log(Z1);
    const V vinvZs = VO::set1((float)(1.0 / Zs)), vinvZt = VO::set1((float)(1.0 / Zt));
    const V vinvZ1 = VO::set1((float)(1.0 / Z1));

    // Divergence (without T^2) and, for reverse KL / JSD / skew KLs, the gradient's row constant G.
    double D = 0.0, G = 0.0;
    const V vlogZs = VO::set1(logZs), vlogZt = VO::set1(logZt);
    const V vw = VO::set1(w), v1mw = VO::set1(1.f - w), one = VO::set1(1.f);
    if (need_kd) {
      if (fwd) {
        D = (double)VO::hsum(VO::add(a0, a1)) / Zt - std::log(Zt) + std::log(Zs);
      } else {
        // reverse: K, Qs ; jsd: sum termP, sum termQ ; skew KLs: D, G (pass 4 then reads g_j from et_buf)
        V k0 = zero, k1 = zero;
        for (i = 0; i < n; i += W) {
          const int64_t m = n - i;
          V q = VO::mul(load(es_buf, i, m, 0.f), vinvZs);
          V lb = VO::sub(VO::mul(VO::sub(load(s, i, m, kNegInf), vmq), vinvT), vlogZs);  // log q
          if (rev) {
            V la = VO::sub(VO::mul(VO::sub(load(t, i, m, kNegInf), vmt), vinvT), vlogZt);  // log p
            V keep = VO::gt(q, zero);  // q = 0 (masked, or a -inf student logit): 0 log 0 = 0
            k0 = VO::add(k0, VO::select(keep, VO::mul(q, VO::sub(lb, la)), zero));
            k1 = VO::add(k1, VO::select(keep, q, zero));
          } else {
            V pp = VO::mul(load(et_buf, i, m, 0.f), vinvZt);
            V la = VO::sub(VO::mul(VO::sub(load(t, i, m, kNegInf), vmt), vinvT), vlogZt);
            V mm = VO::add(VO::mul(vw, pp), VO::mul(v1mw, q));
            V has_m = VO::gt(mm, zero);
            V lm = VO::log(VO::select(has_m, mm, one));
            V tp = VO::select(VO::gt(pp, zero), VO::mul(pp, VO::sub(la, lm)), zero);  // p log(p/m)
            V tq = VO::select(VO::gt(q, zero), VO::mul(q, VO::sub(lb, lm)), zero);    // q log(q/m)
            if (jsd) {
              k0 = VO::add(k0, tp);
              k1 = VO::add(k1, tq);
              if (need_grad) store(et_buf, i, m, lm);  // pass 4 needs log m, no longer p
            } else {
              // g_j (kd_common.h; 1 - w is 1 - lambda for skew KL, lambda for skew reverse KL); entries
              // with q = 0 add nothing to G and get no gradient
              V r = VO::mul(v1mw, VO::div(skl ? pp : q, VO::select(has_m, mm, one)));
              V gj = skl ? VO::sub(zero, r) : VO::sub(VO::sub(lb, lm), r);
              k0 = VO::add(k0, skl ? tp : tq);
              k1 = VO::add(k1, VO::select(VO::gt(q, zero), VO::mul(q, gj), zero));
              if (need_grad) store(et_buf, i, m, VO::select(VO::gt(q, zero), gj, zero));
            }
          }
        }
        const double s0 = VO::hsum(k0), s1 = VO::hsum(k1);
        if (rev) {
          D = s0;
          G = s0 + s1;
        } else if (jsd) {
          D = beta * s0 + (1.0 - beta) * s1;
          G = (1.0 - beta) * s1;
        } else {
          D = s0;
          G = s1;
        }
      }
    }
    double ce = 0.0;
    if (need_ce) ce = (double)logZ1 + ms - s[label];
    const float loss = (float)((need_kd ? alpha * (double)T * T * D : 0.0) + (need_ce ? (1.0 - alpha) * ce : 0.0));

    if (!need_grad) return loss;
    // Pass 4: gradient of the row loss, times gs; no exps, only the scratch rows.
    const V kd_scale = VO::set1(need_kd ? gs * alpha * T : 0.f);
    const V ce_scale = VO::set1(need_ce ? gs * (1.f - alpha) : 0.f);
    const V vG = VO::set1((float)G);
    for (i = 0; i < n; i += W) {
      const int64_t m = n - i;
      V q = VO::mul(load(es_buf, i, m, 0.f), vinvZs);
      V out = zero;
      if (need_kd) {
        V gd;
        if (fwd) {
          gd = VO::sub(q, VO::mul(load(et_buf, i, m, 0.f), vinvZt));
        } else {
          V lb = VO::sub(VO::mul(VO::sub(load(s, i, m, kNegInf), vmq), vinvT), vlogZs);
          V gj;
          if (rev) {
            V tv = load(t, i, m, kNegInf);
            V la = VO::sub(VO::mul(VO::sub(tv, vmt), vinvT), vlogZt);
            gj = VO::select(VO::gt(tv, vneginf), VO::add(VO::sub(lb, la), one), zero);
          } else if (jsd) {
            gj = VO::mul(v1mw, VO::sub(lb, load(et_buf, i, m, 0.f)));
          } else {
            gj = load(et_buf, i, m, 0.f);
          }
          gd = VO::select(VO::gt(q, zero), VO::mul(q, VO::sub(gj, vG)), zero);
        }
        out = VO::mul(kd_scale, gd);
      }
      if (need_ce) {
        V sm = z1_separate ? VO::mul(load(e1_buf, i, m, 0.f), vinvZ1) : q;
        out = VO::fmadd(ce_scale, sm, out);
      }
      store(g, i, m, out);
    }
    if (need_ce) g[label] -= gs * (1.f - alpha);
    return loss;
  }

  static void run(const KDParams& p) {
    const int64_t n = p.V;
    const bool s_f32 = p.s_dtype == edgekd::kFloat32, t_f32 = p.t_dtype == edgekd::kFloat32;
    const bool need_t = p.alpha > 0.f;
    const int nt = p.num_threads > 0 ? p.num_threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
    {
      std::vector<float> sbuf(s_f32 ? 0 : n), tbuf(t_f32 || !need_t ? 0 : n);
      std::vector<float> scratch(3 * (size_t)n);  // es, et, e1 rows
#pragma omp for schedule(static)
      for (int64_t r = 0; r < p.rows; ++r) {
        int64_t label = 0;
        bool has_label = p.labels != nullptr;
        if (has_label) {
          label = p.labels[r];
          if (label == p.ignore_index) {
            p.loss[r] = 0.f;
            if (p.grad) {
              const int es = p.s_dtype == edgekd::kFloat32 ? 4 : 2;
              std::memset(static_cast<char*>(p.grad) + r * p.g_stride * es, 0, (size_t)n * es);
            }
            continue;
          }
        }
        const float* s;
        const float* t = nullptr;
        if (s_f32) {
          s = static_cast<const float*>(p.student) + r * p.s_stride;
        } else {
          VO::to_float(static_cast<const uint16_t*>(p.student) + r * p.s_stride, sbuf.data(), n, p.s_dtype);
          s = sbuf.data();
        }
        if (need_t) {
          if (t_f32) {
            t = static_cast<const float*>(p.teacher) + r * p.t_stride;
          } else {
            VO::to_float(static_cast<const uint16_t*>(p.teacher) + r * p.t_stride, tbuf.data(), n, p.t_dtype);
            t = tbuf.data();
          }
        }
        float* g = nullptr;
        if (p.grad) g = s_f32 ? static_cast<float*>(p.grad) + r * p.g_stride : sbuf.data();  // in place over s
        const float gs = p.row_scale ? p.grad_scale * p.row_scale[r] : p.grad_scale;
        p.loss[r] = row(p, s, t, scratch.data(), scratch.data() + n, scratch.data() + 2 * n, g, label, has_label, gs);
        if (p.grad && !s_f32)
          VO::from_float(sbuf.data(), static_cast<uint16_t*>(p.grad) + r * p.g_stride, n, p.s_dtype);
      }
    }
  }
};

}  // namespace
