// The staged device communicator (comm/staged.h) against the MPI backend it
// wraps: every float operation on "device" buffers (a fake device whose
// memory is registered ranges, so a host buffer is told apart) gives what
// the MPI backend gives on host buffers, with uneven and empty blocks; a
// host buffer is refused naming the operation; the results land when test()
// first says true, when wait() returns, and when a pending request is
// destroyed; host values pass straight through; Comm::over keeps a group's
// name and ranks. Run with 2 and 3 ranks.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "comm/backend.h"
#include "comm/comm.h"
#include "comm/grid.h"
#include "comm/mpi/mpi_comm.h"
#include "comm/nccl_module.h"
#include "comm/staged.h"
#include "core/module.h"
#include "core/version.h"

namespace sy {
namespace {

// Device memory is what this fake handed out; copies count their bytes.
class FakeDevice final : public DeviceAccess {
 public:
  float* alloc(const std::vector<float>& init) {  // one float more: an empty block has an address too
    blocks_.push_back(std::make_unique<std::vector<float>>(init));
    blocks_.back()->push_back(0.f);
    return blocks_.back()->data();
  }
  std::vector<float> read(const float* p, size_t n) const { return std::vector<float>(p, p + n); }
  void to_host(void* host, const void* device, size_t bytes) const override {
    EXPECT_TRUE(holds(device)) << "to_host from memory that is not the device's";
    std::memcpy(host, device, bytes), down += bytes;
  }
  void to_device(void* device, const void* host, size_t bytes) const override {
    EXPECT_TRUE(holds(device)) << "to_device into memory that is not the device's";
    std::memcpy(device, host, bytes), up += bytes;
  }
  void within(void* dst, const void* src, size_t bytes) const override {
    EXPECT_TRUE(holds(dst) && holds(src)) << "within() outside the device";
    std::memcpy(dst, src, bytes), inside += bytes;
  }
  bool holds(const void* p) const override {
    for (const auto& b : blocks_)
      if (p >= static_cast<const void*>(b->data()) && p < static_cast<const void*>(b->data() + b->size())) return true;
    return false;
  }
  const char* device_name() const override { return "fake"; }
  mutable size_t down = 0, up = 0, inside = 0;

