// The CUDA backend: the op interface (kernels/backend.h) on an NVIDIA GPU.
// GEMMs through cuBLAS (FP32, never TF32; BF16 inputs with FP32 accumulation;
// the grouped expert GEMMs in one cublasGemmGroupedBatchedEx:
// kernels/cuda/gemm_cuda.h) and cuBLASLt (FP8, kernels/cuda/fp8_cuda.h);
// every other op a kernel of its own in cuda_backend.cu whose per-element math is
// kernels/math.h (shared with the CPU test). Memory from cudaMalloc through
// the backend's allocator (arenas take it once: no allocation inside a
// step); every op is ordered on the Stream it is given.
//
// The tools load it at run time as lib/libswitchyard_cuda.so
// (kernels/cuda/module.cpp, kernels/cpu/cuda_module.h).
//
// Status: compiled and linked in every CI run; the gpu-labelled tests
// (tests/unit/kernels/test_cuda_backend.cpp) compare each op with the CPU
// backend and skip without a GPU. Not yet run on a GPU.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/backend.h"

namespace sy::cuda {

// The CUDA backend if a device is usable (else null, the reason in *why).
// Its device is the node-local rank (node_local_rank(), kernels/cpu/cuda_module.h)
// modulo the visible devices.
const Backend* backend_or_null(std::string* why = nullptr);
// Registers it as backend(Device::cuda); false (and why) without a device.
bool register_backend(std::string* why = nullptr);

// The first, simple attention forward (a thread per query, keys read from
// global memory), kept as the reference of the tiled kernel the backend
// runs (kernels/cuda/attention_cuda.h); the gpu tests compare the two.
void attention_forward_simple(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                              int64_t D, Stream s = {});

}  // namespace sy::cuda
