#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/check.h"

namespace sy {

namespace {
constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace mark
}  // namespace

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::vector<std::string> bytes;  // per id: what it decodes to
  int32_t newline = -1;            // the byte token of '\n'
  int64_t byte_pieces = 0;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::error_code ec;
  SY_CONFIG_CHECK(std::filesystem::is_regular_file(path, ec), "tokenizer '{}': no such file", path);
  std::ifstream in(path, std::ios::binary);
  SY_CONFIG_CHECK(in.good(), "tokenizer '{}': cannot open it: {}", path, std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  SY_CONFIG_CHECK(!in.bad(), "tokenizer '{}': cannot read it: {}", path, std::strerror(errno));
  return from_bytes(s.str(), "tokenizer '" + path + "'");
}

Tokenizer Tokenizer::from_bytes(const std::string& model, const std::string& what) {
  Tokenizer t;
  SY_CONFIG_CHECK(!model.empty(), "{}: empty, not a SentencePiece model", what);
  const auto st = t.impl_->sp.LoadFromSerializedProto(model);
  SY_CONFIG_CHECK(st.ok(), "{}: not a SentencePiece model ({})", what, st.ToString());
  t.bytes_ = model;
  Impl& m = *t.impl_;
  const int n = m.sp.GetPieceSize();
  SY_CONFIG_CHECK(n > 0, "{}: a SentencePiece model without pieces", what);
  m.bytes.resize(static_cast<size_t>(n));
  for (int id = 0; id < n; ++id) {
    const std::string& piece = m.sp.IdToPiece(id);
    std::string& out = m.bytes[static_cast<size_t>(id)];
    if (m.sp.IsByte(id)) {
      // "<0xAB>"
      SY_CONFIG_CHECK(piece.size() == 6 && piece.starts_with("<0x") && piece.back() == '>', "{}: byte piece {} is "
                      "'{}', not <0xNN>", what, id, piece);
      const unsigned v = static_cast<unsigned>(std::stoul(piece.substr(3, 2), nullptr, 16));
      out.assign(1, static_cast<char>(v));
      if (v == '\n') m.newline = id;
      ++m.byte_pieces;
    } else if (m.sp.IsControl(id) || m.sp.IsUnknown(id) || m.sp.IsUnused(id)) {
      out.clear();
    } else {
      for (size_t i = 0; i < piece.size();) {
        if (std::string_view(piece).substr(i, kSpace.size()) == kSpace) {
          out += ' ';
          i += kSpace.size();
        } else {
          out += piece[i++];
        }
      }
    }
  }
  return t;
}

int64_t Tokenizer::pieces() const { return static_cast<int64_t>(impl_->bytes.size()); }
int64_t Tokenizer::byte_pieces() const { return impl_->byte_pieces; }

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<int> ids;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    if (!line.empty()) {
      const auto st = impl_->sp.Encode(line, &ids);
      SY_CHECK(st.ok(), "SentencePiece failed to encode a line of {} bytes: {}", line.size(), st.ToString());
      out.insert(out.end(), ids.begin(), ids.end());
    }
    if (nl == std::string_view::npos) break;
    SY_CONFIG_CHECK(impl_->newline >= 0, "the tokenizer has no byte token for '\\n' (a model trained without "
                    "byte_fallback); Switchyard's models (moe-data train-tokenizer) have one");
    out.push_back(impl_->newline);
    text.remove_prefix(nl + 1);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  encode(text, out);
  return out;
}

