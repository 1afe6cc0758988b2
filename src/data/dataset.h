// Token data: byte-level text files, or llm.c uint16 token shards
// (header: 256 int32, magic 20240520, version 1, token count; then uint16
// tokens), memory-mapped. A dataset is a list of segments (one per file, or
// the held-out tail of one); a window of `len` tokens never crosses a segment.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sy {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int64_t kShardHeaderInts = 256;

struct Segment {
  std::string file;
  const uint8_t* bytes = nullptr;    // text
  const uint16_t* u16 = nullptr;     // shard tokens
  int64_t begin = 0, count = 0;      // token range within the file
};

class TokenDataset {
 public:
  TokenDataset() = default;
  int64_t tokens() const;
  // Number of window starts for windows of `len` tokens.
  int64_t windows(int64_t len) const;
  // Writes window w (0 <= w < windows(len)) as int32 ids; checks every id
  // is < vocab and names the file and offset otherwise.
  void window(int64_t w, int64_t len, int32_t* out, int64_t vocab) const;
  const std::vector<Segment>& segments() const { return segments_; }
  std::string describe() const;

 private:
  friend class DataFiles;
  std::vector<Segment> segments_;
};

// Owns the memory maps behind the datasets.
class DataFiles {
 public:
  // format "text" or "bin"; patterns are paths or globs. val_patterns empty:
  // the last val_fraction of every train file is the validation set. Only
  // regular files are accepted (see mapped_file.h); each is memory-mapped,
  // and every token of a shard is checked against `vocab` once, here
  // (ConfigError naming the file, the first bad position and token).
  DataFiles(const std::string& format, const std::vector<std::string>& train_patterns,
            const std::vector<std::string>& val_patterns, double val_fraction, int64_t vocab);
  ~DataFiles();
  DataFiles(const DataFiles&) = delete;
  DataFiles& operator=(const DataFiles&) = delete;

  const TokenDataset& train() const { return train_; }
  const TokenDataset& val() const { return val_; }

  struct File;  // one file's contents (defined in dataset.cpp)

 private:
  std::vector<std::unique_ptr<File>> files_;
  TokenDataset train_, val_;
};

// The first token >= vocab in tokens[0, n) (position -1 if none): a
// vectorised max over blocks of kTokenScanBlock tokens on all OpenMP
// threads, memory-bound; only a block holding a bad token is searched again.
inline constexpr int64_t kTokenScanBlock = int64_t{1} << 16;
struct TokenScan {
  int64_t position = -1;
  int64_t token = 0;
};
TokenScan first_token_at_or_above(const uint16_t* tokens, int64_t n, int64_t vocab);
// The same for byte tokens (text files); -1 if none.
int64_t first_byte_at_or_above(const uint8_t* bytes, int64_t n, int64_t limit);

// Expands glob patterns; every pattern must match at least one file.
std::vector<std::string> expand_patterns(const std::vector<std::string>& patterns, const std::string& what);

// Writes tokens as an llm.c shard (used by tests and data tools).
void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens);

// Which windows a step trains on: a pure function of (seed, step, global
// sample index), so every data-parallel layout sees the same global batch.
int64_t train_window(uint64_t seed, int64_t step, int64_t sample, int64_t windows);
// Validation windows: `count` fixed windows spread evenly over the set.
int64_t val_window(int64_t i, int64_t count, int64_t windows);

}  // namespace sy
