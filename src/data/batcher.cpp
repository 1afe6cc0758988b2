#include "data/batcher.h"

#include <algorithm>

namespace sy {

Batcher::Batcher(const TokenDataset& train, const TokenDataset& val, int64_t T, int64_t B, int64_t dp,
                 int64_t val_micro_batches, uint64_t seed, int64_t vocab)
    : train_(train), val_(val), T_(T), B_(B), dp_(dp), val_count_(val_micro_batches * dp * B),
      seed_(seed), vocab_(vocab), window_(static_cast<size_t>(T + 1)) {}

void Batcher::fill(const TokenDataset& data, int64_t step, int64_t first, bool val, int32_t* inputs,
                   int32_t* targets) {
  const int64_t windows = data.windows(T_ + 1);
  for (int64_t b = 0; b < B_; ++b) {
    int64_t sample = first + b;
    int64_t w = val ? val_window(sample, val_count_, windows) : train_window(seed_, step, sample, windows);
    data.window(w, T_ + 1, window_.data(), vocab_);
    std::copy(window_.begin(), window_.begin() + T_, inputs + b * T_);
    std::copy(window_.begin() + 1, window_.end(), targets + b * T_);
  }
}

void Batcher::train_batch(int64_t step, int64_t micro, int64_t dp_rank, int32_t* inputs, int32_t* targets) {
  fill(train_, step, micro * dp_ * B_ + dp_rank * B_, false, inputs, targets);
}

void Batcher::val_batch(int64_t micro, int64_t dp_rank, int32_t* inputs, int32_t* targets) {
  fill(val_, 0, micro * dp_ * B_ + dp_rank * B_, true, inputs, targets);
}

}  // namespace sy
