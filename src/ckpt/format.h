// The checkpoint format (version 2), one directory per checkpoint:
//
//   <run dir>/checkpoints/step_00000100/
//     manifest.h5       written last by rank 0: what the checkpoint is and
//                       where every tensor lives
//     shard_00000.h5    one file per writing rank
//     shard_00001.h5 ...
//   <run dir>/checkpoints/latest   "step_00000100", updated after the rename
//
// Every model tensor is stored whole, under its global name and global
// shape, in exactly one shard file, as three float32 datasets:
// params/<name> (the FP32 master weights), adam_m/<name>, adam_v/<name>
// (the AdamW moments). Each dataset carries attributes `crc32c` (one
// CRC-32C per block of `crc_block` elements, row-major) and `crc_block`. The
// writer of a tensor is one of the ranks that hold it, chosen to balance
// bytes, so any layout can read any checkpoint: resharding is reading.
//
// Every file is sealed (ckpt/h5.h): a checksum table covers each attribute,
// group and small dataset, and the tensors' checksum attributes. A shard's
// root attributes name the checkpoint it belongs to: run_id, step, rank.
//
// manifest.h5 root attributes: format, format_version, software_version,
// saved_at, run_id (the run's identity: created when a run starts from
// scratch, kept across resumes and restarts), step (optimizer steps
// completed), tokens_seen, seed (the data order and every random stream
// derive from (seed, step)), layout_world / layout_pp / layout_dp /
// layout_ep / zero1 (how it was written), config (the run's resolved TOML),
// shards, and metrics_* of the last step. Datasets: expert_bias (moe_layers,
// E), expert_load (moe_layers, E) of the last step, fp8_amax_history
// (tensors, 3, steps) for fp8-tensor-delayed, tokenizer_model (uint8: the
// SentencePiece .model file's bytes, when the run had data.tokenizer). Group tensors/<name> per
// tensor: attributes shape, file, index. Group shard_files/<file> per shard:
// attribute seal_crc32c, the shard's digest, so a shard copied in from
// another checkpoint is refused.
//
// Format 1 (no seals, no run identity) is still read, with a warning.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ckpt/dir/latest.h"  // step directory names and `latest` (no HDF5)
#include "ckpt/h5.h"

namespace sy::ckpt {

inline constexpr int64_t kFormatVersion = 2;
inline constexpr int64_t kOldestFormatVersion = 1;  // still read (unsealed)
inline constexpr int64_t kCrcBlock = int64_t{1} << 20;  // elements per checksum block
inline constexpr const char* kManifest = "manifest.h5";
inline constexpr const char* kGroups[3] = {"params", "adam_m", "adam_v"};

std::string shard_file_name(int64_t rank);  // "shard_00003.h5"

// The checkpoint a user means by `path`: a checkpoint directory (it holds
// manifest.h5), a consolidated file, or a checkpoints or run directory (the
// checkpoint its `latest` names). Throws ConfigError saying what is there
// instead: no checkpoint at all, an interrupted save, a damaged or missing
// `latest` beside step directories (naming the newest to pass instead).
std::string resolve_checkpoint(const std::string& path);

// CRC-32C of each kCrcBlock-element block.
std::vector<int64_t> block_crcs(const float* data, int64_t n);

// A fresh run identity: 32 hex digits from the system's random source.
std::string new_run_id();
// The run a checkpoint directory belongs to: its manifest's run_id or, when
// the manifest is unreadable, any readable shard's; "" when none says
// (format 1, or everything damaged).
std::string read_run_id(const std::string& checkpoint_dir);
// Every run identity the checkpoint's files carry (manifest first, then the
// shards), without repeats: more than one means files were mixed between
// runs. Opens every shard: for a damaged checkpoint, not for routine use.
std::vector<std::string> read_run_ids(const std::string& checkpoint_dir);

// group/<name> with its shape and checksums.
void write_tensor(h5::File& f, const std::string& group, const std::string& name, const float* data,
                  const std::vector<int64_t>& shape);
// Elements [begin, end) of group/<name>, verifying every block the range
// touches (a mismatch names the file and dataset).
void read_verified(const h5::File& f, const std::string& group, const std::string& name, float* out, int64_t begin,
                   int64_t end);
// Checks every block of group/<name>; returns "" or what is wrong.
std::string verify_tensor(const h5::File& f, const std::string& group, const std::string& name);

struct TensorEntry {
  std::string name;
  std::vector<int64_t> shape;
  std::string file;   // shard file name within the checkpoint directory
  int64_t index = 0;  // position in the model's parameter table
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// The training state a checkpoint restores besides the tensors: the one
// home of each such field. The manifest holds it (write_manifest and
// read_manifest store and check it); the trainer saves and resumes exactly
// this (train/checkpoint.h: TrainState). A new field: add it here, write it
// in write_manifest_into and read it in read_manifest.
struct CheckpointState {
  std::string run_id;                   // the run's identity (32 hex digits); "" only in format 1
  int64_t step = 0;                     // optimizer steps completed
  int64_t tokens_seen = 0;              // training tokens consumed in those steps
  int64_t seed = 0;                     // data order and random streams derive from (seed, step)
  std::vector<int64_t> bias_shape;      // (moe_layers, E); empty without MoE layers
  std::vector<float> expert_bias;       // (moe_layers, E): the balancing bias
  std::vector<int64_t> expert_load;     // (moe_layers, E): the last step's loads
  std::vector<int64_t> fp8_shape;       // (tensors, 3, steps): fp8-tensor-delayed amax histories
  std::vector<float> fp8_amax_history;  // per tensor (by index): activation, weight, gradient; oldest first
  std::map<std::string, double> metrics;  // the last step's loss, lr, grad_norm, val_loss
  bool sealed = true;                   // read: the manifest carried a checksum table (format >= 2)
  // Steps of amax history held (0: none).
  int64_t fp8_len() const { return fp8_shape.size() == 3 ? fp8_shape[2] : 0; }
};

struct Manifest : CheckpointState {
  int64_t format_version = kFormatVersion;
  std::string software_version, saved_at, config_toml;
  std::map<std::string, uint32_t> shard_digests;  // shard file -> its seal digest (format >= 2, not consolidated)
  std::string tokenizer_model;  // the SentencePiece model's bytes (data.tokenizer); "" = byte-level or ids only
  int64_t world = 1, pp = 1, dp = 1, ep = 1, zero1 = 0, shards = 1;
  std::vector<TensorEntry> tensors;
  const TensorEntry* find(const std::string& name) const;
};

void write_manifest(const std::string& path, const Manifest& m);
// The same into a file that also holds the tensors (a consolidated checkpoint).
void write_manifest_into(h5::File& f, const Manifest& m);
// Reads and checks a manifest: its seal (format >= 2), and every value's
// range and consistency (layout, shapes, finite balancing bias and amax
// histories, tensor files and indices). Errors name the file and item.
Manifest read_manifest(const std::string& path);
Manifest read_manifest(const h5::File& f);

// A shard's identity: which checkpoint (run, step) and rank wrote it.
void write_shard_identity(h5::File& f, const std::string& run_id, int64_t step, int64_t rank);
// Checks that an opened shard belongs to the checkpoint `m` describes:
// its digest is the one the manifest recorded, and its run and step match.
void check_shard(const h5::File& f, const std::string& file, const Manifest& m);

}  // namespace sy::ckpt
