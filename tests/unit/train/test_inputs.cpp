// Bad inputs are refused when they are read, naming the culprit: tokens
// outside the vocabulary (every token of a shard, at open), files that are
// not regular files (FIFO, directory, device), ranges that give NaN, run
// names that leave runs/, thread counts the machine cannot use.
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "comm/comm.h"
#include "data/dataset.h"
#include "core/mapped_file.h"
#include "testing.h"
#include "config/run.h"
#include "train/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

template <class F>
std::string config_error(F f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

bool has(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// A call that may block (a FIFO opened for reading) fails the test after
// 30 s instead of hanging it: SIGALRM's default action ends the process.
struct Deadline {
  Deadline() { ::alarm(30); }
  ~Deadline() { ::alarm(0); }
};

int64_t naive_first(const std::vector<uint16_t>& v, int64_t vocab) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] >= vocab) return static_cast<int64_t>(i);
  return -1;
}

TEST(TokenScan, FindsTheFirstTokenAtOrAboveTheVocabulary) {
  const int64_t B = kTokenScanBlock;
  const int64_t vocab = 1000;
  // Sizes around the block size; bad tokens at the edges of blocks, several
  // per array so a later block's hit must not win over an earlier one.
  for (int64_t n : {int64_t{1}, int64_t{17}, B - 1, B, B + 1, 5 * B + 3}) {
    std::vector<std::vector<int64_t>> placements = {{}, {0}, {n - 1}};
    if (n > B) placements.push_back({B - 1, B, n - 1});
    if (n > 4 * B) placements.push_back({4 * B + 2, 2 * B + 7, 3 * B});
    for (const auto& bad : placements) {
      std::vector<uint16_t> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<uint16_t>((i * 7919) % vocab);
      for (int64_t p : bad) v[static_cast<size_t>(p)] = static_cast<uint16_t>(vocab + p % 50);
      const int64_t want = naive_first(v, vocab);
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        const TokenScan got = first_token_at_or_above(v.data(), n, vocab);
        ASSERT_EQ(got.position, want) << "n " << n << " threads " << threads;
        if (want >= 0) {
          EXPECT_EQ(got.token, v[static_cast<size_t>(want)]);
        }
      }
    }
  }
  omp_set_num_threads(2);
  std::vector<uint16_t> top(100, 65535);
  EXPECT_EQ(first_token_at_or_above(top.data(), 100, 65536).position, -1);  // every uint16 fits 65536 ids
  EXPECT_EQ(first_token_at_or_above(top.data(), 100, 65535).position, 0);
  std::vector<uint8_t> bytes(300, 'a');
  bytes[250] = 200;
  EXPECT_EQ(first_byte_at_or_above(bytes.data(), 300, 256), -1);
  EXPECT_EQ(first_byte_at_or_above(bytes.data(), 300, 128), 250);
}

TEST(Data, AShardTokenOutsideTheVocabularyIsRefusedWhenTheShardOpens) {
  // The fault campaign's case: the bad token sits in a window the first
  // steps never read; it must fail at open, not at step 20.
  TempDir dir;
  std::vector<uint16_t> toks(200000, 5);
  toks[123457] = 300;
  toks[190000] = 400;
  const std::string path = (dir.path / "late.bin").string();
  write_token_shard(path, toks);
  const std::string e = config_error([&] { DataFiles("bin", {path}, {}, 0.0, 256); });
  EXPECT_TRUE(has(e, path) && has(e, "token 300 at position 123457") && has(e, "model.vocab_size = 256")) << e;
  EXPECT_NO_THROW(DataFiles("bin", {path}, {}, 0.0, 401));
  // A validation shard is checked as well.
  std::vector<uint16_t> ok(1000, 7);
  write_token_shard((dir.path / "train.bin").string(), ok);
  const std::string v = config_error([&] { DataFiles("bin", {(dir.path / "train.bin").string()}, {path}, 0.0, 256); });
  EXPECT_TRUE(has(v, "late.bin") && has(v, "position 123457")) << v;
}

