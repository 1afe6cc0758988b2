// Optimizer pieces, data pipeline and trainer behaviour on one rank.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "comm/comm.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "testing.h"
#include "config/run.h"
#include "train/grad_sync.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("sy_test_{}_{}", ::getpid(), counter()++);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::string file(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

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
  EXPECT_NEAR(grad_norm_part(g.data(), sync.owned(), layout).sumsq, double(layout.total()), 1e-9);
  const ParamInfo& p = layout.find("layers.1.moe.experts.1.w2");
  g[p.offset + 3] = NAN;
  g[layout.find("lm_head.weight").offset] = INFINITY;
  EXPECT_EQ(grad_norm_part(g.data(), sync.owned(), layout).nonfinite, p.index);
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

TEST(Data, TextSplitAndWindowsStayInsideFiles) {
  TempDir dir;
  std::string a = dir.file("a.txt", std::string(100, 'a')), b = dir.file("b.txt", std::string(50, 'b'));
  DataFiles files("text", {(dir.path / "*.txt").string()}, {}, 0.1, 256);
  EXPECT_EQ(files.train().tokens(), 90 + 45);
  EXPECT_EQ(files.val().tokens(), 10 + 5);
  EXPECT_EQ(files.train().windows(40), (90 - 39) + (45 - 39));
  std::vector<int32_t> w(40);
  files.train().window(90 - 39, 40, w.data(), 256);  // first window of b.txt
  EXPECT_EQ(w[0], 'b');
  EXPECT_EQ(w[39], 'b');
  EXPECT_THROW(files.train().window(1000, 40, w.data(), 256), Error);
}

TEST(Data, ShardRoundTrip) {
  TempDir dir;
  std::vector<uint16_t> toks(1000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<uint16_t>(i * 7 % 50000);
  write_token_shard((dir.path / "s.bin").string(), toks);
  DataFiles files("bin", {(dir.path / "s.bin").string()}, {}, 0.0, 50257);
  std::vector<int32_t> w(10);
  files.train().window(123, 10, w.data(), 50257);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(w[i], toks[123 + i]);
  try {
    files.train().window(0, 10, w.data(), 20);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("token 21 at position 3"), std::string::npos) << e.what();
  }
}

TEST(Batcher, GlobalBatchIsIndependentOfDataParallelLayout) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 3000; ++i) text += static_cast<char>('a' + (i * 31 + i / 7) % 26);
  dir.file("t.txt", text);
  DataFiles files("text", {(dir.path / "t.txt").string()}, {}, 0.1, 256);
  const int64_t T = 8;
  // dp = 1 with 4 sequences vs dp = 2 with 2 sequences each, grad_accum 2.
  Batcher one(files.train(), files.val(), T, 4, 1, 2, 99, 256), two(files.train(), files.val(), T, 2, 2, 2, 99, 256);
  for (int64_t micro = 0; micro < 2; ++micro) {
    std::vector<int32_t> in1(4 * T), tg1(4 * T), in2(4 * T), tg2(4 * T);
    one.train_batch(3, micro, 0, in1.data(), tg1.data());
    two.train_batch(3, micro, 0, in2.data(), tg2.data());
    two.train_batch(3, micro, 1, in2.data() + 2 * T, tg2.data() + 2 * T);
    EXPECT_EQ(in1, in2);
    EXPECT_EQ(tg1, tg2);
    for (int64_t i = 0; i + 1 < T; ++i) EXPECT_EQ(tg1[i], in1[i + 1]);
    one.val_batch(micro, 0, in1.data(), tg1.data());
    two.val_batch(micro, 0, in2.data(), tg2.data());
    two.val_batch(micro, 1, in2.data() + 2 * T, tg2.data() + 2 * T);
    EXPECT_EQ(in1, in2);
  }
}

TEST(Config, ResolvedTomlParsesBackToTheSameConfig) {
  RunConfig a = parse_config(default_config_text(), "t", {"moe.score=sigmoid", "train.lr=0.5", "data.val=[\"x\", \"y\"]"});
  std::string text = to_toml(a);
  RunConfig b = parse_config(text, "t2");
  EXPECT_EQ(to_toml(b), text);
  EXPECT_EQ(b.model.moe.score, ScoreFn::sigmoid);
  EXPECT_EQ(b.data.val, (std::vector<std::string>{"x", "y"}));
  EXPECT_DOUBLE_EQ(b.train.lr, 0.5);
}

}  // namespace
}  // namespace sy

// Trainer needs MPI (a singleton world of one rank).
class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { env_ = std::make_unique<sy::MpiEnv>(nullptr, nullptr); }
  void TearDown() override { env_.reset(); }

 private:
  std::unique_ptr<sy::MpiEnv> env_;
};
static auto* const mpi_env = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);
