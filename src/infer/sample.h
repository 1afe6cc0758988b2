// Text samples during training: a KV-cache decoder over the full model's
// weights continues a prompt. The trainer gathers the weights and picks the
// prompt (train.sample_prompt, or the first validation tokens of a token
// model); this turns them into the sample's text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/model.h"
#include "infer/decoder.h"

namespace sy {

struct SampleRequest {
  std::vector<int32_t> prompt;  // token ids; empty: a newline
  int64_t tokens = 64;          // to generate (the whole stays within model.seq_len)
  SamplingOptions opt;
  bool bytes = false;           // byte-level model: the text is the decoded bytes, else "p p p | g g g" ids
};

// Keeps its decoder between samples (rebuilt only when the context changes).
class TextSampler {
 public:
  // params: the whole model (all experts) in ParamLayout(m) order; bias: the
  // balancing bias (moe_layers, E).
  std::string sample(const ModelConfig& m, std::vector<float> params, const std::vector<float>& bias,
                     SampleRequest req);

 private:
  std::unique_ptr<Decoder> decoder_;
};

// Appends one sample to `path` ("=== step N (temperature T, seed S) ===")
// and prints it on one line to stdout.
void record_sample(const std::string& path, int64_t step, const SamplingOptions& opt, const std::string& text);

}  // namespace sy
