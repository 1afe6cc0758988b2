// moe-data: text in, tokens out. SentencePiece tokenizers and llm.c shards.
//   moe-data train-tokenizer --input FILES... --model-type bpe|unigram --vocab N --out PREFIX
//       trains PREFIX.model (byte fallback, no normalization: text round-trips exactly; deterministic)
//   moe-data encode --tokenizer PREFIX.model --input FILES... --out DIR [--val-fraction F] [--shard-tokens N]
//       writes DIR/train_000000.bin ... and DIR/val_000000.bin ... (llm.c uint16 shards): the last F of
//       each file's bytes (from a line start) is validation
//   moe-data prepare --input FILES... --model-type T --vocab N --out DIR [...]
//       both: DIR/tokenizer.model, then its shards in DIR
//   moe-data decode --tokenizer PREFIX.model --input SHARDS...   the shards' text on stdout
// --input takes files or glob patterns. Progress goes to stderr, the summary to stdout (--json: one object).
// Exit codes: 0 success; 1 a failure; 2 bad input (flags, files, an existing output).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "apps/cli.h"
#include "core/check.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
constexpr int64_t kMaxVocab = 65535;  // ids are stored as uint16
constexpr double kMiB = 1024.0 * 1024.0;

std::vector<std::string> inputs(const std::vector<std::string>& patterns) {
  SY_CONFIG_CHECK(!patterns.empty(), "--input: give at least one text file");
  std::vector<std::string> files = sy::expand_patterns(patterns, "--input");
  for (const std::string& f : files) {
    std::error_code ec;
    SY_CONFIG_CHECK(fs::is_regular_file(f, ec), "--input: '{}' is not a regular file", f);
  }
  return files;
}

// Files written by this command, removed if it fails before the end (and
// the output directory, if it made it and it is empty again).
struct Created {
  std::vector<std::string> paths;
  std::string dir;
  bool keep = false;
  ~Created() {
    if (keep) return;
    std::error_code ec;
    for (const std::string& p : paths) fs::remove(p, ec);
    if (!dir.empty() && fs::is_empty(dir, ec)) fs::remove(dir, ec);
  }
};

// An output directory: created if missing; ConfigError if it cannot be, or is not writable.
void make_out_dir(const std::string& dir, Created& created) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    if (created.dir.empty()) created.dir = dir;
    fs::create_directories(dir, ec);
    SY_CONFIG_CHECK(!ec, "--out: cannot create directory '{}': {}", dir, ec.message());
  }
  SY_CONFIG_CHECK(fs::is_directory(dir, ec), "--out: '{}' is not a directory", dir);
  const fs::path probe = fs::path(dir) / ".moe-data-write-test";
  std::FILE* f = std::fopen(probe.c_str(), "wbx");
  SY_CONFIG_CHECK(f != nullptr || errno == EEXIST, "--out: cannot write into '{}': {}", dir, std::strerror(errno));
  if (f) {
    std::fclose(f);
    fs::remove(probe, ec);
  }
}

// Shards already in `dir`: refused, never overwritten.
void refuse_existing_shards(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if ((name.starts_with("train_") || name.starts_with("val_")) && name.ends_with(".bin")) found.push_back(name);
  }
  std::sort(found.begin(), found.end());
  SY_CONFIG_CHECK(found.empty(), "--out: '{}' already holds shard '{}'{}; moe-data never overwrites shards: "
                  "give an empty or new directory", dir, (fs::path(dir) / found[0]).string(),
                  found.size() > 1 ? fmt::format(" (and {} more)", found.size() - 1) : "");
}

// Writes a file that must not exist yet (exclusive create).
void write_new_file(const std::string& path, const std::string& bytes, const char* what) {
  std::FILE* f = std::fopen(path.c_str(), "wbx");
  SY_CONFIG_CHECK(f != nullptr, "{}: cannot create '{}': {}{}", what, path, std::strerror(errno),
                  errno == EEXIST ? " (moe-data never overwrites a file)" : "");
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::error_code ec;
    fs::remove(path, ec);
    SY_FAIL("writing '{}' failed: {}", path, std::strerror(errno));
  }
}

