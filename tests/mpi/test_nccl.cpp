// The NCCL communicator with one rank (label gpu): created from the MPI
// world, every device-buffer operation moves the right floats, a host
// buffer is refused by name. Skips without a GPU.
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <numeric>
#include <string>
#include <vector>

#include "comm/mpi/mpi_comm.h"
#include "comm/nccl/nccl_comm.h"

namespace sy {
namespace {

struct DevFloats {
  float* p = nullptr;
  size_t n;
  explicit DevFloats(const std::vector<float>& h) : n(h.size()) {
    cudaMalloc(&p, n * sizeof(float));
    cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  ~DevFloats() { cudaFree(p); }
  std::vector<float> host() const {
    std::vector<float> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
  }
};

TEST(Nccl, OneRankMovesDeviceBuffersAndRefusesHostOnes) {
  std::string why;
  if (!nccl::available(&why)) GTEST_SKIP() << "no GPU: " << why;
  auto mpi = std::make_shared<MpiBackend>(MPI_COMM_WORLD);
  ASSERT_EQ(mpi->size(), 1) << "run with one rank";
  auto nc = nccl::create(mpi);
  std::vector<float> v(10);
  std::iota(v.begin(), v.end(), 1.f);
  DevFloats a(v), b(std::vector<float>(10, 0.f));
  nc->iallreduce_sum(a.p, 10, "test all-reduce")->wait();
  EXPECT_EQ(a.host(), v);  // one rank: the sum is itself
  nc->ialltoallv_rows(a.p, {5}, {0}, b.p, {5}, {0}, 2, "test all-to-all")->wait();
  EXPECT_EQ(b.host(), v);
  DevFloats c(std::vector<float>(10, 0.f));
  nc->ireduce_scatter_sum(a.p, c.p, {10}, "test reduce-scatter")->wait();
  EXPECT_EQ(c.host(), v);
  nc->iallgatherv(c.p, {10}, {0}, "test all-gather")->wait();
  EXPECT_EQ(c.host(), v);
  std::vector<float> host(10);
  try {
    nc->iallreduce_sum(host.data(), 10, "gradient all-reduce");
    FAIL() << "a host buffer went to NCCL";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("gradient all-reduce"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  sy::MpiEnv env(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
