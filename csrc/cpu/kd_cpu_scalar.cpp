// Portable scalar path: any CPU, and the reference for what the SIMD paths must compute.
#include <algorithm>
#include <cmath>

#include "cpu/kd_cpu_row.h"

namespace {
struct ScalarOps {
  using V = float;
  static constexpr int W = 1;
  static V loadu(const float* p) { return *p; }
  static void storeu(float* p, V v) { *p = v; }
  static V set1(float x) { return x; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V gt(V a, V b) { return a > b ? 1.f : 0.f; }
  static V select(V mask, V a, V b) { return mask != 0.f ? a : b; }
  static V exp(V x) { return x < -87.33654f ? 0.f : std::exp(x); }
  static V log(V x) { return std::log(x); }
  static float hsum(V a) { return a; }
  static float hmax(V a) { return a; }
  static void to_float(const uint16_t* src, float* dst, int64_t n, int dtype) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i], dtype);
  }
  static void from_float(const float* src, uint16_t* dst, int64_t n, int dtype) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i], dtype);
  }
};
}  // namespace

namespace edgekd {
void kd_forward_cpu_scalar(const KDParams& p) { RowKernel<ScalarOps>::run(p); }
}  // namespace edgekd
