// Run-time dispatch of the CPU kernel to the best compiled path for this processor.
#include <cstdlib>
#include <cstring>

#include "kd_common.h"

namespace edgekd {
void kd_forward_cpu_scalar(const KDParams& p);
#ifdef EDGEKD_HAVE_AVX2
void kd_forward_cpu_avx2(const KDParams& p);
#endif
#ifdef EDGEKD_HAVE_NEON
void kd_forward_cpu_neon(const KDParams& p);
#endif

namespace {
enum class Isa { kScalar, kAvx2, kNeon };

Isa detect() {
  // EDGEKD_CPU_ISA=scalar forces the portable path (tests compare it with the SIMD one).
  const char* force = std::getenv("EDGEKD_CPU_ISA");
  if (force && std::strcmp(force, "scalar") == 0) return Isa::kScalar;
#ifdef EDGEKD_HAVE_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
#endif
#ifdef EDGEKD_HAVE_NEON
  return Isa::kNeon;
#endif
  return Isa::kScalar;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}
}  // namespace

const char* cpu_isa() {
  switch (isa()) {
    case Isa::kAvx2: return "avx2";
    case Isa::kNeon: return "neon";
    default: return "scalar";
  }
}

void kd_forward_cpu(const KDParams& p) {
  switch (isa()) {
#ifdef EDGEKD_HAVE_AVX2
    case Isa::kAvx2: kd_forward_cpu_avx2(p); return;
#endif
#ifdef EDGEKD_HAVE_NEON
    case Isa::kNeon: kd_forward_cpu_neon(p); return;
#endif
    default: kd_forward_cpu_scalar(p); return;
  }
}
}  // namespace edgekd
