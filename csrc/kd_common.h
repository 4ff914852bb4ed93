// Shared contract of the fused KD kernels (CPU and CUDA): raw buffers, no libtorch.
//
// One call handles `rows` rows of `V` logits. For each row r (student s, teacher t, label y):
//   a_i = (t_i - max t) / T,  b_i = (s_i - max s) / T
//   p = softmax(a), q = softmax(b)   (teacher, student at temperature T)
//   forward_kl: D = T^2 * sum p (log p - log q)
//   reverse_kl: D = T^2 * sum_i q~ (log q~ - log p),  q~ = softmax(b) over S = {i : t_i != -inf}, 0 off S
//               (a teacher vocabulary mask masks the student too: q is renormalised over the teacher's
//               support, so D >= 0 and no gradient moves mass onto a masked entry)
//   jsd:        D = T^2 * (beta KL(p||m) + (1-beta) KL(q||m)),  m = beta p + (1-beta) q
//   skew_kl:    D = T^2 * KL(p||m),  m = lambda p + (1-lambda) q        (DistiLLM; lambda in (0, 1] is
//   skew_reverse_kl: D = T^2 * KL(q||m),  m = (1-lambda) p + lambda q    passed in `beta`)
//               (m holds q, so both are finite under a teacher mask: no renormalisation)
//   CE = -log softmax(s)[y]  (temperature 1; only when labels != nullptr and alpha < 1)
//   loss[r] = alpha * D + (1 - alpha) * CE;  0 when y == ignore_index
//   grad[r, :] = grad_scale * row_scale[r] * d loss[r] / d s[r, :]   (row_scale[r] = 1 when row_scale is
//     nullptr; 0 when ignored; skipped when grad == nullptr). The product is formed in float32 and
//     rounded to the student's dtype once.
//     forward_kl: dD/ds = T (q - p)
//     reverse_kl: dD/ds_j = T q~_j (g_j - G), g_j = log q~_j - log p_j + 1, G = sum q~ g  (0 off S)
//     jsd:        dD/ds_j = T q_j (g_j - G), g_j = (1-beta) log(q_j / m_j),            G = sum q g
//     skew_kl:    dD/ds_j = T q_j (g_j - G), g_j = -(1-lambda) p_j / m_j,              G = sum q g
//     skew_reverse_kl: same, g_j = log(q_j / m_j) - lambda q_j / m_j                   G = sum q g
//       (in general, D = c_p KL(p||m) + c_q KL(q||m) with m = w p + (1-w) q has
//        g_j = c_q log(q_j/m_j) - (1-w)(c_p p_j + c_q q_j)/m_j up to a constant)
//     dCE/ds = softmax(s) - onehot(y)
//   Terms with q = 0 (or p = 0) are 0: 0 log 0 = 0, so a -inf student logit gives no NaN.
// Arithmetic is float32 whatever the input dtype; gradient stored in the student's dtype.
#pragma once
#include <cstdint>

namespace edgekd {

enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
enum Divergence : int { kForwardKL = 0, kReverseKL = 1, kJSD = 2, kSkewKL = 3, kSkewReverseKL = 4 };

struct KDParams {
  const void* student = nullptr;  // [rows, V], element (r, i) at student + r * s_stride + i
  int s_dtype = kFloat32;
  int64_t s_stride = 0;
  const void* teacher = nullptr;  // [rows, V], teacher + r * t_stride + i
  int t_dtype = kFloat32;
  int64_t t_stride = 0;
  const int64_t* labels = nullptr;  // [rows] or nullptr
  int64_t rows = 0;
  int64_t V = 0;
  float temperature = 1.f;
  float alpha = 1.f;
  float beta = 0.5f;  // the mixture coefficient: jsd's beta, or the skew lambda of kSkewKL / kSkewReverseKL
  int divergence = kForwardKL;
  int64_t ignore_index = -100;
  float grad_scale = 1.f;
  const float* row_scale = nullptr;  // [rows] float32 or nullptr: a per-row factor on the gradient
  float* loss = nullptr;  // [rows], float32
  void* grad = nullptr;   // [rows, V] in s_dtype, grad + r * g_stride + i; nullptr: no gradient
  int64_t g_stride = 0;
  int num_threads = 0;  // CPU only; 0 = OpenMP default
};

// Fills KDParams from the integers a Python binding receives (pointers as uintptr_t).
inline KDParams params_from_raw(uintptr_t student, int s_dtype, int64_t s_stride, uintptr_t teacher, int t_dtype,
                            int64_t t_stride, uintptr_t labels, int64_t rows, int64_t V, float temperature,
                            float alpha, int divergence, float beta, int64_t ignore_index, float grad_scale,
                            uintptr_t loss, uintptr_t grad, int64_t g_stride, int num_threads,
                            uintptr_t row_scale) {
  KDParams p;
  p.student = reinterpret_cast<const void*>(student);
  p.s_dtype = s_dtype;
  p.s_stride = s_stride;
  p.teacher = reinterpret_cast<const void*>(teacher);
  p.t_dtype = t_dtype;
  p.t_stride = t_stride;
  p.labels = reinterpret_cast<const int64_t*>(labels);
  p.rows = rows;
  p.V = V;
  p.temperature = temperature;
  p.alpha = alpha;
  p.divergence = divergence;
  p.beta = beta;
  p.ignore_index = ignore_index;
  p.grad_scale = grad_scale;
  p.row_scale = reinterpret_cast<const float*>(row_scale);
  p.loss = reinterpret_cast<float*>(loss);
  p.grad = reinterpret_cast<void*>(grad);
  p.g_stride = g_stride;
  p.num_threads = num_threads;
  return p;
}

// CPU: OpenMP across rows, AVX2/FMA (x86, chosen at run time), NEON (aarch64) or scalar.
void kd_forward_cpu(const KDParams& p);
const char* cpu_isa();

#ifdef EDGEKD_WITH_CUDA
// CUDA: `stream` is a cudaStream_t; pointers are device pointers. Returns a cudaError_t as int.
int kd_forward_cuda(const KDParams& p, void* stream);
#endif

}  // namespace edgekd
