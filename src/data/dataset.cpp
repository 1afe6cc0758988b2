#include "data/dataset.h"

#include <glob.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/check.h"
#include "core/rng.h"
#include "core/mapped_file.h"

namespace sy {

// ---------------------------------------------------------------- token scan

namespace {

// Index of the first value >= limit in v[0, n), or -1. Each block's max is
// a SIMD reduction (16 uint16 per AVX2 instruction), blocks run on all
// threads, and only the first block whose max is out of range is searched
// again for the position: one pass over memory for a clean file.
template <class T>
int64_t first_at_or_above(const T* v, int64_t n, int64_t limit) {
  if (n <= 0 || limit > static_cast<int64_t>(std::numeric_limits<T>::max())) return -1;
  const T lim = static_cast<T>(std::max<int64_t>(limit, 0));
  const int64_t blocks = (n + kTokenScanBlock - 1) / kTokenScanBlock;
  int64_t first = blocks;
#pragma omp parallel for schedule(static) reduction(min : first) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const T* p = v + b * kTokenScanBlock;
    const int64_t len = std::min(kTokenScanBlock, n - b * kTokenScanBlock);
    T m = 0;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < len; ++i) m = p[i] > m ? p[i] : m;
    if (m >= lim) first = std::min(first, b);
  }
  if (first == blocks) return -1;
  const int64_t end = std::min(n, (first + 1) * kTokenScanBlock);
  for (int64_t i = first * kTokenScanBlock; i < end; ++i)
    if (v[i] >= lim) return i;
  return -1;  // not reached: the block's max was >= lim
}

}  // namespace

TokenScan first_token_at_or_above(const uint16_t* tokens, int64_t n, int64_t vocab) {
  TokenScan r;
  r.position = first_at_or_above(tokens, n, vocab);
  if (r.position >= 0) r.token = tokens[r.position];
  return r;
}

int64_t first_byte_at_or_above(const uint8_t* bytes, int64_t n, int64_t limit) {
  return first_at_or_above(bytes, n, limit);
}

// ---------------------------------------------------------------- files

struct DataFiles::File {
  MappedFile map;                     // text bytes, or a shard (header, then tokens)
  const uint8_t* bytes = nullptr;     // text
  const uint16_t* tokens = nullptr;   // shard
  int64_t count = 0;
  const std::string& path() const { return map.path(); }
};

std::vector<std::string> expand_patterns(const std::vector<std::string>& patterns, const std::string& what) {
  std::vector<std::string> out;
  for (const std::string& p : patterns) {
    glob_t g{};
    int rc = glob(p.c_str(), GLOB_NOSORT | GLOB_ERR, nullptr, &g);
    std::vector<std::string> hits(g.gl_pathv, g.gl_pathv + g.gl_pathc);
    globfree(&g);
    SY_CONFIG_CHECK(rc == 0 && !hits.empty(), "{}: no file matches '{}'{}", what, p,
             rc == GLOB_ABORTED ? " (a directory could not be read)" : "");
    std::sort(hits.begin(), hits.end());
    for (const std::string& hit : hits)  // a wildcard's match is named with the key and pattern that chose it
      if (hit != p) check_regular_file(hit, fmt::format("{} (pattern '{}') file", what, p));
    out.insert(out.end(), hits.begin(), hits.end());
  }
  return out;
}

namespace {

std::unique_ptr<DataFiles::File> map_text(const std::string& path, int64_t vocab) {
  auto f = std::make_unique<DataFiles::File>();
  f->map = MappedFile(path, "data file");
  SY_CONFIG_CHECK(f->map.size() > 0, "data file '{}' is empty", path);
  f->bytes = f->map.data();
  f->count = static_cast<int64_t>(f->map.size());
  if (vocab < 256) {  // byte tokens: only a model with fewer than 256 ids can meet one outside
    const int64_t at = first_byte_at_or_above(f->bytes, f->count, vocab);
    SY_CONFIG_CHECK(at < 0, "data file '{}': token {} at position {} is outside the vocabulary (model.vocab_size = {})",
                    path, at < 0 ? 0 : f->bytes[at], at, vocab);
  }
  return f;
}

std::unique_ptr<DataFiles::File> map_shard(const std::string& path, int64_t vocab) {
  auto f = std::make_unique<DataFiles::File>();
  f->map = MappedFile(path, "data shard");
  const size_t bytes = f->map.size();
  const size_t header = kShardHeaderInts * sizeof(int32_t);
  SY_CONFIG_CHECK(bytes >= header, "data shard '{}' is {} bytes, shorter than its {}-byte header", path, bytes, header);
  int32_t h[3];
  std::memcpy(h, f->map.data(), sizeof(h));
  SY_CONFIG_CHECK(h[0] == kShardMagic, "data shard '{}': bad magic {} in header (expected {}: an llm.c .bin token shard)",
           path, h[0], kShardMagic);
  SY_CONFIG_CHECK(h[1] == kShardVersion, "data shard '{}': header version {} is not supported (expected {})", path,
           h[1], kShardVersion);
  const int64_t n = h[2];
  SY_CONFIG_CHECK(n > 0, "data shard '{}' holds no tokens (header token count {})", path, n);
  const size_t want = header + static_cast<size_t>(n) * sizeof(uint16_t);
  SY_CONFIG_CHECK(bytes == want, "data shard '{}': header says {} tokens ({} bytes) but the file has {} bytes (truncated?)",
           path, n, want, bytes);
  f->tokens = reinterpret_cast<const uint16_t*>(f->map.data() + header);
  f->count = n;
  // Every token once, now, rather than a bad one failing the step that
  // first reads its window.
  const TokenScan bad = first_token_at_or_above(f->tokens, n, vocab);
  SY_CONFIG_CHECK(bad.position < 0, "data file '{}': token {} at position {} is outside the vocabulary "
                  "(model.vocab_size = {}); every token of a shard must be below it", path, bad.token, bad.position,
                  vocab);
  return f;
}

Segment segment_of(const DataFiles::File& f, int64_t begin, int64_t end) {
  Segment s;
  s.file = f.path();
  s.begin = begin;
  s.count = end - begin;
  if (f.tokens)
    s.u16 = f.tokens + begin;
  else
    s.bytes = f.bytes + begin;
  return s;
}

}  // namespace

