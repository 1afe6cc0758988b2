// The CUDA device emulated on the CPU (kernels/cpu/emulated_device.h): its
// ops are the CPU backend's bit for bit, its memory is out of the host's
// reach outside an op (a host read or write is reported and exits 86), and a
// host buffer handed to one of its ops is refused naming the op and argument.
// The device-resident decoder and MoE block are checked on it end to end by
// tests/generate (generate.test_device_emulated).
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/version.h"
#include "kernels/backend.h"
#include "kernels/cpu/cuda_module.h"
#include "kernels/cpu/emulated_device.h"
#include "testing.h"

namespace sy {
namespace {

using test::randn;

struct DeviceVec {
  const Backend& be;
  float* p;
  size_t n;
  DeviceVec(const Backend& b, const std::vector<float>& host) : be(b), n(host.size()) {
    p = static_cast<float*>(be.allocator().allocate(n * sizeof(float), 64));
    be.copy(p, host.data(), n * sizeof(float), {});
  }
  explicit DeviceVec(const Backend& b, size_t count) : be(b), n(count) {
    p = static_cast<float*>(be.allocator().allocate(n * sizeof(float), 64));
    be.zero(p, n * sizeof(float), {});
  }
  ~DeviceVec() { be.allocator().deallocate(p, n * sizeof(float), 64); }
  std::vector<float> host() const {
    std::vector<float> h(n);
    be.copy(h.data(), p, n * sizeof(float), {});
    return h;
  }
};

TEST(EmulatedDevice, OpsAreTheCpuBackendsBitForBit) {
  const Backend& dev = emulated_cuda_backend();
  const Backend& cpu = backend(Device::cpu);
  EXPECT_EQ(dev.device(), Device::cuda);
  EXPECT_EQ(dev.allocator().device(), Device::cuda);
  const int64_t N = 37, I = 45, O = 29;
  auto inp = randn(N * I, 1), w = randn(O * I, 2, 0.1f);
  std::vector<float> want(N * O), got_rms(N * I), want_rms(N * I), rstd(N), norm_w = randn(I, 3);
  cpu.linear_forward(want.data(), inp.data(), w.data(), N, I, O, {});
  cpu.rmsnorm_forward(want_rms.data(), rstd.data(), inp.data(), norm_w.data(), N, I, 1e-5f, {});
  {
    DeviceVec di(dev, inp), dw(dev, w), dout(dev, static_cast<size_t>(N * O)), dnw(dev, norm_w),
        drms(dev, static_cast<size_t>(N * I)), drstd(dev, static_cast<size_t>(N));
    dev.linear_forward(dout.p, di.p, dw.p, N, I, O, {});
    dev.rmsnorm_forward(drms.p, drstd.p, di.p, dnw.p, N, I, 1e-5f, {});
    EXPECT_EQ(std::memcmp(dout.host().data(), want.data(), want.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(drms.host().data(), want_rms.data(), want_rms.size() * sizeof(float)), 0);
    EXPECT_GT(emulated_device_bytes(), 0u);
  }
  EXPECT_EQ(emulated_device_bytes(), 0u);  // every slice came back
}

TEST(EmulatedDevice, FreedSlicesAreReusedAndCoalesced) {
  Allocator& mem = emulated_cuda_backend().allocator();
  void* a = mem.allocate(10000, 64);
  void* b = mem.allocate(10000, 64);
  void* c = mem.allocate(10000, 64);
  mem.deallocate(a, 10000, 64);
  mem.deallocate(b, 10000, 64);  // a and b coalesce: room for one slice of both
  void* d = mem.allocate(20000, 64);
  EXPECT_EQ(d, a);
  mem.deallocate(c, 10000, 64);
  mem.deallocate(d, 20000, 64);
  EXPECT_EQ(emulated_device_bytes(), 0u);
  void* e = mem.allocate(30000, 64);  // all three pages runs back in one
  EXPECT_EQ(e, a);
  mem.deallocate(e, 30000, 64);
}

using EmulatedDeviceDeathTest = ::testing::Test;

TEST(EmulatedDeviceDeathTest, HostReadOrWriteOfDeviceMemoryIsReported) {
  const Backend& dev = emulated_cuda_backend();
  auto* p = static_cast<float*>(dev.allocator().allocate(1024 * sizeof(float), 64));
  EXPECT_EXIT({ p[3] = 1.f; }, ::testing::ExitedWithCode(86), "host code touched device memory");
  EXPECT_EXIT(
      {
        volatile float x = p[5];
        (void)x;
      },
      ::testing::ExitedWithCode(86), "a missing copy to or from the device");
  dev.allocator().deallocate(p, 1024 * sizeof(float), 64);
}

TEST(EmulatedDevice, HostBufferHandedToAnOpIsRefused) {
  const Backend& dev = emulated_cuda_backend();
  std::vector<float> host_x(64, 1.f);
  DeviceVec out(dev, 64u);
  try {
    dev.add(out.p, host_x.data(), out.p, 64, {});
    FAIL() << "a host pointer was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add's argument 'x'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("host memory"), std::string::npos) << e.what();
  }
  // Copies are how host data gets there: either side may be host memory.
  dev.copy(out.p, host_x.data(), 64 * sizeof(float), {});
  EXPECT_EQ(out.host()[63], 1.f);
}

// Sets an environment variable for one scope (the tests below change
// SY_CUDA_MODULE and SY_EMULATE_CUDA, which open_backend reads).
struct ScopedEnv {
  std::string name;
  std::optional<std::string> old;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* o = std::getenv(n)) old = o;
    if (value) ::setenv(n, value, 1); else ::unsetenv(n);
  }
  ~ScopedEnv() {
    if (old) ::setenv(name.c_str(), old->c_str(), 1); else ::unsetenv(name.c_str());
  }
};

std::string open_error(Device d) {
  try {
    open_backend(d);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

TEST(EmulatedDevice, OpenBackendNamesWhyNoCudaBackendLoads) {
  // Without the emulation, open_backend(cuda) loads the CUDA module; each way
  // that fails is bad input naming the device, the file and the reason.
  ScopedEnv emu(kEmulateCudaEnv, nullptr);
  {
    ScopedEnv m(kCudaModuleEnv, "/nonexistent/libswitchyard_cuda.so");
    const auto e = open_error(Device::cuda);
    EXPECT_TRUE(has(e, "device 'cuda' is not available: no CUDA module at /nonexistent/libswitchyard_cuda.so")) << e;
  }
  {
    test::TempDir dir;
    const std::string text = dir.file("libnot_elf.so", "not a shared object\n");
    ScopedEnv m(kCudaModuleEnv, text.c_str());
    const auto e = open_error(Device::cuda);
    EXPECT_TRUE(has(e, text + " does not load: ")) << e;
  }
  {
    // A shared object that loads but is not ours: libm, found through a symbol it defines.
    Dl_info info{};
    ASSERT_NE(::dladdr(reinterpret_cast<void*>(static_cast<double (*)(double)>(&::cos)), &info), 0);
    ScopedEnv m(kCudaModuleEnv, info.dli_fname);
    const auto e = open_error(Device::cuda);
    EXPECT_TRUE(has(e, "is not a Switchyard CUDA module (no symbol sy_cuda_module_open)")) << e;
  }
  ScopedEnv yes(kEmulateCudaEnv, "yes");
  EXPECT_THROW(open_backend(Device::cuda), ConfigError);
  EXPECT_EQ(&open_backend(Device::cpu), &backend(Device::cpu));
}

TEST(EmulatedDevice, TheBuiltCudaModuleLoadsAndOpensOrNamesTheMissingGpu) {
  // This build's module, beside the tests in build/lib. Loaded here without
  // a GPU it must still load (every CUDA library found) and say there is no
  // device; with one it is the CUDA backend.
  ScopedEnv emu(kEmulateCudaEnv, nullptr);
  const auto path = cuda_module_path();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no CUDA module in this build (" << path << "): nvcc not found";
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << ::dlerror();
  auto* entry = reinterpret_cast<CudaModuleEntry>(::dlsym(h, kCudaModuleEntry));
  ASSERT_NE(entry, nullptr);
  // A module of another build refuses, naming both versions.
  char why[512] = {};
  EXPECT_EQ(entry("0.0.0 (git 0000000)", why, sizeof why), nullptr);
  EXPECT_TRUE(has(why, "the program is 0.0.0 (git 0000000)")) << why;
  EXPECT_TRUE(has(why, version())) << why;
  // Only the entry is exported: the module's copies of core and kernels_cpu stay its own.
  EXPECT_EQ(::dlsym(h, "_ZN2sy7versionEv"), nullptr) << "sy::version() is exported by the module";

  std::string e = open_error(Device::cuda);
  if (e.empty()) {
    EXPECT_EQ(open_backend(Device::cuda).device(), Device::cuda);
    EXPECT_EQ(&open_backend(Device::cuda), &backend(Device::cuda));
  } else {
    EXPECT_TRUE(has(e, "device 'cuda' is not available: " + path.string() + ": ")) << e;
    EXPECT_TRUE(has(e, "CUDA")) << e;  // the module's reason: no driver / no device
    std::cout << "no GPU: " << e << "\n";
  }
}

// Which GPU a rank opens: its node-local rank as the launcher sets it (runs without a GPU).
TEST(EmulatedDevice, TheLaunchersLocalRankPicksTheDevice) {
  const char* keys[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK", "MPI_LOCALRANKID"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* k : keys)
    if (const char* v = std::getenv(k)) saved.emplace_back(k, v);
  for (const char* k : keys) ::unsetenv(k);
  EXPECT_EQ(node_local_rank(), 0);
  ::setenv("LOCAL_RANK", "5", 1);
  EXPECT_EQ(node_local_rank(), 5);
  ::setenv("SLURM_LOCALID", "3", 1);  // srun's, ahead of LOCAL_RANK
  EXPECT_EQ(node_local_rank(), 3);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "x1", 1);  // not a number: the next one counts
  EXPECT_EQ(node_local_rank(), 3);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2", 1);
  EXPECT_EQ(node_local_rank(), 2);
  for (const char* k : keys) ::unsetenv(k);
  for (const auto& [k, v] : saved) ::setenv(k.c_str(), v.c_str(), 1);
}

TEST(EmulatedDevice, OpenBackendGivesTheEmulationWhenAsked) {
  ScopedEnv emu(kEmulateCudaEnv, "guarded");
  EXPECT_EQ(&open_backend(Device::cuda), &emulated_cuda_backend());
}

}  // namespace
}  // namespace sy
