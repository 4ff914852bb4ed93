// CUDA entry point of the fused KD(+CE) kernel: dtype dispatch, block size and grid size.
// The device code is in kd_cuda_kernel.cuh; the math is stated in kd_common.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "kd_common.h"
#include "cuda/kd_cuda_kernel.cuh"

namespace edgekd {
namespace {

struct DeviceInfo {
  int sms = 0;
  int l2_bytes = 0;
};

// Per-device attributes, queried once.
cudaError_t device_info(DeviceInfo* out) {
  static std::mutex mu;
  static DeviceInfo cache[64];
  static bool known[64] = {};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mu);
  if (dev >= 0 && dev < 64 && known[dev]) {
    *out = cache[dev];
    return cudaSuccess;
  }
  DeviceInfo info;
  err = cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&info.l2_bytes, cudaDevAttrL2CacheSize, dev);
  if (err != cudaSuccess) return err;
  if (dev >= 0 && dev < 64) {
    cache[dev] = info;
    known[dev] = true;
  }
  *out = info;
  return cudaSuccess;
}

template <class S, class Tt, int B>
cudaError_t launch(const cuda_kd::Args& a, bool multi_pass, cudaStream_t stream) {
  auto kernel = cuda_kd::kd_fwd_kernel<S, Tt, B>;
  DeviceInfo info;
  cudaError_t err = device_info(&info);
  if (err != cudaSuccess) return err;
  int occ = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, B, 0);
  if (err != cudaSuccess) return err;
  occ = std::max(occ, 1);
  // Rows re-read by later passes should still be in L2: with fewer rows in flight each keeps a larger
  // share of it. Keep at least 2 blocks per SM so loads of one row overlap another's reductions.
  int per_sm = occ;
  if (multi_pass && info.l2_bytes > 0) {
    const double row_bytes =
        static_cast<double>(a.V) * (sizeof(S) + (a.kd ? sizeof(Tt) : 0));
    const double fit = 0.5 * info.l2_bytes / (row_bytes * std::max(info.sms, 1));
    per_sm = std::min(occ, std::max(2, static_cast<int>(fit)));
  }
  if (const char* env = std::getenv("EDGEKD_CUDA_BLOCKS_PER_SM")) {  // tuning knob for benchmarks
    const int v = std::atoi(env);
    if (v > 0) per_sm = v;
  }
  const int64_t cap = static_cast<int64_t>(std::max(info.sms, 1)) * per_sm;
  const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(a.rows, cap));
  kernel<<<grid, B, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class S, class Tt>
cudaError_t launch_threads(const cuda_kd::Args& a, bool multi_pass, cudaStream_t stream) {
  if (cuda_kd::block_threads(a.V) == 512) return launch<S, Tt, 512>(a, multi_pass, stream);
  return launch<S, Tt, 256>(a, multi_pass, stream);
}

template <class S>
cudaError_t dispatch_teacher(const cuda_kd::Args& a, int t_dtype, bool multi_pass, cudaStream_t stream) {
  switch (t_dtype) {
    case kFloat32:
      return launch_threads<S, float>(a, multi_pass, stream);
    case kBFloat16:
      return launch_threads<S, __nv_bfloat16>(a, multi_pass, stream);
    case kFloat16:
      return launch_threads<S, __half>(a, multi_pass, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

int kd_forward_cuda(const KDParams& p, void* stream) {
  if (p.rows <= 0) return static_cast<int>(cudaSuccess);
  cuda_kd::Args a;
  bool multi_pass = false;
  if (!cuda_kd::make_args(p, &a, &multi_pass)) return static_cast<int>(cudaErrorInvalidValue);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (p.s_dtype) {
    case kFloat32:
      err = dispatch_teacher<float>(a, p.t_dtype, multi_pass, st);
      break;
    case kBFloat16:
      err = dispatch_teacher<__nv_bfloat16>(a, p.t_dtype, multi_pass, st);
      break;
    default:
      err = dispatch_teacher<__half>(a, p.t_dtype, multi_pass, st);
      break;
  }
  return static_cast<int>(err);
}

}  // namespace edgekd
