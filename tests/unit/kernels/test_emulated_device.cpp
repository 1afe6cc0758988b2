// The CUDA device emulated on the CPU (kernels/cpu/emulated_device.h): its
// ops are the CPU backend's bit for bit, its memory is out of the host's
// reach outside an op (a host read or write is reported and exits 86), and a
// host buffer handed to one of its ops is refused naming the op and argument.
// The device-resident decoder and MoE block are checked on it end to end by
// tests/generate (generate.test_device_emulated).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/backend.h"
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

TEST(EmulatedDevice, OpenBackendNeedsTheEmulationOrADevice) {
  // Without SY_EMULATE_CUDA and without a registered CUDA backend (this
  // program links none), the error names the device and the reason.
  ::unsetenv(kEmulateCudaEnv);
  try {
    open_backend(Device::cuda, "no GPU in this test");
    FAIL() << "open_backend(cuda) succeeded with no CUDA backend";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("device 'cuda' is not available: no GPU in this test"), std::string::npos)
        << e.what();
  }
  ::setenv(kEmulateCudaEnv, "guarded", 1);
  EXPECT_EQ(&open_backend(Device::cuda, "unused"), &emulated_cuda_backend());
  ::setenv(kEmulateCudaEnv, "yes", 1);
  EXPECT_THROW(open_backend(Device::cuda, "unused"), ConfigError);
  ::unsetenv(kEmulateCudaEnv);
  EXPECT_EQ(&open_backend(Device::cpu, "unused"), &backend(Device::cpu));
}

}  // namespace
}  // namespace sy
