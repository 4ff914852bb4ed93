// Python face of the kernels: pointers arrive as integers, so no libtorch is linked and one build
// serves any torch version. Python (edgekd/kernels/ops.py) checks shapes and dtypes first.
#include <pybind11/pybind11.h>

#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "kd_common.h"

namespace py = pybind11;
using edgekd::KDParams;


// Ask the kernel to back a fresh buffer with transparent huge pages before anything touches it:
// a new rows x vocab gradient otherwise costs as much in 4 KB page faults as the kernel itself.
static bool advise_hugepages(uintptr_t ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = 2u << 20;
  const uintptr_t start = (ptr + huge - 1) & ~(huge - 1), end = (ptr + (uintptr_t)nbytes) & ~(huge - 1);
  if (end <= start) return false;
  return madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE) == 0;
#else
  (void)ptr;
  (void)nbytes;
  return false;
#endif
}

static std::string build_info() {
  std::string s = std::string("cpu=") + edgekd::cpu_isa();
#ifdef EDGEKD_WITH_CUDA
  s += " cuda=yes";
#else
  s += " cuda=no";
#endif
  return s;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "edgekd fused kernels on raw buffers";
  m.def(
      "kd_forward_cpu",
      [](uintptr_t student, int s_dtype, int64_t s_stride, uintptr_t teacher, int t_dtype, int64_t t_stride,
         uintptr_t labels, int64_t rows, int64_t V, float temperature, float alpha, int divergence, float beta,
         int64_t ignore_index, float grad_scale, uintptr_t loss, uintptr_t grad, int64_t g_stride,
         uintptr_t row_scale, int num_threads) {
        KDParams p = edgekd::params_from_raw(student, s_dtype, s_stride, teacher, t_dtype, t_stride, labels, rows, V,
                                 temperature, alpha, divergence, beta, ignore_index, grad_scale, loss, grad,
                                 g_stride, num_threads, row_scale);
        py::gil_scoped_release release;
        edgekd::kd_forward_cpu(p);
      },
      "Per-row fused KD(+CE) loss and, when grad != 0, its gradient w.r.t. the student logits times grad_scale\n"
      "and, when row_scale != 0, the float32 factor row_scale[r] (CPU).");
#ifdef EDGEKD_WITH_CUDA
  m.def(
      "kd_forward_cuda",
      [](uintptr_t student, int s_dtype, int64_t s_stride, uintptr_t teacher, int t_dtype, int64_t t_stride,
         uintptr_t labels, int64_t rows, int64_t V, float temperature, float alpha, int divergence, float beta,
         int64_t ignore_index, float grad_scale, uintptr_t loss, uintptr_t grad, int64_t g_stride,
         uintptr_t row_scale, uintptr_t stream) {
        KDParams p = edgekd::params_from_raw(student, s_dtype, s_stride, teacher, t_dtype, t_stride, labels, rows, V,
                                 temperature, alpha, divergence, beta, ignore_index, grad_scale, loss, grad,
                                 g_stride, 0, row_scale);
        int err;
        {
          py::gil_scoped_release release;
          err = edgekd::kd_forward_cuda(p, reinterpret_cast<void*>(stream));
        }
        if (err != 0) throw std::runtime_error("edgekd CUDA kernel failed with cudaError " + std::to_string(err));
      },
      "Same as kd_forward_cpu on device pointers, launched on `stream`.");
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  m.def("cpu_isa", &edgekd::cpu_isa, "The CPU code path chosen at run time: avx2, neon or scalar.");
  m.def("build_info", &build_info);
  m.def("advise_hugepages", &advise_hugepages, "madvise(MADV_HUGEPAGE) on the 2 MB pages inside a buffer.");
}
