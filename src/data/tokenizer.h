// Subword tokenizers: SentencePiece (BPE or unigram) models, trained and
// used through the library's own API (Debian's libsentencepiece).
//
// Switchyard trains them so that text round-trips exactly: no normalization
// (identity rule), no dummy prefix, whitespace kept as it is (a space
// becomes U+2581 inside pieces), byte fallback so any byte sequence encodes
// (a byte outside the pieces is one of 256 byte tokens <0x00>..<0xFF>), and
// no BOS/EOS pieces. Decoding is byte-exact and concatenative: each id maps
// to its bytes on its own (byte tokens to their byte, U+2581 to a space), so
// decode(a + b) == decode(a) + decode(b) and a stream can be printed token
// by token. The one text that does not survive is U+2581 itself in the
// input (it decodes to a space), as with every SentencePiece model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sy {

class Tokenizer {
 public:
  // From a .model file or its bytes (`what` names them in messages);
  // ConfigError if they are not a SentencePiece model.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_bytes(const std::string& model, const std::string& what);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  int64_t pieces() const;              // vocabulary size: ids are 0 .. pieces() - 1
  int64_t byte_pieces() const;         // byte-fallback tokens (256 for models Switchyard trains)
  const std::string& serialized() const { return bytes_; }  // the .model file's bytes

  // Appends the ids of `text` to `out`; text with a newline is encoded line
  // by line, each '\n' its byte token (the trainer never sees newlines, so
  // no piece holds one).
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // The bytes of one id ("" for control and unknown pieces); ConfigError
  // for an id outside the vocabulary.
  const std::string& bytes_of(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string bytes_;
};

struct TokenizerTrainOptions {
  std::string model_type = "bpe";  // "bpe" or "unigram"
  int64_t vocab = 0;               // pieces, byte tokens and <unk> included
  int64_t threads = 1;             // the trainer's threads: 1 is deterministic for every model type
  uint32_t seed = 0;               // SentencePiece's random generator (sampling, shuffling)
  bool verbose = false;            // SentencePiece's own log on stderr
};

// Trains a model on the lines of `files` (read here; a missing or unreadable
// file is a ConfigError naming it) and returns its serialized bytes.
// `progress(bytes_read, bytes_total)` is called while the files are read.
std::string train_tokenizer(const std::vector<std::string>& files, const TokenizerTrainOptions& opt,
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace sy