 private:
  std::vector<std::unique_ptr<std::vector<float>>> blocks_;
};

struct Fixture {
  std::shared_ptr<const CommBackend> mpi = std::make_shared<MpiBackend>(MPI_COMM_WORLD);
  std::shared_ptr<FakeDevice> dev = std::make_shared<FakeDevice>();
  std::shared_ptr<const CommBackend> staged = staged::create(mpi, dev);
  int r = mpi->rank(), P = mpi->size();
};

// Values that say who sent them and where they sat.
std::vector<float> pattern(int rank, size_t n, float salt = 0) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = salt + 1000.f * static_cast<float>(rank) + static_cast<float>(i);
  return v;
}

TEST(StagedComm, AllToAllRowsEqualsMpiWithUnevenAndEmptyBlocks) {
  Fixture f;
  const int64_t row = 3;
  // Rank r sends (r + d) % 3 rows to rank d (0 rows for some pairs), laid out in reverse rank order.
  Counts sc(f.P), sd(f.P), rc(f.P), rd(f.P);
  int64_t off = 0;
  for (int d = f.P - 1; d >= 0; --d) sc[d] = (f.r + d) % 3, sd[d] = off, off += sc[d];
  const int64_t ns = off;
  off = 0;
  for (int s = 0; s < f.P; ++s) rc[s] = (s + f.r) % 3, rd[s] = off + 1, off += rc[s] + 1;  // gaps between blocks
  const int64_t nr = off;
  const std::vector<float> send = pattern(f.r, static_cast<size_t>(ns * row));
  std::vector<float> want(static_cast<size_t>(nr * row), -1.f);
  f.mpi->ialltoallv_rows(send.data(), sc, sd, want.data(), rc, rd, row, "reference")->wait();
  float* dsend = f.dev->alloc(send);
  float* drecv = f.dev->alloc(std::vector<float>(static_cast<size_t>(nr * row), -1.f));
  f.staged->ialltoallv_rows(dsend, sc, sd, drecv, rc, rd, row, "moe dispatch")->wait();
  EXPECT_EQ(f.dev->read(drecv, want.size()), want);  // the gaps stay -1
  EXPECT_EQ(f.dev->down, static_cast<size_t>(ns * row) * sizeof(float));
  EXPECT_EQ(f.dev->up, static_cast<size_t>((nr - f.P) * row) * sizeof(float));  // only the received rows
}

TEST(StagedComm, ReductionsAndGathersEqualMpi) {
  Fixture f;
  const size_t n = 11;
  // All-reduce in place.
  std::vector<float> want = pattern(f.r, n, 0.25f);
  f.mpi->iallreduce_sum(want.data(), static_cast<int64_t>(n), "reference")->wait();
  float* d = f.dev->alloc(pattern(f.r, n, 0.25f));
  f.staged->iallreduce_sum(d, static_cast<int64_t>(n), "gradient reduction")->wait();
  EXPECT_EQ(f.dev->read(d, n), want);
  // Reduce-scatter with uneven parts (the last member's may be empty).
  Counts counts(f.P);
  for (int m = 0; m < f.P; ++m) counts[m] = m + 1 == f.P ? 0 : static_cast<int64_t>(n) / f.P + m;
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const std::vector<float> data = pattern(f.r, static_cast<size_t>(total), 0.5f);
  std::vector<float> part(static_cast<size_t>(std::max<int64_t>(counts[f.r], 1)), -1.f);
  f.mpi->ireduce_scatter_sum(data.data(), part.data(), counts, "reference")->wait();
  float* dd = f.dev->alloc(data);
  float* dp = f.dev->alloc(std::vector<float>(part.size(), -1.f));
  f.staged->ireduce_scatter_sum(dd, dp, counts, "gradient reduction")->wait();
  EXPECT_EQ(f.dev->read(dp, part.size()), part);
  // All-gather in place: each member's block at its displacement, the rest replaced.
  Counts gc(f.P), gd(f.P);
  int64_t off = 0;
  for (int m = 0; m < f.P; ++m) gc[m] = 2 + m, gd[m] = off, off += gc[m];
  std::vector<float> mine(static_cast<size_t>(off), -7.f);
  for (int64_t i = 0; i < gc[f.r]; ++i) mine[static_cast<size_t>(gd[f.r] + i)] = 100.f * static_cast<float>(f.r) + static_cast<float>(i);
  std::vector<float> gathered = mine;
  f.mpi->iallgatherv(gathered.data(), gc, gd, "reference")->wait();
  float* dg = f.dev->alloc(mine);
  f.staged->iallgatherv(dg, gc, gd, "parameter all-gather")->wait();
  EXPECT_EQ(f.dev->read(dg, gathered.size()), gathered);
}

TEST(StagedComm, SendReceiveLandsOnTestWaitAndDestruction) {
  Fixture f;
  const int64_t n = 5;
  const int next = (f.r + 1) % f.P, prev = (f.r + f.P - 1) % f.P;
  float* src = f.dev->alloc(pattern(f.r, n));
  float* dst = f.dev->alloc(std::vector<float>(n, 0.f));
  {
    auto recv = f.staged->irecv(dst, n, prev, 7, "pipeline activation receive");
    auto send = f.staged->isend(src, n, next, 7, "pipeline send");
    while (!recv->test()) {
    }
    EXPECT_EQ(f.dev->read(dst, n), pattern(prev, n));  // landed when test() said so
    send->wait();
  }
  float* dst2 = f.dev->alloc(std::vector<float>(n, 0.f));
  {
    auto recv = f.staged->irecv(dst2, n, prev, 8, "pipeline activation receive");
    f.staged->isend(src, n, next, 8, "pipeline send")->wait();
  }  // destroyed while pending: it finishes and lands
  EXPECT_EQ(f.dev->read(dst2, n), pattern(prev, n));
}

// A group of one (each rank alone): nothing goes through the host.
TEST(StagedComm, AGroupOfOneStaysOnTheDevice) {
  Fixture f;
  Comm alone = Comm(f.staged, "world").split(f.r, 0, "alone");
  ASSERT_EQ(alone.size(), 1);
  const std::vector<float> v = pattern(f.r, 6, 0.5f);
  float* a = f.dev->alloc(v);
  float* b = f.dev->alloc(std::vector<float>(6, 0.f));
  alone.iallreduce_sum(a, 6, "gradient reduction").wait();
  EXPECT_EQ(f.dev->read(a, 6), v);
  alone.ireduce_scatter_sum(a, b, {6}, "gradient reduction").wait();
  EXPECT_EQ(f.dev->read(b, 6), v);
  float* c = f.dev->alloc(std::vector<float>(8, -1.f));
  alone.ialltoallv_rows(a, {2}, {1}, c, {2}, {2}, 2, "moe dispatch").wait();  // rows 1-2 of a to rows 2-3 of c
  EXPECT_EQ(f.dev->read(c, 8), (std::vector<float>{-1, -1, -1, -1, v[2], v[3], v[4], v[5]}));
  alone.iallgatherv(b, {6}, {0}, "parameter all-gather").wait();
  EXPECT_EQ(f.dev->read(b, 6), v);
  EXPECT_EQ(f.dev->down + f.dev->up, 0u);
  EXPECT_EQ(f.dev->inside, (6 + 4) * sizeof(float));
  std::vector<float> host(6);  // still device buffers only
  EXPECT_THROW(alone.iallreduce_sum(host.data(), 6, "gradient reduction"), std::exception);
}

TEST(StagedComm, RefusesHostBuffersNamingTheOperation) {
  Fixture f;
  std::vector<float> host(4, 1.f);
  float* d = f.dev->alloc(std::vector<float>(4, 0.f));
  auto refused = [&](auto&& call, const char* what) {
    try {
      call();
      ADD_FAILURE() << what << ": a host buffer went through";
    } catch (const std::exception& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(what), std::string::npos) << m;
      EXPECT_NE(m.find("host memory"), std::string::npos) << m;
    }
  };
  refused([&] { f.staged->iallreduce_sum(host.data(), 4, "gradient reduction"); }, "gradient reduction");
  refused([&] { f.staged->isend(host.data(), 4, 0, 1, "pipeline send"); }, "pipeline send");
  refused([&] { f.staged->irecv(host.data(), 4, 0, 1, "pipeline receive"); }, "pipeline receive");
  Counts one(f.P, 0);
  one[f.r] = 1;
  refused([&] { f.staged->ialltoallv_rows(host.data(), one, Counts(f.P, 0), d, one, Counts(f.P, 0), 1, "moe dispatch"); },
          "moe dispatch");
  refused([&] { f.staged->iallgatherv(host.data(), Counts(f.P, 1), [&] { Counts c(f.P); std::iota(c.begin(), c.end(), 0); return c; }(), "parameter all-gather"); },
          "parameter all-gather");
  f.mpi->barrier();  // nothing was posted: every rank refused before its host transport saw a call
}

