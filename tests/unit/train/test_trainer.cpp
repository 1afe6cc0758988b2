// Optimizer pieces, data pipeline and trainer behaviour on one rank.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "comm/comm.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/emulated_device.h"
#include "testing.h"
#include "config/run.h"
#include "train/grad_sync.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

TEST(Schedule, WarmupThenCosineToMinimum) {
  TrainSection t;
  t.lr = 1.0;
  t.min_lr_ratio = 0.1;
  t.warmup_steps = 10;
  t.steps = 110;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(t, 10), 1.0);
  EXPECT_NEAR(lr_at(t, 60), 0.55, 1e-12);   // half-way down the cosine
  EXPECT_NEAR(lr_at(t, 110), 0.1, 1e-12);
  t.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1.0);
}

TEST(Clip, FactorMatchesPyTorchClipGradNorm) {
  EXPECT_EQ(clip_coef(5.0, 10.0), 1.0);
  EXPECT_EQ(clip_coef(5.0, 0.0), 1.0);  // off
  EXPECT_NEAR(clip_coef(5.0, 1.0), 1.0 / (5.0 + 1e-6), 1e-15);
}

TEST(GradNorm, NamesTheFirstNonFiniteTensor) {
  ModelConfig m;
  m.d_model = 8, m.n_layers = 2, m.n_heads = 2, m.n_kv_heads = 2, m.moe.experts = 2, m.moe.expert_hidden = 4;
  ParamLayout layout(m);
  GradSync sync(layout, Grid(), false);
  std::vector<float> g(layout.total(), 1.f);
  EXPECT_NEAR(grad_norm_part(cpu_backend(), {}, g.data(), sync.owned(), layout).sumsq, double(layout.total()), 1e-9);
  const ParamInfo& p = layout.find("layers.1.moe.experts.1.w2");
  g[p.offset + 3] = NAN;
  g[layout.find("lm_head.weight").offset] = INFINITY;
  EXPECT_EQ(grad_norm_part(cpu_backend(), {}, g.data(), sync.owned(), layout).nonfinite, p.index);
}

TEST(GradSync, SingleRankBucketsCoverEveryParameterOnce) {
  ModelConfig m;
  m.d_model = 8, m.n_layers = 3, m.n_heads = 2, m.n_kv_heads = 2, m.moe.experts = 4, m.moe.expert_hidden = 4;
  for (bool tied : {false, true}) {
    m.tie_embeddings = tied;
    ParamLayout layout(m);
    std::vector<int> covered(layout.total(), 0);
    for (const Bucket& b : layout.buckets())
      for (int64_t i = b.begin; i < b.end; ++i) ++covered[i];
    for (int64_t i = 0; i < layout.total(); ++i) ASSERT_EQ(covered[i], 1) << "element " << i;
    GradSync sync(layout, Grid(), true);
    EXPECT_EQ(sync.state_size(), layout.total());  // one rank owns everything
  }
}

RunConfig small_config(const TempDir& dir) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += fmt::format("line {} of a small corpus, with words.\n", i);
  std::string data = dir.file("corpus.txt", text);
  RunConfig c = parse_config(default_config_text(), "test",
                             {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
                              "model.seq_len=16", "model.dense_hidden=48", "moe.experts=4",
                              "moe.expert_hidden=16", "train.global_batch=4", "train.steps=5",
                              "train.val_every=0", "data.train=" + data, "moe.bias_update_rate=0.01"});
  return c;
}

TEST(Trainer, NanInTheWeightsStopsWithAClearError) {
  TempDir dir;
  Trainer t(small_config(dir), Comm::world());
  t.step(0);
  t.params()[t.model().layout().find("layers.0.attn.wo").offset] = NAN;
  try {
    t.step(1);
    FAIL() << "a NaN loss must stop training";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the loss is nan at step 1"), std::string::npos) << e.what();
  }
}

TEST(Trainer, BiasStepsBySignOfTheLoadError) {
  TempDir dir;
  Trainer t(small_config(dir), Comm::world());
  StepStats s = t.step(0);
  const auto& bias = t.expert_bias();
  ASSERT_EQ(bias.size(), 4u);
  double mean = 0;
  for (int64_t c : s.load[0]) mean += double(c) / 4;
  for (int e = 0; e < 4; ++e) {
    double expect = s.load[0][e] < mean ? 0.01 : (s.load[0][e] > mean ? -0.01 : 0.0);
    EXPECT_FLOAT_EQ(bias[e], static_cast<float>(expect)) << "expert " << e;
  }
}

TEST(Trainer, LossFallsOnARepetitiveCorpus) {
  TempDir dir;
  RunConfig c = small_config(dir);
  c.train.steps = 40;
  c.train.lr = 1e-2;
  Trainer t(c, Comm::world());
  double first = t.step(0).loss, last = 0;
  for (int s = 1; s < 40; ++s) last = t.step(s).loss;
  EXPECT_LT(last, 0.6 * first) << first << " -> " << last;
}

// One rank's second step on the emulated device, run as c says: the bytes
// it moved between host and device against the gradients' bytes (printed).
void expect_step_stays_on_device(RunConfig c, const std::string& what) {
  c.run.device = "cuda";
  Trainer t(c, Comm::world());
  t.step(0);
  const size_t before = emulated_device_host_copy_bytes();
  t.step(1);
  const size_t moved = emulated_device_host_copy_bytes() - before;
  const size_t grads = static_cast<size_t>(t.model().layout().total()) * sizeof(float);
  std::cout << what << ": " << moved << " bytes between host and device in a step; gradients " << grads << "\n";
  EXPECT_LT(moved, grads / 4) << what;
}

// One rank on a device: the gradients, and with ZeRO-1 the reduced shard,
// stay in device memory (its groups of one copy within the device), so a
// step moves only the batch, the losses, the router's choices and the
// statistics between host and device. Staging the gradients (each bucket's
// all-reduce through the host, as a size-one MPI group would need) moves at
// least twice their bytes a step.
TEST(Trainer, OneRankOnADeviceKeepsItsGradientsThere) {
  ::setenv(kEmulateCudaEnv, "guarded", 1);
  TempDir dir;
  for (bool zero1 : {false, true}) {
    RunConfig c = small_config(dir);
    c.parallel.zero1 = zero1;
    expect_step_stays_on_device(c, zero1 ? "zero1" : "fp32");
  }
  ::unsetenv(kEmulateCudaEnv);
}

// The FP8 recipes on a device: codes and scales are quantized into device
// memory, saved there for backward and read there by the FP8 GEMM, so a
// step moves no more between host and device than an FP32 step does. When
// the codes lived on the host (before), every FP8 GEMM moved both operands'
// codes across and back: at least 6 bytes per weight a step (3 GEMMs, two
// ways), 1.5 times the FP32 gradients' bytes. The emulated device faults
// where host code reads device memory, and its FP8 GEMM refuses a matrix
// quantized into host memory, so either would also fail here.
TEST(Trainer, Fp8StepOnADeviceKeepsItsCodesThere) {
  ::setenv(kEmulateCudaEnv, "guarded", 1);
  TempDir dir;
  for (Recipe r : {Recipe::fp8_block, Recipe::fp8_tensor_delayed}) {
    RunConfig c = small_config(dir);
    c.precision.recipe = r;
    expect_step_stays_on_device(c, option_name(r));
  }
  ::unsetenv(kEmulateCudaEnv);
}

}  // namespace
}  // namespace sy

// Trainer needs MPI (a singleton world of one rank).
#include "mpi_environment.h"
