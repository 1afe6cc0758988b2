// The manifest of a new model written from outside a training run (moe-ckpt
// import, upcycle): the config, a fresh run identity, and one entry per
// parameter of the model the config describes, all in one consolidated file.
// The caller adds the rest (balancing bias, tokenizer) and writes it with
// ckpt::write_weights_only.
#pragma once

#include "ckpt/format.h"
#include "config/run.h"

namespace sy {

ckpt::Manifest new_weights_manifest(const RunConfig& cfg);

}  // namespace sy
