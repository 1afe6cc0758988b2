// Text and token-shard datasets (splits, windows, the vocabulary check) and
// the batcher's independence from the data-parallel layout.
#include <vector>

#include "core/check.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "testing.h"

namespace sy {
namespace {

using test::TempDir;

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

}  // namespace
}  // namespace sy