TEST(StagedComm, HostValuesPassThroughAndOverKeepsTheGroup) {
  Fixture f;
  Comm world(f.mpi, "world");
  Comm twin = world.over([&](std::shared_ptr<const CommBackend> b) { return staged::create(std::move(b), f.dev); });
  EXPECT_TRUE(twin.device_buffers());
  EXPECT_FALSE(world.device_buffers());
  EXPECT_EQ(twin.describe(), world.describe());
  EXPECT_EQ(twin.rank(), world.rank());
  int64_t v = f.r + 1;  // a host value: no copies
  const size_t down = f.dev->down;
  twin.allreduce_sum(&v, 1);
  EXPECT_EQ(v, static_cast<int64_t>(f.P) * (f.P + 1) / 2);
  EXPECT_EQ(f.dev->down, down);
  EXPECT_TRUE(Comm().over([](std::shared_ptr<const CommBackend> b) { return b; }).solo());  // one stays one
  // A split of the twin is a twin of the split.
  Comm half = twin.split(f.r % 2, f.r, "half");
  EXPECT_TRUE(half.device_buffers());
  EXPECT_EQ(half.size(), (f.P + 1 - f.r % 2) / 2);
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

struct ScopedEnv {
  ScopedEnv(const char* k, const char* v) : key(k) {
    if (const char* old = std::getenv(k)) saved = old, had = true;
    v ? ::setenv(k, v, 1) : ::unsetenv(k);
  }
  ~ScopedEnv() { had ? ::setenv(key, saved.c_str(), 1) : ::unsetenv(key); }
  const char* key;
  std::string saved;
  bool had = false;
};

// lib/libswitchyard_nccl.so, the NCCL communicator a device run's groups
// use (train/device_comm.h): each way it cannot load is named; this build's
// module loads, refuses another build and exports only its entry; without a
// GPU it says so, with one it makes a NCCL twin of a group (one rank here).
TEST(NcclModule, LoadsOrNamesWhyNot) {
  std::string why;
  {
    ScopedEnv m(nccl_module::kEnv, "/nonexistent/libswitchyard_nccl.so");
    EXPECT_FALSE(nccl_module::load(nullptr, &why));
    EXPECT_TRUE(has(why, "no NCCL module at /nonexistent/libswitchyard_nccl.so")) << why;
  }
  {
    Dl_info info{};  // a shared object that loads but is not ours: libm
    ASSERT_NE(::dladdr(reinterpret_cast<void*>(static_cast<double (*)(double)>(&::cos)), &info), 0);
    ScopedEnv m(nccl_module::kEnv, info.dli_fname);
    EXPECT_FALSE(nccl_module::load(nullptr, &why));
    EXPECT_TRUE(has(why, "is not a Switchyard NCCL module (no symbol sy_nccl_module_create)")) << why;
  }
  ScopedEnv none(nccl_module::kEnv, nullptr);
  const auto path = module_path(nccl_module::kEnv, nccl_module::kFile);
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no NCCL module in this build (" << path << ")";
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << ::dlerror();
  auto* entry = reinterpret_cast<nccl_module::Entry>(::dlsym(h, nccl_module::kEntry));
  ASSERT_NE(entry, nullptr);
  char buf[512] = {};
  EXPECT_FALSE(entry("0.0.0 (git 0000000)", nullptr, nullptr, nullptr, buf, sizeof buf));
  EXPECT_TRUE(has(buf, "the program is 0.0.0 (git 0000000)") && has(buf, version())) << buf;
  EXPECT_EQ(::dlsym(h, "_ZN2sy7versionEv"), nullptr) << "sy::version() is exported by the module";
  Comm::Remake nccl = nccl_module::load(nullptr, &why);
  if (!nccl && has(why, "does not load") && has(why, "libnccl"))  // a machine without the NCCL library
    GTEST_SKIP() << "NCCL is not installed here: " << why;
  if (!nccl) {
    EXPECT_TRUE(has(why, path.string() + ": ") && has(why, "CUDA")) << why;  // no driver / no device
    std::cout << "no GPU: " << why << "\n";
    return;
  }
  Fixture f;
  if (f.P != 1) GTEST_SKIP() << "NCCL twins are made with one rank (one GPU) here";
  Comm twin = Comm(f.mpi, "world").over(nccl);
  EXPECT_TRUE(twin.device_buffers());
  EXPECT_EQ(twin.size(), 1);
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  sy::MpiEnv mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
