// Scalar bfloat16 / float16 <-> float32 conversions (round to nearest even), used by every ISA
// for row tails and by the scalar path. Kept in an anonymous namespace: one private copy per TU.
#pragma once
#include <cstdint>
#include <cstring>

namespace {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return bits_to_float(sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13));
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

inline uint16_t float_to_fp16(float f) {
  uint32_t u = float_to_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;             // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;            // overflow (>= 65520) -> inf
  if (u < 0x38800000u) {                                  // subnormal or zero in fp16
    if (u < 0x33000000u) return sign;                     // < 2^-25: rounds to 0
    const uint32_t e = u >> 23;
    const uint32_t m = (u & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;                       // 14 + (113 - e) ... places mantissa
    const uint32_t half_bit = 1u << (shift - 1);
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    if (rem > half_bit || (rem == half_bit && (r & 1u))) ++r;
    return sign | (uint16_t)r;
  }
  u += 0xfffu + ((u >> 13) & 1u);                         // round mantissa to 10 bits
  return sign | (uint16_t)(((u >> 23) - 112) << 10 | ((u >> 13) & 0x3ffu));
}

inline float half_to_float(uint16_t h, int dtype) { return dtype == 1 ? bf16_to_float(h) : fp16_to_float(h); }
inline uint16_t float_to_half(float f, int dtype) { return dtype == 1 ? float_to_bf16(f) : float_to_fp16(f); }

}  // namespace
