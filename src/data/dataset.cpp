#include "data/dataset.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/check.h"
#include "core/rng.h"

namespace sy {

// ---------------------------------------------------------------- files

struct DataFiles::File {
  std::string path;
  std::vector<uint8_t> text;          // text files are read
  void* map = nullptr;                // shards are mapped
  size_t map_bytes = 0;
  const uint16_t* tokens = nullptr;
  int64_t count = 0;
  ~File() {
    if (map) munmap(map, map_bytes);
  }
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
    out.insert(out.end(), hits.begin(), hits.end());
  }
  return out;
}

namespace {

std::unique_ptr<DataFiles::File> read_text(const std::string& path) {
  auto f = std::make_unique<DataFiles::File>();
  f->path = path;
  std::ifstream in(path, std::ios::binary);
  SY_CONFIG_CHECK(in.good(), "data file '{}' cannot be read: {}", path, std::strerror(errno));
  f->text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  SY_CONFIG_CHECK(!in.bad(), "data file '{}': read error: {}", path, std::strerror(errno));
  SY_CONFIG_CHECK(!f->text.empty(), "data file '{}' is empty", path);
  f->count = static_cast<int64_t>(f->text.size());
  return f;
}

std::unique_ptr<DataFiles::File> map_shard(const std::string& path) {
  auto f = std::make_unique<DataFiles::File>();
  f->path = path;
  int fd = open(path.c_str(), O_RDONLY);
  SY_CONFIG_CHECK(fd >= 0, "data shard '{}' cannot be opened: {}", path, std::strerror(errno));
  struct stat sb{};
  fstat(fd, &sb);
  size_t bytes = static_cast<size_t>(sb.st_size);
  size_t header = kShardHeaderInts * sizeof(int32_t);
  if (bytes < header) {
    close(fd);
    SY_CONFIG_FAIL("data shard '{}' is {} bytes, shorter than its {}-byte header", path, bytes, header);
  }
  void* m = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  close(fd);
  SY_CONFIG_CHECK(m != MAP_FAILED, "data shard '{}' cannot be mapped: {}", path, std::strerror(err));
  f->map = m;
  f->map_bytes = bytes;
  const int32_t* h = static_cast<const int32_t*>(m);
  SY_CONFIG_CHECK(h[0] == kShardMagic, "data shard '{}': bad magic {} in header (expected {}: an llm.c .bin token shard)",
           path, h[0], kShardMagic);
  SY_CONFIG_CHECK(h[1] == kShardVersion, "data shard '{}': header version {} is not supported (expected {})", path,
           h[1], kShardVersion);
  int64_t n = h[2];
  size_t want = header + static_cast<size_t>(n) * sizeof(uint16_t);
  SY_CONFIG_CHECK(n > 0, "data shard '{}' holds no tokens (header token count {})", path, n);
  SY_CONFIG_CHECK(bytes == want, "data shard '{}': header says {} tokens ({} bytes) but the file has {} bytes (truncated?)",
           path, n, want, bytes);
  f->tokens = reinterpret_cast<const uint16_t*>(static_cast<const char*>(m) + header);
  f->count = n;
  return f;
}

Segment segment_of(const DataFiles::File& f, int64_t begin, int64_t end) {
  Segment s;
  s.file = f.path;
  s.begin = begin;
  s.count = end - begin;
  if (f.tokens)
    s.u16 = f.tokens + begin;
  else
    s.bytes = f.text.data() + begin;
  return s;
}

}  // namespace

DataFiles::DataFiles(const std::string& format, const std::vector<std::string>& train_patterns,
                     const std::vector<std::string>& val_patterns, double val_fraction) {
  SY_CONFIG_CHECK(format == "text" || format == "bin", "data.format '{}' is neither \"text\" nor \"bin\"", format);
  auto load = [&](const std::string& path) {
    files_.push_back(format == "text" ? read_text(path) : map_shard(path));
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