const std::string& Tokenizer::bytes_of(int32_t id) const {
  SY_CONFIG_CHECK(id >= 0 && id < pieces(), "token {} is outside the tokenizer's {} pieces", id, pieces());
  return impl_->bytes[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += bytes_of(id);
  return s;
}

namespace {

// The training sentences: the files' lines, streamed (the trainer keeps its
// own copy of what it samples).
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  LineIterator(const std::vector<std::string>& files, const std::function<void(int64_t, int64_t)>& progress)
      : files_(files), progress_(progress) {
    for (const std::string& f : files) total_ += static_cast<int64_t>(std::filesystem::file_size(f));
    advance();
  }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  void advance() {
    while (!done_) {
      if (in_.is_open() && std::getline(in_, line_)) {
        read_ += static_cast<int64_t>(line_.size()) + 1;
        if (progress_ && read_ - reported_ >= (int64_t{1} << 20)) {
          reported_ = read_;
          progress_(std::min(read_, total_), total_);
        }
        if (!line_.empty()) return;
        continue;
      }
      if (in_.is_open()) {
        if (in_.bad())
          status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal,
                                                "cannot read '" + files_[next_ - 1] + "': " + std::strerror(errno));
        in_.close();
      }
      if (!status_.ok() || next_ == files_.size()) {
        done_ = true;
        if (progress_) progress_(total_, total_);
        return;
      }
      in_.open(files_[next_++], std::ios::binary);
      if (!in_.is_open()) {
        status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                              "cannot open '" + files_[next_ - 1] + "': " + std::strerror(errno));
        done_ = true;
      }
    }
  }
  const std::vector<std::string>& files_;
  const std::function<void(int64_t, int64_t)>& progress_;
  std::ifstream in_;
  std::string line_;
  size_t next_ = 0;
  int64_t total_ = 0, read_ = 0, reported_ = 0;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

}  // namespace

std::string train_tokenizer(const std::vector<std::string>& files, const TokenizerTrainOptions& opt,
                            const std::function<void(int64_t, int64_t)>& progress) {
  SY_CONFIG_CHECK(opt.model_type == "bpe" || opt.model_type == "unigram", "--model-type must be bpe or unigram, "
                  "got '{}'", opt.model_type);
  SY_CONFIG_CHECK(!files.empty(), "--input: no text files given");
  for (const std::string& f : files) {
    std::error_code ec;
    SY_CONFIG_CHECK(std::filesystem::is_regular_file(f, ec), "--input: '{}' is not a readable file ({})", f,
                    std::filesystem::exists(f, ec) ? "not a regular file" : "no such file");
    std::ifstream probe(f, std::ios::binary);
    SY_CONFIG_CHECK(probe.is_open(), "--input: cannot open '{}': {}", f, std::strerror(errno));
  }
  int64_t total = 0;
  for (const std::string& f : files) total += static_cast<int64_t>(std::filesystem::file_size(f));
  SY_CONFIG_CHECK(total > 0, "--input: the {} file(s) are empty: no text to train on", files.size());
  // byte fallback (256 byte tokens) and <unk> come out of the vocabulary.
  SY_CONFIG_CHECK(opt.vocab >= 257 + 1 && opt.vocab <= 65535, "--vocab {} is out of range: a model with byte fallback "
                  "needs more than 257 pieces (256 byte tokens and <unk>), and token ids must fit the uint16 shards "
                  "(at most 65535)", opt.vocab);
  SY_CONFIG_CHECK(opt.threads >= 1, "--threads must be >= 1");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab)},
      {"byte_fallback", "true"},
      {"character_coverage", "0.9995"},  // rarer characters stay byte tokens
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "false"},
      {"unk_id", "0"},
      {"bos_id", "-1"},
      {"eos_id", "-1"},
      {"pad_id", "-1"},
      {"num_threads", std::to_string(opt.threads)},
      {"shuffle_input_sentence", "false"},  // every sentence is used (input_sentence_size 0): nothing to sample
      {"minloglevel", opt.verbose ? "0" : "2"},
  };
  sentencepiece::SetRandomGeneratorSeed(opt.seed);
  LineIterator lines(files, progress);
  std::string model;
  const auto st = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  SY_CONFIG_CHECK(st.ok(), "SentencePiece could not train a {} model of {} pieces on {} file(s): {} (--vocab counts "
                  "<unk>, the 256 byte tokens and every character of the text besides the rarest 0.05%)",
                  opt.model_type, opt.vocab, files.size(), st.ToString());
  return model;
}

}  // namespace sy
