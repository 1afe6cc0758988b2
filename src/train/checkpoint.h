// Saving and loading training state (format: ckpt/format.h).
//
// Save: every tensor has one writer among the ranks that hold it (balanced
// by bytes). With ZeRO-1 the moment parts travel to the writer first. A
// background thread then copies the rank's tensors (weights and AdamW
// moments) into a staging buffer and writes its shard file under
// step_XXXXXXXX.tmp/, fsyncing it, while training goes on: forward and
// backward only read the weights and moments, so the copy overlaps the next
// step's compute, and the trainer calls wait_staged() before its next
// optimizer update, the first moment they change. When every rank's shard is on disk,
// rank 0 writes the manifest, fsyncs, renames the directory into place and
// only then moves `latest`: a crash at any moment leaves the previous
// checkpoint and `latest` intact (re-saving a step swaps the directories
// atomically). Stale `.tmp` directories are removed before a save; a failed
// save removes its own and says why (a full disk, by name).
//
// Ownership: every checkpoint carries its run's identity (run_id, created
// when a run starts from scratch, kept across resumes and restarts).
// Retention deletes only this run's checkpoints beyond the newest
// checkpoint.keep (plus every checkpoint.keep_every-th step), never the
// one `latest` names; fallback never crosses into another run; a run does
// not start in a directory holding another run's checkpoints unless
// checkpoint.overwrite says so (then they are deleted once this run's first
// checkpoint is committed). Rank 0 holds an advisory lock on the directory
// while the run lives, so two jobs never write into one directory.
//
// Load: every rank reads exactly the tensors and moment ranges its own
// layout needs, from whichever shards hold them, verifying checksums and
// that each shard belongs to the manifest; any layout loads any checkpoint.
// Every value read is checked against the shape and range the model needs.
// All ranks agree on success or on the first error (which names the file
// and dataset).
//
// Files: checkpoint.cpp saves and commits; checkpoint_load.cpp loads;
// checkpoint_owner.cpp holds the ownership rules (run identity, lock,
// resume candidates, retention).
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/format.h"
#include "comm/grid.h"
#include "model/layout.h"
#include "config/run.h"
#include "train/grad_sync.h"
#include "train/optimizer.h"

namespace sy {

// Everything besides tensors a checkpoint restores: the manifest's state,
// one struct for both (its fields and their meaning: ckpt/format.h).
using TrainState = ckpt::CheckpointState;

class Checkpointer {
 public:
  Checkpointer(const RunConfig& cfg, const Grid& grid, const ParamLayout& local, const ParamLayout& full,
               const GradSync& sync);
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  const std::string& dir() const { return dir_; }

  // Saves the state after st.step steps; collective. With checkpoint.async it
  // returns once the state is staged (a save still in flight is finished
  // first). Returns the checkpoint's directory.
  std::string save(const TrainState& st, const float* params, const AdamW& opt);
  // Blocks until a background save has copied the live state it writes
  // (call before changing weights or moments). Cheap when idle.
  void wait_staged();
  // Commits a finished background save; collective, cheap when idle.
  void poll();
  // Finishes any pending save; collective.
  void finish();
  // Seconds the last save() kept the caller (setup, or the whole write when
  // synchronous); wait_staged() adds what it waits.
  double last_stall() const { return last_stall_; }

  // Checkpoints to try, best first, per checkpoint.resume, .fallback and
  // .overwrite (empty: start from scratch); takes the directory's lock.
  // Collective. Throws ConfigError, the same on every rank, when starting
  // would lose or mix in another run's work or `latest` is damaged.
  std::vector<std::string> resume_candidates();
  // This run's identity, set before the first save: the loaded checkpoint's,
  // or new_run_id() for a run from scratch.
  void set_run_id(const std::string& id) { run_id_ = id; }
  const std::string& run_id() const { return run_id_; }
  // The tokenizer model's bytes (data.tokenizer), stored in every checkpoint
  // this run writes; load() refuses a checkpoint that carries a different one.
  void set_tokenizer(std::string model) { tokenizer_ = std::move(model); }
  // A fresh identity, the same on every rank; collective.
  std::string new_run_id() const;
  // Loads into this rank's buffers; collective. Throws ConfigError with the
  // same message on every rank if the checkpoint is unusable here.
  TrainState load(const std::string& dir, float* params, AdamW& opt);
  // checkpoint.init_from: the weights only of the checkpoint `path` names (a
  // checkpoint directory, a consolidated file, a run or checkpoints
  // directory: its `latest`), written in any layout, into this rank's
  // parameters; collective. Every tensor name and shape is checked against
  // the whole model first (missing, unexpected, other shape: ConfigError
  // naming the checkpoint and the tensor, the same on every rank). Returns
  // the checkpoint's state (the caller takes only its balancing bias) and
  // sets *resolved to the checkpoint directory or file it read.
  TrainState load_weights(const std::string& path, float* params, std::string* resolved);

 private:
  struct Item {
    int64_t local;  // index into local_.params()
    const float* data[3];
  };
  void commit();
  void install(const std::string& tmp, const std::string& final_dir) const;
  // Rank 0: this run's checkpoints to try, newest first, except `skip`.
  std::vector<std::string> own_checkpoints(const std::string& run, const std::string& skip) const;
  uint32_t write_shard(const std::string& path, const std::vector<Item>& items, int64_t step) const;
  std::vector<float> gather_moments(const AdamW& opt, std::map<int64_t, int64_t>& where) const;
  // Offsets of the full moments (m then v) of the tensors this rank writes,
  // tensor after tensor, into where; returns the floats they take.
  int64_t written_moments_layout(std::map<int64_t, int64_t>& where) const;
  void retain() const;
  void delete_other_runs() const;
  std::string plan_resume();  // rank 0's part of resume_candidates(): the list, one per line

  RunConfig cfg_;
  const Grid& grid_;
  const ParamLayout& local_;
  const ParamLayout& full_;
  const GradSync& sync_;
  std::string dir_;
  std::string run_id_;
  std::string tokenizer_;  // SentencePiece model bytes; "" = none
  bool delete_others_ = false;   // checkpoint.overwrite took over a directory: delete the others after a commit
  int lock_fd_ = -1;             // rank 0: flock on <dir>/.lock
  std::vector<int64_t> writer_;  // full-table index -> world rank that writes it
  // The save in flight.
  std::thread thread_;
  std::atomic<bool> done_{true};
  std::mutex mu_;
  std::condition_variable staged_cv_;
  bool copying_ = false;           // the writer is still copying live buffers
  std::string error_;             // set by the writer thread
  uint32_t digest_ = 0;            // of the shard this rank wrote (set by the writer)
  bool pending_ = false;
  std::string pending_dir_;
  TrainState pending_state_;
  int64_t staged_floats_ = 0;      // this rank's share of a checkpoint (weights + moments)
  bool staged_ = false;            // async saves stage (the share fits checkpoint.staging_mb)
  FloatBuffer staging_;            // allocated and touched once, at construction
  std::vector<float> moments_;     // ZeRO-1: this rank's tensors' full moments, gathered
  double last_stall_ = 0;
};

}  // namespace sy
