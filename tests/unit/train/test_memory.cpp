// The memory estimate against what the code allocates, and the check that
// refuses a run that cannot fit before it allocates.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/ranges.h>

#include "comm/comm.h"
#include "estimate/model_size.h"
#include "model/layout.h"
#include "model/transformer.h"
#include "testing.h"
#include "config/run.h"
#include "estimate/memory.h"
#include "train/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

bool has(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

std::vector<ModelConfig> models() {
  std::vector<ModelConfig> out;
  ModelConfig m;
  m.vocab_size = 300, m.seq_len = 24, m.d_model = 32, m.n_layers = 3, m.n_heads = 4, m.n_kv_heads = 2;
  m.dense_layers = 1, m.dense_hidden = 80, m.moe.experts = 4, m.moe.top_k = 2, m.moe.expert_hidden = 24;
  out.push_back(m);
  m.tie_embeddings = true, m.moe.shared_experts = 2, m.head_dim = 10;  // odd widths: 64-byte rounding shows
  out.push_back(m);
  m.dense_layers = 3, m.dense_hidden = 0;  // no MoE layer at all
  out.push_back(m);
  m.dense_layers = 0, m.n_layers = 4, m.moe.experts = 8, m.moe.top_k = 3, m.moe.capacity_factor = 0;
  out.push_back(m);
  return out;
}

TEST(Estimate, ParamCountsMatchTheLayoutTable) {
  for (const ModelConfig& m : models())
    for (ExpertSlice slice : {ExpertSlice{}, ExpertSlice{0, m.moe.experts / 2}, ExpertSlice{m.moe.experts - 1, 1}}) {
      std::vector<StageSpec> stages = {StageSpec{}};
      StageSpec first, last, middle;
      first.layers = {true, false, false}, first.head = false;
      last.layers = {false, false, true}, last.embed = false;
      middle.layers = {false, true, false}, middle.embed = middle.head = false;
      if (m.n_layers == 3) stages.insert(stages.end(), {first, last, middle});
      for (const StageSpec& st : stages) {
        ParamLayout layout(m, slice, st);
        const ParamCount n = count_params(m, slice, st);
        int64_t expert = 0, largest = 0, embed_head = 0;
        for (const ParamInfo& p : layout.params()) {
          expert += p.expert >= 0 ? p.numel() : 0;
          largest = std::max(largest, p.numel());
          embed_head += p.layer < 0 ? p.numel() : 0;
        }
        EXPECT_EQ(n.total, layout.total());
        EXPECT_EQ(n.expert, expert);
        EXPECT_EQ(n.embed_head, embed_head);
        EXPECT_EQ(n.largest, largest);
      }
    }
}

TEST(Estimate, ArenaIsCountedExactly) {
  for (const ModelConfig& m : models())
    for (bool fp8 : {false, true})
      for (StageRun run : {StageRun{}, StageRun{1, 3, false, true, 3, nullptr}, StageRun{0, 1, true, false, 2, nullptr}}) {
        if (m.n_layers < 3 && run.end > m.n_layers) continue;
        Transformer t(m, 3, {}, fp8, run);
        EXPECT_EQ(Transformer::arena_bytes(m, 3, fp8, run), static_cast<double>(t.activation_memory().arena))
            << "fp8 " << fp8 << " layers " << run.begin << ".." << run.end << " slots " << run.slots;
      }
}

TEST(Estimate, HugeBatchesAreExtrapolatedNotOverflowed) {
  // 2^30 sequences of 2^20 tokens with 2^16 logits per token: a single
  // logits buffer is 2^68 bytes, past 64 bits. Sizes are affine in the
  // batch (every buffer is a multiple of 64 bytes at T = 2^20, so rounding
  // adds nothing), so the estimate must continue the line through two
  // batches small enough to count exactly; 1e-12 relative is double rounding.
  ModelConfig m = models()[0];
  m.vocab_size = 1 << 16, m.seq_len = 1 << 20;
  const double a = Transformer::arena_bytes(m, 1024, false), b = Transformer::arena_bytes(m, 2048, false);
  const double huge = Transformer::arena_bytes(m, 1 << 30, false);
  EXPECT_TRUE(std::isfinite(huge));
  EXPECT_GT(huge, 0x1p68);
  EXPECT_NEAR(huge / (a + ((1 << 30) - 1024) * (b - a) / 1024), 1.0, 1e-12);
}

// estimate/ sums the arena without the model (moe-launch links no model):
// it must be the model's own count, buffer for buffer, for every block
// kind, FP8 storage, stage chunk and slot count, and past 64 bits.
TEST(Estimate, TheEstimatesArenaIsTheModels) {
  for (const ModelConfig& m : models())
    for (bool fp8 : {false, true})
      for (int64_t B : {1, 3})
        for (StageRun run : {StageRun{}, StageRun{1, 3, false, true, 3, nullptr}, StageRun{0, 1, true, false, 2, nullptr},
                             StageRun{1, 2, false, false, 1, nullptr}}) {
          if (m.n_layers < 3 && run.end > m.n_layers) continue;
          const StageChunk chunk{run.begin, run.end, run.embed, run.head, run.slots};
          EXPECT_EQ(arena_bytes(m, B, fp8, chunk), Transformer::arena_bytes(m, B, fp8, run))
              << "fp8 " << fp8 << " B " << B << " layers " << run.begin << ".." << run.end << " slots " << run.slots;
        }
  ModelConfig m = models()[1];
  m.vocab_size = 1 << 16, m.seq_len = 1 << 20;
  for (bool fp8 : {false, true})
    EXPECT_EQ(arena_bytes(m, 1 << 30, fp8, {0, -1, true, true, 2}),
              Transformer::arena_bytes(m, 1 << 30, fp8, StageRun{0, -1, true, true, 2, nullptr}));
}

RunConfig config(const fs::path& dir, std::vector<std::string> sets = {}) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += fmt::format("line {} of a small corpus.\n", i);
  std::ofstream(dir / "corpus.txt") << text;
  std::vector<std::string> all = {"model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2",
                                  "model.seq_len=24", "model.dense_hidden=80", "moe.experts=4",
                                  "moe.expert_hidden=24", "moe.shared_experts=1", "train.global_batch=3",
                                  "train.val_every=0", "data.train=" + (dir / "corpus.txt").string()};
  all.insert(all.end(), sets.begin(), sets.end());
  return parse_config(default_config_text(), "test", all);
}

