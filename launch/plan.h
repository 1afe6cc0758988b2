// moe-launch's plan: the world size and layout, per-rank memory and FLOP
// estimates, the checkpoint size against free disk, and the exact command,
// all decided and checked before anything starts (preflight).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "config/layout.h"
#include "launch/command.h"
#include "config/run.h"
#include "estimate/memory.h"

namespace sy::launch {

struct LaunchFlags {
  std::string config;                // TOML path ("" = the built-in tiny config)
  std::vector<std::string> sets;     // --set section.key=value, passed on to moe-train
  int64_t np = 0;                    // --np
  std::string hostfile;              // --hostfile (overrides launch.hostfile)
  std::string train_binary;          // moe-train (default: beside moe-launch)
};

// Environment the plan depends on, read once (tests pass their own).
struct Environment {
  std::string slurm_job_id;          // SLURM_JOB_ID
  int64_t slurm_ntasks = 0;          // SLURM_NTASKS
  int64_t cores = 1;                 // hardware threads of this machine
  bool root = false;
  std::vector<std::string> forward;  // names of set OMP_*, OPENBLAS_*, SY_* variables
  // The run a checkpoint directory belongs to ("" when none says): moe-launch
  // passes ckpt::read_run_id, which reads the HDF5 manifest, so that this
  // library links no HDF5. Unset: no checkpoint names its run.
  std::function<std::string(const std::string&)> run_id_of;
  static Environment current();
};

// Bytes on the busiest rank: the one estimate moe-train checks too (estimate/memory.h).
using MemoryEstimate = sy::MemoryEstimate;

struct Plan {
  LaunchFlags flags;
  RunConfig cfg;                     // as moe-train will see it; parallel.dp / ep resolved
  Environment env;
  bool slurm = false;
  int64_t np = 1;
  std::string np_source;             // where np came from
  std::vector<Host> hosts;           // from the hostfile
  GridShape shape;
  int64_t params_total = 0, params_rank = 0, active_per_token = 0;
  MemoryEstimate memory;
  double flops_per_token = 0, tokens_per_step = 0;
  double ckpt_bytes = 0, ckpt_need = 0, disk_free = -1;
  std::string ckpt_dir, resume_from;  // resume_from: the checkpoint the run starts from ("" from scratch)
  std::string resume_line;            // how it starts, as --dry-run says it (or what moe-train will refuse)
  CommandOptions command;
  std::vector<std::string> argv;
  std::vector<std::string> notes;
  double flops_per_step() const { return 3.0 * flops_per_token * tokens_per_step; }
};

// Resolves the plan; throws ConfigError naming the key, file or flag at
// fault (a layout that does not fit the world size, a bad hostfile, ...).
Plan make_plan(const LaunchFlags& flags, const Environment& env);
// Checks what would make the job fail after it started: binaries, data
// files (every token of a shard against model.vocab_size), a writable run
// directory, free disk for the checkpoints, and, for a job on this machine
// alone, the memory estimate against the memory it has available.
void preflight(Plan& plan);
// The human-readable plan (--dry-run).
std::string describe(const Plan& plan);
// The same as one JSON object (--dry-run --json): world, layout, model,
// batch, memory estimate (bytes per field), compute, schedule, checkpoint,
// resume, faults, notes and the argv.
std::string describe_json(const Plan& plan);

}  // namespace sy::launch
