// aarch64 path with NEON (part of the baseline ISA there, so no run-time check is needed).
#include <arm_neon.h>

#include "cpu/kd_cpu_row.h"

namespace {
struct NeonOps {
  using V = float32x4_t;
  static constexpr int W = 4;
  static V loadu(const float* p) { return vld1q_f32(p); }
  static void storeu(float* p, V v) { vst1q_f32(p, v); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V div(V a, V b) { return vdivq_f32(a, b); }
  static V fmadd(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static V gt(V a, V b) { return vreinterpretq_f32_u32(vcgtq_f32(a, b)); }
  static V select(V mask, V a, V b) { return vbslq_f32(vreinterpretq_u32_f32(mask), a, b); }

  static V exp(V x) {
    const V hi = vdupq_n_f32(88.3762626647949f), lo = vdupq_n_f32(-87.33654f);
    uint32x4_t under = vcltq_f32(x, lo);
    x = vminq_f32(vmaxq_f32(x, lo), hi);
    V fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
    x = vfmsq_f32(x, fx, vdupq_n_f32(-2.12194440e-4f));
    V z = vmulq_f32(x, x);
    V y = vdupq_n_f32(1.9875691500E-4f);
    y = vfmaq_f32(vdupq_n_f32(1.3981999507E-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(8.3334519073E-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(4.1665795894E-2f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.6666665459E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(5.0000001201E-1f), y, x);
    y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.f)), y, z);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    V r = vmulq_f32(y, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), under));
  }

  static V log(V x) {
    x = vmaxq_f32(x, vreinterpretq_f32_u32(vdupq_n_u32(0x00800000u)));
    uint32x4_t ei = vshrq_n_u32(vreinterpretq_u32_f32(x), 23);
    x = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(~0x7f800000u)));
    x = vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(x), vreinterpretq_u32_f32(vdupq_n_f32(0.5f))));
    V e = vaddq_f32(vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(ei), vdupq_n_s32(127))), vdupq_n_f32(1.f));
    uint32x4_t mask = vcltq_f32(x, vdupq_n_f32(0.707106781186547524f));
    V tmp = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), mask));
    x = vsubq_f32(x, vdupq_n_f32(1.f));
    e = vsubq_f32(e, vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vdupq_n_f32(1.f)), mask)));
    x = vaddq_f32(x, tmp);
    V z = vmulq_f32(x, x);
    V y = vdupq_n_f32(7.0376836292E-2f);
    y = vfmaq_f32(vdupq_n_f32(-1.1514610310E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.1676998740E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(-1.2420140846E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.4249322787E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(-1.6668057665E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(2.0000714765E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(-2.4999993993E-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(3.3333331174E-1f), y, x);
    y = vmulq_f32(vmulq_f32(y, x), z);
    y = vfmaq_f32(y, e, vdupq_n_f32(-2.12194440e-4f));
    y = vfmsq_f32(y, z, vdupq_n_f32(0.5f));
    x = vaddq_f32(x, y);
    return vfmaq_f32(x, e, vdupq_n_f32(0.693359375f));
  }

  static float hsum(V a) { return vaddvq_f32(a); }
  static float hmax(V a) { return vmaxvq_f32(a); }

  static void to_float(const uint16_t* src, float* dst, int64_t n, int dtype) {
    int64_t i = 0;
    if (dtype == 1) {
      for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(src + i), 16)));
    } else {
      for (; i + 4 <= n; i += 4)
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    }
    for (; i < n; ++i) dst[i] = half_to_float(src[i], dtype);
  }
  static void from_float(const float* src, uint16_t* dst, int64_t n, int dtype) {
    int64_t i = 0;
    if (dtype == 1) {
      const uint32x4_t bias = vdupq_n_u32(0x7fff), one = vdupq_n_u32(1);
      for (; i + 4 <= n; i += 4) {
        uint32x4_t u = vreinterpretq_u32_f32(vld1q_f32(src + i));
        uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), one);
        vst1_u16(dst + i, vshrn_n_u32(vaddq_u32(vaddq_u32(u, bias), lsb), 16));
      }
    } else {
      for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
    }
    for (; i < n; ++i) dst[i] = float_to_half(src[i], dtype);
  }
};
}  // namespace

namespace edgekd {
void kd_forward_cpu_neon(const KDParams& p) { RowKernel<NeonOps>::run(p); }
}  // namespace edgekd