// The estimate of a one-rank run against the Trainer's own buffers after
// two steps (expert row buffers grow during the first): weights, gradients,
// AdamW moments and the arena exactly; expert rows exactly too, since one
// rank's experts receive every pick (N K rows, dropless) whatever the
// routing; FP8 storage within its stated bound.
TEST(Estimate, MatchesWhatATrainerAllocates) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("sy_memory_{}", ::getpid());
  fs::create_directories(dir);
  for (const auto& sets : std::vector<std::vector<std::string>>{
           {}, {"precision.moments=\"bf16\""}, {"model.tie_embeddings=true", "parallel.zero1=true"},
           {"precision.recipe=\"fp8-tensor-current\""}, {"precision.recipe=\"fp8-block\""}}) {
    RunConfig cfg = config(dir, sets);
    Trainer t(cfg, Comm::world());
    t.step(0);
    t.step(1);
    RunConfig resolved = t.config();
    const MemoryEstimate e = estimate_memory(resolved, {1, 1, 1});
    const double n = static_cast<double>(t.model().layout().total());
    const bool bf16 = cfg.precision.moments == Moments::bf16;
    EXPECT_EQ(e.params, 4 * n);
    EXPECT_EQ(e.grads, 4 * (n + (cfg.parallel.zero1 ? static_cast<double>(t.sync().state_size()) : 0)));
    EXPECT_EQ(e.optimizer, 2 * (bf16 ? 2 : 4) * static_cast<double>(t.sync().state_size()));
    const Transformer::ActivationMemory real = t.model().activation_memory();
    const bool fp8 = is_fp8(cfg.precision.recipe);
    RowOptions rows;
    rows.fp8_activations = fp8, rows.fp8_block = cfg.precision.recipe == Recipe::fp8_block;
    const ActivationBytes a = estimate_activations(resolved.model, resolved.train.micro_batch, StageChunk{}, rows);
    EXPECT_EQ(a.arena, static_cast<double>(real.arena)) << fmt::format("{}", fmt::join(sets, " "));
    EXPECT_EQ(a.expert_rows + a.moe_scratch,
              static_cast<double>(real.expert_rows + t.model().moe_scratch_bytes()))
        << fmt::format("{}: estimate rows {} scratch {}, real rows {} scratch {}", fmt::join(sets, " "), a.expert_rows,
                       a.moe_scratch, real.expert_rows, t.model().moe_scratch_bytes());
    // FP8: a byte per saved element and a scale per tensor (per expert in
    // the grouped GEMMs) are exact; block scales come per 1 x 128 tile of
    // each expert's rows, which the estimate counts for a balanced load: an
    // uneven one moves at most one partial tile per expert and saved row
    // (C of the inputs, F of the SwiGLU outputs) in each of the 2 MoE layers.
    if (cfg.precision.recipe == Recipe::fp8_tensor_current)
      EXPECT_EQ(a.fp8, static_cast<double>(real.fp8));
    else if (fp8)
      EXPECT_LE(std::abs(a.fp8 - static_cast<double>(real.fp8)), 4.0 * 2 * 4 * (32 + 24)) << a.fp8 << " vs " << real.fp8;
    else
      EXPECT_EQ(real.fp8, 0u);
    EXPECT_EQ(e.activations, a.arena + a.fp8 + 2.0 * 4 * static_cast<double>(resolved.train.micro_batch *
                                                                             resolved.model.seq_len));
  }
  fs::remove_all(dir);
}