DataFiles::DataFiles(const std::string& format, const std::vector<std::string>& train_patterns,
                     const std::vector<std::string>& val_patterns, double val_fraction, int64_t vocab) {
  SY_CONFIG_CHECK(format == "text" || format == "bin", "data.format '{}' is neither \"text\" nor \"bin\"", format);
  SY_CHECK(vocab >= 1, "DataFiles: vocabulary size {} must be positive", vocab);
  auto load = [&](const std::string& path) {
    files_.push_back(format == "text" ? map_text(path, vocab) : map_shard(path, vocab));
    return files_.back().get();
  };
  for (const std::string& path : expand_patterns(train_patterns, "data.train")) {
    File* f = load(path);
    int64_t held = val_patterns.empty() ? static_cast<int64_t>(static_cast<double>(f->count) * val_fraction) : 0;
    train_.segments_.push_back(segment_of(*f, 0, f->count - held));
    if (held > 0) val_.segments_.push_back(segment_of(*f, f->count - held, f->count));
  }
  for (const std::string& path : expand_patterns(val_patterns, "data.val")) {
    File* f = load(path);
    val_.segments_.push_back(segment_of(*f, 0, f->count));
  }
}

DataFiles::~DataFiles() = default;

// ---------------------------------------------------------------- dataset

int64_t TokenDataset::tokens() const {
  int64_t n = 0;
  for (const Segment& s : segments_) n += s.count;
  return n;
}

int64_t TokenDataset::windows(int64_t len) const {
  int64_t n = 0;
  for (const Segment& s : segments_) n += std::max<int64_t>(0, s.count - len + 1);
  return n;
}

void TokenDataset::window(int64_t w, int64_t len, int32_t* out, int64_t vocab) const {
  for (const Segment& s : segments_) {
    int64_t here = std::max<int64_t>(0, s.count - len + 1);
    if (w >= here) {
      w -= here;
      continue;
    }
    for (int64_t i = 0; i < len; ++i) {
      int32_t t = s.u16 ? int32_t{s.u16[w + i]} : int32_t{s.bytes[w + i]};
      SY_CONFIG_CHECK(t < vocab, "data file '{}': token {} at position {} is outside the vocabulary "
               "(model.vocab_size = {})", s.file, t, s.begin + w + i, vocab);
      out[i] = t;
    }
    return;
  }
  SY_FAIL("window {} of length {} is past the end of the data ({} windows)", w, len, windows(len));
}

std::string TokenDataset::describe() const {
  std::vector<std::string> files;
  for (const Segment& s : segments_)
    if (files.empty() || files.back() != s.file) files.push_back(s.file);
  return fmt::format("{} tokens in {} file{}", tokens(), files.size(), files.size() == 1 ? "" : "s");
}

void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  SY_CHECK(out.good(), "cannot write '{}': {}", path, std::strerror(errno));
  out.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size() * 4));
  out.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
  SY_CHECK(out.good(), "write to '{}' failed: {}", path, std::strerror(errno));
}

int64_t train_window(uint64_t seed, int64_t step, int64_t sample, int64_t windows) {
  uint64_t r = u64_at(stream_key(seed, "data.train"), static_cast<uint64_t>(step), static_cast<uint64_t>(sample));
  return static_cast<int64_t>(r % static_cast<uint64_t>(windows));
}

int64_t val_window(int64_t i, int64_t count, int64_t windows) {
  // floor(i * windows / count) without overflowing i * windows
  return i * (windows / count) + i * (windows % count) / count;
}

}  // namespace sy