TEST(Data, OnlyRegularFilesAreOpened) {
  TempDir dir;
  const std::string fifo = (dir.path / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_directory(dir.path / "adir");
  const std::string adir = (dir.path / "adir").string();
  fs::create_symlink(fifo, dir.path / "link_to_fifo");
  const std::string link = (dir.path / "link_to_fifo").string();
  Deadline deadline;
  for (const char* format : {"text", "bin"}) {
    const std::string what = std::string(format) == "text" ? "data file" : "data shard";
    for (const auto& [path, kind] : std::vector<std::pair<std::string, std::string>>{
             {fifo, "a FIFO (named pipe)"}, {link, "a FIFO (named pipe)"}, {adir, "a directory"},
             {"/dev/zero", "a character device"}}) {
      const std::string e = config_error([&] { DataFiles(format, {path}, {}, 0.1, 256); });
      EXPECT_TRUE(has(e, fmt::format("{} '{}' is {}, not a regular file", what, path, kind))) << e;
    }
  }
  // A glob matching a directory among files names the directory.
  dir.file("a.txt", std::string(100, 'x'));
  fs::create_directory(dir.path / "b.txt");
  EXPECT_TRUE(has(config_error([&] { DataFiles("text", {(dir.path / "*.txt").string()}, {}, 0.1, 256); }),
                  "b.txt' is a directory"));
  for (const auto& [path, kind] : std::vector<std::pair<std::string, std::string>>{
           {fifo, "a FIFO (named pipe)"}, {adir, "a directory"}, {"/dev/zero", "a character device"}}) {
    const std::string e = config_error([&] { load_config(path); });
    EXPECT_TRUE(has(e, fmt::format("config file '{}' is {}, not a regular file", path, kind))) << e;
  }
  EXPECT_TRUE(has(config_error([&] { load_config((dir.path / "nope.toml").string()); }), "No such file"));
  // Text files are mapped, and read back exactly.
  const std::string text = dir.file("t.txt", "hello, mapped world");
  MappedFile m(text, "data file");
  EXPECT_EQ(m.text(), "hello, mapped world");
  MappedFile empty(dir.file("e.txt", ""), "data file");
  EXPECT_EQ(empty.size(), 0u);
}

TEST(Config, RangesThatWouldGiveNaNAreRefused) {
  for (const char* key : {"train.eps", "model.norm_eps"}) {
    const std::string e = config_error([&] { parse_config(default_config_text(), "t", {fmt::format("{}=0", key)}); });
    EXPECT_TRUE(has(e, fmt::format("{} = 0 is out of range (0, 1]", key))) << e;
    EXPECT_NO_THROW(parse_config(default_config_text(), "t", {fmt::format("{}=1e-12", key)}));
    // Used as a float: 1e-300 would round to 0 (and a denormal flushes to 0).
    const std::string tiny = config_error([&] { parse_config(default_config_text(), "t", {fmt::format("{}=1e-300", key)}); });
    EXPECT_TRUE(has(tiny, "as a float it must be at least")) << tiny;
  }
}

TEST(Config, RunNameIsOnePathComponent) {
  for (const char* bad : {"../../x", "..", ".", "", "a/b", "/etc", "x/"}) {
    const std::string e = config_error([&] { parse_config(default_config_text(), "t", {fmt::format("run.name={}", bad)}); });
    EXPECT_TRUE(has(e, "is not a single path component")) << bad << ": " << e;
  }
  const std::string ctl = config_error([&] { parse_config("[run]\nname = \"a\\u0007b\"\n", "c.toml"); });
  EXPECT_TRUE(has(ctl, "c.toml:2") && has(ctl, "control character")) << ctl;
  for (const char* good : {"tiny", "x y", "run.2", "...", "-a"})
    EXPECT_EQ(parse_config(default_config_text(), "t", {fmt::format("run.name={}", good)}).run.name, good);
}

// Sets or unsets an environment variable for one scope.
struct EnvVar {
  std::string name;
  std::optional<std::string> old;
  EnvVar(std::string n, const char* value) : name(std::move(n)) {
    if (const char* v = std::getenv(name.c_str())) old = v;
    if (value)
      ::setenv(name.c_str(), value, 1);
    else
      ::unsetenv(name.c_str());
  }
  ~EnvVar() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

TEST(Threads, ZeroMeansOmpNumThreadsThenTheAffinityShare) {
  {
    EnvVar env("OMP_NUM_THREADS", "1");
    ThreadCount t = default_thread_count(Comm());
    EXPECT_EQ(t.threads, 1);
    EXPECT_EQ(t.source, "OMP_NUM_THREADS");
  }
  {
    EnvVar env("OMP_NUM_THREADS", "3,1");  // OpenMP's per-level list: the outermost counts
    EXPECT_EQ(default_thread_count(Comm()).threads, 3);
  }
  {
    EnvVar env("OMP_NUM_THREADS", nullptr);
    ThreadCount t = default_thread_count(Comm());
    EXPECT_GE(t.threads, 1);
    EXPECT_EQ(t.source, "affinity share");
  }
  for (const char* bad : {"0", "-2", "many", "2x"}) {
    EnvVar env("OMP_NUM_THREADS", bad);
    EXPECT_TRUE(has(config_error([] { default_thread_count(Comm()); }), "is not a positive integer")) << bad;
  }
}

RunConfig small_config(const TempDir& dir, std::vector<std::string> sets = {}) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += fmt::format("line {} of a small corpus.\n", i);
  std::vector<std::string> all = {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
                                  "model.seq_len=16", "model.dense_hidden=48", "moe.experts=4",
                                  "moe.expert_hidden=16", "train.global_batch=4", "train.val_every=0",
                                  "data.train=" + dir.file("corpus.txt", text)};
  all.insert(all.end(), sets.begin(), sets.end());
  return parse_config(default_config_text(), "test", all);
}

TEST(Threads, MoreThanTheMachineCanUseIsRefused) {
  TempDir dir;
  const std::string e = config_error([&] { Trainer(small_config(dir, {"train.threads=4096"}), Comm::world()); });
  EXPECT_TRUE(has(e, "train.threads = 4096 threads per rank is more than this machine can use")) << e;
  {
    EnvVar env("OMP_NUM_THREADS", "4096");
    const std::string o = config_error([&] { Trainer(small_config(dir), Comm::world()); });
    EXPECT_TRUE(has(o, "OMP_NUM_THREADS = 4096 threads per rank")) << o;
  }
  EnvVar env("OMP_NUM_THREADS", "1");
  Trainer t(small_config(dir), Comm::world());
  EXPECT_EQ(omp_get_max_threads(), 1);
  EXPECT_TRUE(has(t.describe(), "1 thread per rank (OMP_NUM_THREADS)")) << t.describe();
}

}  // namespace
}  // namespace sy

// Trainer needs MPI (a singleton world of one rank).
#include "mpi_environment.h"
