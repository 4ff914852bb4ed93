// Standalone check of the CPU kernel without Python: the dispatched SIMD path (AVX2 on x86, NEON on
// aarch64) against the scalar path, every divergence and dtype. Built and run by
// tests/kernels/test_cross_isa.py natively, and for aarch64 under qemu where a cross compiler exists.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/half.h"
#include "kd_common.h"

namespace edgekd {
void kd_forward_cpu_scalar(const KDParams& p);
}

int main() {
  int passed = 0, failed = 0;
  std::mt19937 rng(123);
  std::normal_distribution<float> normal(0.f, 3.f);
  const int64_t rows = 7, V = 1271;
  for (int dtype = 0; dtype < 3; ++dtype) {
    for (int div = 0; div <= edgekd::kSkewReverseKL; ++div) {
      for (float T : {0.5f, 1.f, 2.f, 1.7f}) {
        std::vector<float> sf(rows * V), tf(rows * V);
        for (auto& x : sf) x = normal(rng);
        for (auto& x : tf) x = normal(rng);
        for (int k = 0; k < 20; ++k) tf[k * 13] = -INFINITY;
        std::vector<uint16_t> sh(rows * V), th(rows * V);
        for (int64_t i = 0; i < rows * V; ++i) {
          sh[i] = float_to_half(sf[i], dtype);
          th[i] = float_to_half(tf[i], dtype);
        }
        std::vector<int64_t> labels(rows);
        for (int64_t r = 0; r < rows; ++r) labels[r] = (r * 97) % V;
        labels[2] = -100;
        const size_t es = dtype == 0 ? 4 : 2;
        std::vector<char> g1(rows * V * es), g2(rows * V * es);
        std::vector<float> l1(rows), l2(rows);
        edgekd::KDParams p;
        p.student = dtype == 0 ? (const void*)sf.data() : (const void*)sh.data();
        p.teacher = dtype == 0 ? (const void*)tf.data() : (const void*)th.data();
        p.s_dtype = p.t_dtype = dtype;
        p.s_stride = p.t_stride = p.g_stride = V;
        p.labels = labels.data();
        p.rows = rows;
        p.V = V;
        p.temperature = T;
        p.alpha = 0.3f;
        p.divergence = div;
        p.beta = 0.4f;
        p.grad_scale = 0.5f;
        p.num_threads = 2;
        p.loss = l1.data();
        p.grad = g1.data();
        edgekd::kd_forward_cpu(p);
        p.loss = l2.data();
        p.grad = g2.data();
        edgekd::kd_forward_cpu_scalar(p);
        double max_l = 0, max_g = 0, scale_g = 1e-12;
        for (int64_t r = 0; r < rows; ++r) max_l = std::fmax(max_l, std::fabs(l1[r] - l2[r]) / (std::fabs(l2[r]) + 1e-6));
        for (int64_t i = 0; i < rows * V; ++i) {
          float a, b;
          if (dtype == 0) {
            std::memcpy(&a, g1.data() + 4 * i, 4);
            std::memcpy(&b, g2.data() + 4 * i, 4);
          } else {
            uint16_t ha, hb;
            std::memcpy(&ha, g1.data() + 2 * i, 2);
            std::memcpy(&hb, g2.data() + 2 * i, 2);
            a = half_to_float(ha, dtype);
            b = half_to_float(hb, dtype);
          }
          if (std::isnan(a) || std::isnan(b)) max_g = INFINITY;
          max_g = std::fmax(max_g, std::fabs(a - b));
          scale_g = std::fmax(scale_g, std::fabs(b));
        }
        const double gtol = dtype == 0 ? 1e-5 : 1e-2;
        const bool ok = max_l < 1e-5 && max_g / scale_g < gtol;
        if (ok) ++passed; else ++failed;
        if (!ok)
          std::printf("FAIL isa=%s dtype=%d div=%d T=%g: loss rel %.3g grad rel %.3g\n", edgekd::cpu_isa(), dtype, div,
                      T, max_l, max_g / scale_g);
      }
    }
  }
  std::printf("isa: %s\n%d passed, %d failed\n", edgekd::cpu_isa(), passed, failed);
  return failed ? 1 : 0;
}
