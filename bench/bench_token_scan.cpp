// sy-bench-scan: how fast a token shard is checked against the vocabulary
// when it is opened, against baselines on the same file in the same run:
// read() into a buffer (what `cat file > /dev/null` does) and memcpy out of
// a fresh memory map (the same page faults as the scan, plus a write).
//   sy-bench-scan [--gib 1] [--dir /tmp] [--reps 3]
// Never pass/fail. The file stays in the page cache (it was just written),
// so these are memory and page-fault rates, not disk rates.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fcntl.h>
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/rng.h"
#include "core/timer.h"
#include "data/dataset.h"
#include "core/mapped_file.h"

namespace {

template <class F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = sy::now_seconds();
    f();
    best = std::min(best, sy::now_seconds() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"token shard scan speed against read() and memcpy baselines"};
  double gib = 1.0;
  std::string dir = std::filesystem::temp_directory_path().string();
  int reps = 3;
  app.add_option("--gib", gib, "shard size in GiB (at most 3.9: the header counts tokens in an int32)");
  app.add_option("--dir", dir, "where the synthetic shard is written (and removed)");
  app.add_option("--reps", reps, "repetitions; the best is reported");
  CLI11_PARSE(app, argc, argv);

  const int64_t vocab = 50257;  // GPT-2's
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(gib * (1 << 30) / 2), INT32_MAX);
  const std::string path = (std::filesystem::path(dir) / fmt::format("sy_scan_{}.bin", ::getpid())).string();
  {
    std::vector<uint16_t> toks(static_cast<size_t>(n));
    const uint64_t key = sy::stream_key(1, "scan");
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) toks[static_cast<size_t>(i)] = static_cast<uint16_t>(sy::u64_at(key, static_cast<uint64_t>(i), 0) % vocab);
    sy::write_token_shard(path, toks);
  }
  const double bytes = static_cast<double>(n) * 2 + 1024;
  std::vector<char> sink(bytes > 0 ? static_cast<size_t>(bytes) : 1);
  std::memset(sink.data(), 1, sink.size());  // touched: memcpy pays for its source only
  std::vector<char> chunk(size_t{1} << 20);

  struct Row {
    std::string name;
    double seconds;
  };
  std::vector<Row> rows;
  // read(): the page cache copied into a 1 MiB buffer, as `cat > /dev/null`.
  rows.push_back({"read() 1 MiB chunks (cat > /dev/null)", best_seconds(reps, [&] {
                    int fd = ::open(path.c_str(), O_RDONLY);
                    while (::read(fd, chunk.data(), chunk.size()) > 0) {
                    }
                    ::close(fd);
                  })});
  rows.push_back({"memcpy from a fresh mmap", best_seconds(reps, [&] {
                    sy::MappedFile f(path, "shard");
                    std::memcpy(sink.data(), f.data(), f.size());
                  })});
  int64_t found = 0;
  const int threads = omp_get_max_threads();
  std::vector<int> counts{1};
  if (threads > 1) counts.push_back(threads);
  for (int t : counts) {
    omp_set_num_threads(t);
    rows.push_back({fmt::format("scan, fresh mmap, {} thread{}", t, t == 1 ? "" : "s"), best_seconds(reps, [&] {
                      sy::MappedFile f(path, "shard");
                      found += sy::first_token_at_or_above(reinterpret_cast<const uint16_t*>(f.data() + 1024), n,
                                                           vocab).position;
                    })});
    sy::MappedFile warm(path, "shard");
    std::memcpy(sink.data(), warm.data(), warm.size());  // fault every page in first
    rows.push_back({fmt::format("scan, mapped pages, {} thread{}", t, t == 1 ? "" : "s"), best_seconds(reps, [&] {
                      found += sy::first_token_at_or_above(reinterpret_cast<const uint16_t*>(warm.data() + 1024), n,
                                                           vocab).position;
                    })});
    rows.push_back({fmt::format("DataFiles open (stat, map, header, scan), {} thread{}", t, t == 1 ? "" : "s"),
                    best_seconds(reps, [&] { sy::DataFiles d("bin", {path}, {}, 0.0, vocab); })});
  }
  omp_set_num_threads(threads);
  std::filesystem::remove(path);

  const double base = rows[1].seconds;
  fmt::print("# sy-bench-scan: {:.2f} GiB shard ({} tokens, vocab {}), page cache warm, best of {}; "
             "clean scan found {} (expect -{})\n",
             bytes / (1 << 30), n, vocab, reps, found, 2 * reps * static_cast<int>(counts.size()));
  fmt::print("{:<52} {:>9} {:>9} {:>14}\n", "what", "ms", "GB/s", "vs memcpy");
  for (const Row& r : rows)
    fmt::print("{:<52} {:9.1f} {:9.2f} {:13.2f}x\n", r.name, r.seconds * 1e3, bytes / r.seconds / 1e9,
               base / r.seconds);
  return 0;
}