std::string train(const std::vector<std::string>& files, const sy::TokenizerTrainOptions& opt,
                  const std::string& model_path, Created& created, bool quiet) {
  SY_CONFIG_CHECK(opt.vocab <= kMaxVocab, "--vocab {} is more than {}: token ids are stored as uint16 in the "
                  "shards", opt.vocab, kMaxVocab);
  std::error_code ec;
  SY_CONFIG_CHECK(!fs::exists(model_path, ec), "--out: '{}' already exists; moe-data never overwrites a tokenizer",
                  model_path);
  if (const fs::path parent = fs::path(model_path).parent_path(); !parent.empty()) make_out_dir(parent.string(), created);
  const auto t0 = Clock::now();
  auto t_last = t0;
  auto progress = [&](int64_t done, int64_t total) {
    if (quiet || (since(t_last) < 1.0 && done < total)) return;
    t_last = Clock::now();
    std::cerr << fmt::format("moe-data: reading {:.1f} / {:.1f} MiB ({:.0f}%), {:.1f} MiB/s\n", done / kMiB,
                             total / kMiB, total > 0 ? 100.0 * done / total : 100.0, done / kMiB / std::max(since(t0), 1e-9));
  };
  if (!quiet)
    std::cerr << fmt::format("moe-data: training a {} tokenizer of {} pieces on {} file(s) ({} thread(s), seed {})\n",
                             opt.model_type, opt.vocab, files.size(), opt.threads, opt.seed);
  const std::string model = sy::train_tokenizer(files, opt, progress);
  const sy::Tokenizer tok = sy::Tokenizer::from_bytes(model, "the trained model");
  write_new_file(model_path, model, "--out");
  created.paths.push_back(model_path);
  if (!quiet)
    std::cerr << fmt::format("moe-data: trained in {:.1f} s: {} pieces ({} byte tokens), {} ({} bytes)\n", since(t0),
                             tok.pieces(), tok.byte_pieces(), model_path, model.size());
  return model_path;
}

struct EncodeOptions {
  double val_fraction = 0.01;
  int64_t shard_tokens = 100'000'000;
  bool quiet = false;
};

// One split's shards: tokens gathered up to shard_tokens, then written.
struct ShardWriter {
  std::string dir, split;
  int64_t shard_tokens;
  Created& created;
  std::vector<uint16_t> buf;
  std::vector<std::string> files;
  std::vector<int64_t> counts;
  int64_t tokens = 0;

  void add(const std::vector<int32_t>& ids) {
    for (int32_t id : ids) {
      buf.push_back(static_cast<uint16_t>(id));
      if (static_cast<int64_t>(buf.size()) == shard_tokens) flush();
    }
    tokens += static_cast<int64_t>(ids.size());
  }
  void flush() {
    if (buf.empty()) return;
    const std::string path = (fs::path(dir) / fmt::format("{}_{:06d}.bin", split, files.size())).string();
    std::string bytes(static_cast<size_t>(sy::kShardHeaderInts * 4 + static_cast<int64_t>(buf.size()) * 2), '\0');
    int32_t header[3] = {sy::kShardMagic, sy::kShardVersion, static_cast<int32_t>(buf.size())};
    std::memcpy(bytes.data(), header, sizeof(header));
    std::memcpy(bytes.data() + sy::kShardHeaderInts * 4, buf.data(), buf.size() * 2);
    write_new_file(path, bytes, "--out");
    created.paths.push_back(path);
    files.push_back(path);
    counts.push_back(static_cast<int64_t>(buf.size()));
    buf.clear();
  }
};

