// The run configuration: TOML file -> validated RunConfig. Every key is
// declared once in a schema (name, type, range, doc); an unknown section or
// key, a wrong type or an out-of-range value is a ConfigError naming the
// file, the line and the key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model.h"
#include "config/options.h"

namespace sy {

struct RunSection {
  std::string name = "tiny";
  std::string dir;  // "" = runs/<name>
  // What runs the ops and holds the training state: "cpu" (the reference) or
  // "cuda" (one rank for now; train/setup.cpp refuses what it does not do).
  std::string device = "cpu";
};

struct DataSection {
  DataFormat format = DataFormat::text;  // "text" (bytes) or "bin" (llm.c uint16 shards)
  std::vector<std::string> train;     // files or glob patterns
  std::vector<std::string> val;       // optional; empty = the tail of each train file
  double val_fraction = 0.1;
  std::string tokenizer;             // SentencePiece .model the shards were encoded with; "" = none
};

// One entry of train.lr_groups: parameters whose name matches `match`
// (config/name_glob.h) get learning rate lr x scale (decoupled weight
// decay scales with it); the first matching group wins.
struct LrGroup {
  std::string match;
  double scale = 1.0;
};

struct TrainSection {
  int64_t steps = 200;
  int64_t stop_after = 0;      // end this run (with a checkpoint) once this many steps are done; 0 = run to `steps`
  int64_t seed = 1337;
  int64_t global_batch = 0;    // sequences per step over all ranks; 0 = micro_batch * grad_accum * dp
  int64_t micro_batch = 8;     // sequences per rank per micro-batch; 0 = global_batch / (dp * grad_accum)
  int64_t grad_accum = 1;      // micro-batches per step
  double lr = 3e-3;            // peak learning rate
  double min_lr_ratio = 0.1;   // cosine decays to lr * min_lr_ratio
  int64_t warmup_steps = 20;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;      // global-norm clipping, 0 = off
  int64_t log_every = 10;
  int64_t val_every = 50;      // 0 = no validation
  int64_t val_batches = 4;
  int64_t threads = 0;         // CPU threads per rank, 0 = OpenMP's default
  int64_t sample_every = 0;    // steps between text samples (rank 0, <run dir>/samples.txt), 0 = never
  std::string sample_prompt = "The ";
  int64_t sample_tokens = 64;
  double sample_temperature = 0.8;  // 0 = greedy
  std::vector<LrGroup> lr_groups;   // per-parameter learning-rate multipliers, first match wins; empty = none
};

struct ParallelSection {
  int64_t dp = 0, ep = 0, pp = 1;  // dp, ep = 0: from the job (dp = ranks / pp, ep = gcd(dp, experts))
  pipe::ScheduleKind schedule = pipe::ScheduleKind::one_f_one_b;  // pipeline schedule: one of pipe::schedule_names()
  int64_t microbatches = 0;        // micro-batches per step through the pipeline; 0 = train.grad_accum
  int64_t virtual_stages = 1;      // parallel.virtual: model chunks per pipeline rank (interleaved)
  std::vector<int64_t> split;      // layers per stage (pp x virtual); empty = balanced by cost
  Recompute recompute = Recompute::none;  // "none" or "full" (keep each stage's input, recompute before backward)
  bool zero1 = false;              // shard AdamW state over the data-parallel group
  // MoE rows between expert-parallel ranks: "shm" (ep group on one node), "mpi" (flat all-to-all-v),
  // "hierarchical" (shared memory within a node, the network once per node pair between nodes), or "auto":
  // shm on one node, hierarchical when the group spans nodes with several of its ranks on some node, else mpi.
  Transport transport = Transport::automatic;
  // Ranks per node as the MoE dispatch sees it: 0 = the machine's (MPI_Comm_split_type SHARED); n > 0 =
  // every n consecutive world ranks form a node (each within a real node). For tests and benchmarks that
  // exercise the paths between nodes on one machine.
  int64_t node_size = 0;
  bool overlap = false;            // chunked dispatch overlapping all-to-all with expert compute (mpi transport)
  int64_t dispatch_chunks = 4;     // chunks per MoE dispatch when overlapping
  // What MoE rows that cross ranks travel as (moe/payload.h), both passes:
  //   "fp32"  as computed (default)
  //   "bf16"  rows to the experts and back in BF16 (round to nearest even)
  //   "fp8"   rows to the experts in E4M3 (output gradients: the recipe's
  //           grad_format, else E4M3) with one FP32 scale per 1x128 block
  //           of each row, in the same message; rows back in BF16 (combine_dtype)
  // The mpi transports (also overlapped) encode; shm moves no network
  // bytes and keeps FP32 (the log says which payload each transport uses).
  // With ep = 1 nothing crosses ranks: no effect. With precision.recipe =
  // "fp8-block" the FP8 rows are exactly what the expert GEMM quantizes:
  // with the same combine_dtype the run is bit-identical to "fp32". Refused with the per-tensor FP8
  // recipes (their scale is of the whole tensor, unknown to a sender).
  DispatchDtype dispatch_dtype = DispatchDtype::fp32;
  // The rows back (expert outputs; input gradients): "auto" (BF16 with a
  // bf16 or fp8 dispatch, else FP32), "fp32" or "bf16". With "fp8-block"
  // and combine_dtype = "fp32", dispatch_dtype = "fp8" changes nothing.
  CombineDtype combine_dtype = CombineDtype::automatic;
  double timeout = 300;            // seconds a collective may wait before the watchdog aborts, 0 = off
};

struct PrecisionSection {
  Recipe recipe = Recipe::fp32;       // "fp32", "fp8-tensor-current", "fp8-tensor-delayed", "fp8-block", "bf16"
  GradFormat grad_format = GradFormat::e5m2;  // FP8 format of gradients in the dgrad / wgrad GEMMs ("e5m2" or "e4m3")
  int64_t amax_history = 16;          // fp8-tensor-delayed: steps of amax history a scale comes from
  bool pow2_scales = false;           // scales rounded down to powers of two
  bool saturate = true;               // overflow clamps to the largest finite value (else NaN / Inf)
  bool fp8_activations = true;        // FP8 recipes: keep the inputs of FP8 linears saved for backward in FP8
  Moments moments = Moments::fp32;    // AdamW moments stored in "fp32" or "bf16" (master weights stay FP32)
};

struct CheckpointSection {
  int64_t interval = 0;        // save every N steps (and on SIGUSR1 / SIGTERM); 0 = no periodic saves
  bool at_end = true;          // save when the run reaches train.steps
  int64_t keep = 3;            // newest checkpoints kept
  int64_t keep_every = 0;      // plus every step that is a multiple of this, forever; 0 = none
  ResumeMode resume = ResumeMode::automatic;  // "auto" (from `latest` if any), "none", or a checkpoint directory
  std::string resume_dir;      // resume = ResumeMode::dir: the checkpoint directory (as written)
  bool fallback = false;       // an unusable checkpoint falls back to this run's newest intact one
  bool overwrite = false;      // start in a directory holding another run's checkpoints (deleted after the first save)
  bool async = true;           // write in the background while training goes on
  int64_t staging_mb = 4096;   // staging memory per rank for async saves; bigger shards save synchronously
  std::string dir;             // "" = <run dir>/checkpoints
  std::string init_from;       // weights only from this checkpoint when the run has none to resume; "" = init
};

// How moe-launch starts, watches and restarts the job (moe-train ignores it).
struct LaunchSection {
  int64_t np = 0;                    // ranks; 0 = --np, SLURM_NTASKS, the hostfile's slots, or pp x dp
  std::string hostfile;              // OpenMPI hostfile ("host slots=N" lines); "" = this machine
  std::string map_by = "slot";       // mpirun --map-by
  std::string bind_to = "none";      // mpirun --bind-to
  std::vector<std::string> env;      // extra environment variables forwarded to every rank
  double hang_timeout = 120;         // seconds without a heartbeat before a rank counts as hung
  double start_timeout = 300;        // seconds a rank may take to write its first heartbeat
  int64_t max_restarts = 3;          // restarts from the latest checkpoint after failures
  double restart_backoff = 5;        // seconds before the first restart, doubled for each further one
  double grace = 60;                 // seconds ranks get to checkpoint and exit after a stop signal
  bool requeue = true;               // inside Slurm: requeue the job after SIGUSR1 (pre-timeout) stopped it
  bool report = true;                // write <run dir>/report/ after each run
};

struct RunConfig {
  RunSection run;
  ModelConfig model;
  DataSection data;
  TrainSection train;
  ParallelSection parallel;
  PrecisionSection precision;
  CheckpointSection checkpoint;
  LaunchSection launch;
  std::string source;  // where it came from, for messages

  std::string run_dir() const { return run.dir.empty() ? "runs/" + run.name : run.dir; }
  // Fixes train.global_batch and train.micro_batch for `dp` data-parallel
  // ranks (ConfigError, saying what would fit, if they cannot agree).
  void resolve_batch(int64_t dp);
};

// The built-in default (configs/tiny.toml, compiled in).
const char* default_config_text();

// Parses TOML text; `source` names it in errors. Applies `overrides`
// ("section.key=value", `--set` on the command line) after the file.
RunConfig parse_config(const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides = {});
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The whole resolved configuration as TOML (every key, defaults included),
// which parse_config reads back to the same RunConfig.
std::string to_toml(const RunConfig& cfg);

// One line per key: name, type, default, doc (for --help-config).
std::string describe_keys();

// Keys of the given sections whose values differ: "model.d_model = 128 in a, 64 in b".
std::vector<std::string> differing_keys(const RunConfig& a, const RunConfig& b,
                                        const std::vector<std::string>& sections);

}  // namespace sy
