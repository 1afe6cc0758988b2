#include "infer/sample.h"

#include <algorithm>
#include <fstream>
#include <iostream>

#include "core/check.h"

namespace sy {

std::string TextSampler::sample(const ModelConfig& m, std::vector<float> params, const std::vector<float>& bias,
                                SampleRequest req) {
  std::vector<int32_t>& ids = req.prompt;
  if (ids.empty()) ids.push_back(static_cast<int32_t>('\n'));
  const int64_t context = std::min<int64_t>(m.seq_len, static_cast<int64_t>(ids.size()) + req.tokens);
  if (static_cast<int64_t>(ids.size()) >= context) ids.resize(static_cast<size_t>(context - 1));
  if (!decoder_ || decoder_->context() != context)
    decoder_ = std::make_unique<Decoder>(m, std::move(params), bias, context);
  else
    decoder_->set_weights(params, bias);
  decoder_->reset();
  const int64_t V = m.vocab_size;
  const float* last = decoder_->extend(ids.data(), static_cast<int64_t>(ids.size())) + (ids.size() - 1) * V;
  const size_t prompt = ids.size();
  while (static_cast<int64_t>(ids.size()) < context) {
    ids.push_back(sample_token(last, V, req.opt, static_cast<int64_t>(ids.size())));
    if (static_cast<int64_t>(ids.size()) < context) last = decoder_->extend(&ids.back(), 1);
  }
  if (req.bytes) return decode_bytes(ids);
  return fmt::format("{}", fmt::join(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(prompt), " ")) + " |" +
         fmt::format(" {}", fmt::join(ids.begin() + static_cast<std::ptrdiff_t>(prompt), ids.end(), " "));
}

void record_sample(const std::string& path, int64_t step, const SamplingOptions& opt, const std::string& text) {
  std::ofstream out(path, std::ios::app);
  out << fmt::format("=== step {} (temperature {}, seed {}) ===\n{}\n", step, opt.temperature, opt.seed, text);
  SY_CHECK(out.good(), "cannot append to '{}'", path);
  std::cout << fmt::format("sample step {}: {}\n", step, escape_text(text)) << std::flush;
}

}  // namespace sy