nlohmann::ordered_json encode(const std::string& tokenizer_path, const std::vector<std::string>& files,
                              const std::string& dir, const EncodeOptions& opt, Created& created) {
  const sy::Tokenizer tok = sy::Tokenizer::load(tokenizer_path);
  SY_CONFIG_CHECK(tok.pieces() <= kMaxVocab, "--tokenizer '{}' has {} pieces, more than {}: token ids are stored as "
                  "uint16 in the shards", tokenizer_path, tok.pieces(), kMaxVocab);
  SY_CONFIG_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "--val-fraction must be in [0, 1), got {}",
                  opt.val_fraction);
  refuse_existing_shards(dir);
  make_out_dir(dir, created);
  int64_t total = 0;
  for (const std::string& f : files) total += static_cast<int64_t>(fs::file_size(f));
  ShardWriter train{dir, "train", opt.shard_tokens, created, {}, {}, {}, 0};
  ShardWriter val{dir, "val", opt.shard_tokens, created, {}, {}, {}, 0};
  const auto t0 = Clock::now();
  auto t_last = t0;
  int64_t done = 0;
  auto report = [&](bool last) {
    if (opt.quiet || (!last && since(t_last) < 1.0)) return;
    t_last = Clock::now();
    std::cerr << fmt::format("moe-data: encoded {:.1f} / {:.1f} MiB ({:.0f}%), {:.2f} MiB/s, {} tokens\n", done / kMiB,
                             total / kMiB, total > 0 ? 100.0 * done / total : 100.0,
                             done / kMiB / std::max(since(t0), 1e-9), train.tokens + val.tokens);
  };
  constexpr size_t kChunk = size_t{8} << 20;  // bytes read at a time, cut after a newline
  std::vector<int32_t> ids;
  for (const std::string& path : files) {
    std::ifstream in(path, std::ios::binary);
    SY_CONFIG_CHECK(in.is_open(), "--input: cannot open '{}': {}", path, std::strerror(errno));
    std::string text;
    {
      std::ostringstream s;
      s << in.rdbuf();
      SY_CONFIG_CHECK(!in.bad(), "--input: cannot read '{}': {}", path, std::strerror(errno));
      text = s.str();
    }
    // The validation tail starts at the first line start at or after (1 - F) of the file.
    size_t cut = text.size();
    if (opt.val_fraction > 0) {
      cut = static_cast<size_t>(static_cast<double>(text.size()) * (1.0 - opt.val_fraction));
      while (cut > 0 && cut < text.size() && text[cut - 1] != '\n') ++cut;
    }
    for (size_t b = 0; b < text.size();) {
      const size_t limit = b < cut ? cut : text.size();
      size_t e = std::min(limit, b + kChunk);
      if (e < limit) {
        const size_t nl = text.rfind('\n', e - 1);
        if (nl != std::string::npos && nl >= b) e = nl + 1;  // else one line longer than a chunk: cut inside it
      }
      ids.clear();
      tok.encode(std::string_view(text).substr(b, e - b), ids);
      (b < cut ? train : val).add(ids);
      done += static_cast<int64_t>(e - b);
      b = e;
      report(false);
    }
  }
  train.flush();
  val.flush();
  report(true);
  const double secs = since(t0);
  const int64_t tokens = train.tokens + val.tokens;
  SY_CONFIG_CHECK(tokens > 0, "--input: the files hold no text ({} bytes)", total);
  nlohmann::ordered_json j = {{"tokenizer", tokenizer_path},
                              {"pieces", tok.pieces()},
                              {"files", files.size()},
                              {"bytes", total},
                              {"tokens", tokens},
                              {"tokens_per_byte", static_cast<double>(tokens) / static_cast<double>(total)},
                              {"train_tokens", train.tokens},
                              {"val_tokens", val.tokens},
                              {"train_shards", train.files},
                              {"train_shard_tokens", train.counts},
                              {"val_shards", val.files},
                              {"val_shard_tokens", val.counts},
                              {"seconds", secs}};
  return j;
}

void print_summary(const nlohmann::ordered_json& j, bool as_json) {
  if (as_json) {
    std::cout << j.dump() << "\n";
    return;
  }
  std::cout << fmt::format(
      "tokenizer    {} ({} pieces)\ninput        {} file(s), {} bytes\ntokens       {} ({:.4f} tokens per byte, "
      "{:.2f} bytes per token)\ntrain        {} tokens in {} shard(s)\nval          {} tokens in {} shard(s)\n"
      "time         {:.1f} s ({:.2f} MiB/s)\n",
      j["tokenizer"].get<std::string>(), j["pieces"].get<int64_t>(), j["files"].get<int64_t>(),
      j["bytes"].get<int64_t>(), j["tokens"].get<int64_t>(), j["tokens_per_byte"].get<double>(),
      1.0 / j["tokens_per_byte"].get<double>(), j["train_tokens"].get<int64_t>(), j["train_shards"].size(),
      j["val_tokens"].get<int64_t>(), j["val_shards"].size(), j["seconds"].get<double>(),
      j["bytes"].get<double>() / kMiB / std::max(j["seconds"].get<double>(), 1e-9));
  for (const char* k : {"train_shards", "val_shards"})
    for (const auto& f : j[k]) std::cout << "  " << f.get<std::string>() << "\n";
}