// A fake /proc and /sys: MemAvailable and a cgroup limit, the smaller wins.
TEST(Memory, AvailableIsTheSmallerOfMemAvailableAndTheCgroupRoom) {
  const fs::path root = fs::temp_directory_path() / fmt::format("sy_fake_root_{}", ::getpid());
  auto put = [&](const std::string& path, const std::string& text) {
    fs::create_directories((root / path).parent_path());
    std::ofstream(root / path) << text;
  };
  put("proc/meminfo", "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n");
  put("proc/self/cgroup", "0::/job/step\n");
  EXPECT_EQ(available_memory(root.string()).bytes, 20000000.0 * 1024);  // no cgroup files: MemAvailable
  put("sys/fs/cgroup/job/step/memory.max", "max\n");
  put("sys/fs/cgroup/job/memory.max", "8589934592\n");  // 8 GiB on the parent
  put("sys/fs/cgroup/job/memory.current", "2147483648\n");
  put("sys/fs/cgroup/job/memory.stat", "anon 1\ninactive_file 1073741824\nactive_file 5\n");
  MemoryAvailable a = available_memory(root.string());
  EXPECT_EQ(a.bytes, 7.0 * (1 << 30));  // 8 GiB - 2 GiB used + 1 GiB reclaimable cache
  EXPECT_EQ(a.source, "cgroup memory.max");
  fs::remove_all(root);
  // cgroup v1, mounted at the group itself (as in a container).
  put("proc/meminfo", "MemAvailable:   20000000 kB\n");
  put("proc/self/cgroup", "12:pids:/x\n4:memory:/process_api/abc\n");
  put("sys/fs/cgroup/memory/memory.usage_in_bytes", "1073741824\n");
  put("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");  // unlimited here
  put("sys/fs/cgroup/memory/memory.stat", "cache 0\nhierarchical_memory_limit 4294967296\ntotal_inactive_file 0\n");
  a = available_memory(root.string());
  EXPECT_EQ(a.bytes, 3.0 * (1 << 30));  // the ancestors' 4 GiB limit, 1 GiB used
  EXPECT_EQ(a.source, "cgroup memory.limit_in_bytes");
  fs::remove_all(root);
  EXPECT_LT(available_memory(root.string()).bytes, 0);  // nothing readable: unknown
  EXPECT_GT(available_memory().bytes, 0);               // this machine
}

