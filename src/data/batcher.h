// Turns (step, micro-batch, data-parallel rank) into token batches. The
// global batch of a step is samples [0, grad_accum * dp * micro_batch);
// micro-batch a of dp rank r holds samples a*dp*B + r*B .. + B, so any
// layout with the same dp * micro_batch trains on the same global batch.
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset.h"

namespace sy {

class Batcher {
 public:
  // B sequences of T tokens per micro-batch; val_micro_batches per validation.
  Batcher(const TokenDataset& train, const TokenDataset& val, int64_t T, int64_t B, int64_t dp,
          int64_t val_micro_batches, uint64_t seed, int64_t vocab);

  // inputs, targets: (B, T), targets shifted by one.
  void train_batch(int64_t step, int64_t micro, int64_t dp_rank, int32_t* inputs, int32_t* targets);
  void val_batch(int64_t micro, int64_t dp_rank, int32_t* inputs, int32_t* targets);

 private:
  void fill(const TokenDataset& data, int64_t step, int64_t first, bool val,
            int32_t* inputs, int32_t* targets);
  const TokenDataset& train_;
  const TokenDataset& val_;
  int64_t T_, B_, dp_, val_count_;
  uint64_t seed_;
  int64_t vocab_;
  std::vector<int32_t> window_;
};

}  // namespace sy
