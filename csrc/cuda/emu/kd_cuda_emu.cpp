// Runs the CUDA kernel of kd_cuda_kernel.cuh on the host through cuda_emu.h (see there), behind the
// same raw-buffer contract as kd_forward_cuda. Built and driven by tests/kernels/test_kd_cuda.py
// (test_emulated_kernel_*); host pointers only.
//   g++ -std=c++20 -O1 -shared -fPIC -pthread -Icsrc csrc/cuda/emu/kd_cuda_emu.cpp -o kd_cuda_emu.so
#include "cuda/emu/cuda_emu.h"

#include <thread>
#include <vector>

#include "cuda/kd_cuda_kernel.cuh"

namespace emu {
thread_local uint3 tls_thread;
uint3 g_block, g_grid;
std::barrier<>* g_block_barrier = nullptr;
static std::vector<std::barrier<>*> g_warp_barriers;
static float g_slots[32][32];
void warp_exchange_barrier(int warp) { g_warp_barriers[warp]->arrive_and_wait(); }
float* warp_slots(int warp) { return g_slots[warp]; }
}  // namespace emu

namespace {

using edgekd::cuda_kd::Args;

template <class S, class Tt, int B>
void run_grid(const Args& a, int grid) {
  std::barrier<> block_bar(B);
  emu::g_block_barrier = &block_bar;
  std::vector<std::barrier<>*> wb;
  for (int w = 0; w < B / 32; ++w) wb.push_back(new std::barrier<>(32));
  emu::g_warp_barriers = wb;
  emu::g_grid = {static_cast<unsigned>(grid), 1, 1};
  for (int b = 0; b < grid; ++b) {
    emu::g_block = {static_cast<unsigned>(b), 0, 0};
    std::vector<std::thread> threads;
    threads.reserve(B);
    for (int t = 0; t < B; ++t)
      threads.emplace_back([&a, t] {
        emu::tls_thread = {static_cast<unsigned>(t), 0, 0};
        edgekd::cuda_kd::kd_fwd_kernel<S, Tt, B>(a);
      });
    for (auto& th : threads) th.join();
  }
  for (auto* w : wb) delete w;
}

template <class S, class Tt>
void run_threads(const Args& a, int grid) {
  if (edgekd::cuda_kd::block_threads(a.V) == 512)
    run_grid<S, Tt, 512>(a, grid);
  else
    run_grid<S, Tt, 256>(a, grid);
}

template <class S>
void run_teacher(const Args& a, int t_dtype, int grid) {
  if (t_dtype == edgekd::kFloat32) run_threads<S, float>(a, grid);
  else if (t_dtype == edgekd::kBFloat16) run_threads<S, __nv_bfloat16>(a, grid);
  else run_threads<S, __half>(a, grid);
}

}  // namespace

extern "C" int kd_forward_emu(uintptr_t student, int s_dtype, int64_t s_stride, uintptr_t teacher, int t_dtype,
                              int64_t t_stride, uintptr_t labels, int64_t rows, int64_t V, float temperature,
                              float alpha, int divergence, float beta, int64_t ignore_index, float grad_scale,
                              uintptr_t loss, uintptr_t grad, int64_t g_stride, uintptr_t row_scale, int grid) {
  const edgekd::KDParams p = edgekd::params_from_raw(student, s_dtype, s_stride, teacher, t_dtype, t_stride, labels,
                                                     rows, V, temperature, alpha, divergence, beta, ignore_index,
                                                     grad_scale, loss, grad, g_stride, 0, row_scale);
  if (rows <= 0) return 0;
  Args a;
  bool multi_pass = false;
  if (!edgekd::cuda_kd::make_args(p, &a, &multi_pass)) return 1;
  const int g = static_cast<int>(grid < rows ? grid : rows);
  if (s_dtype == edgekd::kFloat32) run_teacher<float>(a, t_dtype, g);
  else if (s_dtype == edgekd::kBFloat16) run_teacher<__nv_bfloat16>(a, t_dtype, g);
  else run_teacher<__half>(a, t_dtype, g);
  return 0;
}