TEST(Memory, TooBigIsRefusedNamingTheLargestPartAndItsKeys) {
  const MemoryAvailable node{22.0 * (1 << 30), "MemAvailable"};
  struct Case {
    std::string set, term, key;
  };
  for (const Case& c : std::vector<Case>{
           {"model.vocab_size=16777216", "activations need", "model.vocab_size = 16777216"},
           {"model.seq_len=1048576", "activations need", "model.seq_len = 1048576, train.micro_batch = train.global_batch = 16"},
           {"train.global_batch=1073741824", "activations need", "train.micro_batch = train.global_batch = 1073741824"},
           {"moe.expert_hidden=1048576", "expert rows need", "moe.expert_hidden = 1048576"},
           {"model.d_model=65536", "AdamW moments need", "model.d_model = 65536"},
           {"moe.experts=4096", "", ""}}) {  // 2.4 G parameters: ~10 GiB fits 22 GiB on one rank
    RunConfig cfg = parse_config(default_config_text(), "cfg.toml", {c.set});
    cfg.resolve_batch(1);
    const MemoryEstimate e = estimate_memory(cfg, {1, 1, 1});
    if (c.term.empty()) {
      EXPECT_NO_THROW(check_memory(cfg, e, node, 1)) << c.set;
      EXPECT_THROW(check_memory(cfg, e, node, 8), ConfigError) << "shared by 8 ranks on the node";
      continue;
    }
    try {
      check_memory(cfg, e, node, 1);
      ADD_FAILURE() << c.set << " fits?";
    } catch (const ConfigError& err) {
      const std::string msg = err.what();
      EXPECT_TRUE(has(msg, "cfg.toml: not enough memory: " + c.term) && has(msg, c.key) &&
                  has(msg, "22.0 GiB available (MemAvailable)"))
          << msg;
    }
    EXPECT_NO_THROW(check_memory(cfg, e, MemoryAvailable{}, 1));  // unknown: nothing to hold it against
    ::setenv("SY_SKIP_MEMORY_CHECK", "1", 1);
    EXPECT_NO_THROW(check_memory(cfg, e, node, 1));
    ::unsetenv("SY_SKIP_MEMORY_CHECK");
  }
}

TEST(Memory, ADeviceRunHoldsActivationsOnTheDeviceAndTheRestOnBoth) {
  RunConfig cfg = parse_config(default_config_text(), "cfg.toml", {"model.seq_len=4096", "train.global_batch=8",
                                                                     "run.device=cuda"});
  cfg.resolve_batch(1);
  const MemoryEstimate e = estimate_memory(cfg, {1, 1, 1});
  const double gib = 1 << 30;
  // The host keeps the weights, gradients, moments and checkpoint staging, not the activations.
  const MemoryEstimate host = on_device_host(e);
  EXPECT_EQ(host.activations, 0);
  EXPECT_EQ(host.expert_rows, 0);
  EXPECT_EQ(host.params, e.params);
  EXPECT_EQ(host.staging, e.staging);
  EXPECT_GT(e.activations + e.expert_rows, 1.5 * gib);  // what the device must hold
  EXPECT_LT(host.total(), 0.5 * gib);
  EXPECT_NO_THROW(check_memory(cfg, host, MemoryAvailable{1.0 * gib, "MemAvailable"}, 1));
  // A device with 1 GiB free cannot; one with 80 GiB can, for one rank, not for 64 sharing it.
  try {
    check_device_memory(cfg, e, 1.0 * gib, 1.0 * gib, 1);
    ADD_FAILURE() << "1.7 GiB fit a 1 GiB device?";
  } catch (const ConfigError& err) {
    const std::string msg = err.what();
    EXPECT_TRUE(has(msg, "cfg.toml: run.device = \"cuda\": not enough device memory: activations need") &&
                has(msg, "model.seq_len = 4096") && has(msg, "the device has 1.0 GiB free of 1.0 GiB") &&
                !has(msg, "checkpoint staging"))
        << msg;
  }
  EXPECT_NO_THROW(check_device_memory(cfg, e, 80 * gib, 80 * gib, 1));
  EXPECT_THROW(check_device_memory(cfg, e, 80 * gib, 80 * gib, 64), ConfigError);
  ::setenv("SY_SKIP_MEMORY_CHECK", "1", 1);
  EXPECT_NO_THROW(check_device_memory(cfg, e, 1.0 * gib, 1.0 * gib, 1));
  ::unsetenv("SY_SKIP_MEMORY_CHECK");
}

TEST(Memory, TheTrainerRefusesBeforeAllocating) {
  // 16M-token vocabulary: 128 GiB of logits. Without the check this is a
  // std::bad_alloc (or the OOM killer) in the Transformer's arena.
  const fs::path dir = fs::temp_directory_path() / fmt::format("sy_memory_t_{}", ::getpid());
  fs::create_directories(dir);
  RunConfig cfg = config(dir, {"model.vocab_size=16777216", "train.global_batch=64", "model.seq_len=128"});
  try {
    Trainer t(cfg, Comm::world());
    ADD_FAILURE() << "a 16M vocabulary fit?";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(has(e.what(), "not enough memory: activations need")) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sy