int decode(const std::string& tokenizer_path, const std::vector<std::string>& files) {
  const sy::Tokenizer tok = sy::Tokenizer::load(tokenizer_path);
  for (const std::string& path : files) {
    std::ifstream in(path, std::ios::binary);
    SY_CONFIG_CHECK(in.is_open(), "--input: cannot open '{}': {}", path, std::strerror(errno));
    std::vector<int32_t> header(static_cast<size_t>(sy::kShardHeaderInts));
    in.read(reinterpret_cast<char*>(header.data()), static_cast<std::streamsize>(header.size() * 4));
    SY_CONFIG_CHECK(in.good() && header[0] == sy::kShardMagic && header[1] == sy::kShardVersion && header[2] >= 0,
                    "--input: '{}' is not an llm.c token shard (magic {}, version {})", path, sy::kShardMagic,
                    sy::kShardVersion);
    std::vector<uint16_t> t(static_cast<size_t>(header[2]));
    in.read(reinterpret_cast<char*>(t.data()), static_cast<std::streamsize>(t.size() * 2));
    SY_CONFIG_CHECK(in.gcount() == static_cast<std::streamsize>(t.size() * 2), "--input: '{}' is truncated: its "
                    "header says {} tokens", path, header[2]);
    std::string out;
    for (size_t i = 0; i < t.size(); ++i) {
      SY_CONFIG_CHECK(t[i] < tok.pieces(), "--input: '{}' holds token {} at position {}, outside the tokenizer's {} "
                      "pieces", path, t[i], i, tok.pieces());
      out += tok.bytes_of(t[i]);
    }
    std::cout << out;
  }
  std::cout.flush();
  SY_CHECK(std::cout.good(), "writing to stdout failed");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Switchyard: train SentencePiece tokenizers and write llm.c token shards"};
  sy::cli::setup(app, "moe-data");
  app.require_subcommand(1);
  std::vector<std::string> input;
  std::string out, tokenizer;
  sy::TokenizerTrainOptions topt;
  EncodeOptions eopt;
  bool as_json = false;
  auto add_train = [&](CLI::App* c) {
    c->add_option("--model-type", topt.model_type, "bpe or unigram")->check(CLI::IsMember({"bpe", "unigram"}));
    c->add_option("--vocab", topt.vocab, "pieces in the vocabulary (256 byte tokens and <unk> included; at most 65535)")
        ->required();
    c->add_option("--threads", topt.threads, "trainer threads (1: the same model on every machine)")
        ->check(CLI::Range(int64_t{1}, int64_t{1024}));
    c->add_option("--seed", topt.seed, "SentencePiece's random seed");
    c->add_flag("--verbose", topt.verbose, "SentencePiece's own log on stderr");
  };
  auto add_encode = [&](CLI::App* c) {
    c->add_option("--val-fraction", eopt.val_fraction, "share of each file's bytes (its tail, from a line start) "
                  "written to the val shards")->check(sy::cli::finite_range(0.0, 0.9));
    c->add_option("--shard-tokens", eopt.shard_tokens, "tokens per shard file")
        ->check(CLI::Range(int64_t{1}, int64_t{INT32_MAX}));
    c->add_flag("--json", as_json, "print the summary as one JSON object");
  };
  auto* tt = app.add_subcommand("train-tokenizer", "train a SentencePiece model: PREFIX.model");
  tt->add_option("--input", input, "text files or glob patterns")->required();
  tt->add_option("--out", out, "output prefix: writes PREFIX.model")->required();
  add_train(tt);
  auto* enc = app.add_subcommand("encode", "text files -> DIR/train_NNNNNN.bin, DIR/val_NNNNNN.bin");
  enc->add_option("--tokenizer", tokenizer, "a SentencePiece .model")->required();
  enc->add_option("--input", input, "text files or glob patterns")->required();
  enc->add_option("--out", out, "output directory (created if missing; existing shards are refused)")->required();
  add_encode(enc);
  auto* prep = app.add_subcommand("prepare", "train-tokenizer then encode: DIR/tokenizer.model and its shards");
  prep->add_option("--input", input, "text files or glob patterns")->required();
  prep->add_option("--out", out, "output directory")->required();
  add_train(prep);
  add_encode(prep);
  auto* dec = app.add_subcommand("decode", "the text of llm.c shards, on stdout");
  dec->add_option("--tokenizer", tokenizer, "a SentencePiece .model")->required();
  dec->add_option("--input", input, "shard files or glob patterns")->required();
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;
  return sy::cli::guarded("moe-data", [&]() -> int {
    const std::vector<std::string> files = inputs(input);
    Created created;
    if (*tt) {
      train(files, topt, out + ".model", created, false);
    } else if (*enc) {
      eopt.quiet = as_json;
      print_summary(encode(tokenizer, files, out, eopt, created), as_json);
    } else if (*prep) {
      eopt.quiet = as_json;
      SY_CONFIG_CHECK(topt.vocab <= kMaxVocab, "--vocab {} is more than {}: token ids are stored as uint16 in the "
                      "shards", topt.vocab, kMaxVocab);
      refuse_existing_shards(out);
      make_out_dir(out, created);
      const std::string model = train(files, topt, (fs::path(out) / "tokenizer.model").string(), created, as_json);
      print_summary(encode(model, files, out, eopt, created), as_json);
    } else {
      return decode(tokenizer, files);
    }
    created.keep = true;
    return 0;
  });
}
