// The training loop on one rank of the grid: data -> micro-batches ->
// forward/backward (gradients reduced in buckets as backward finishes them)
// -> global norm and clipping -> AdamW (ZeRO-1 optional) -> balancing bias
// -> metrics (summed over ranks) and validation.
//
// Its parts, one job each: setup.cpp wires a run from its config (and
// describes it); trainer.cpp is the step engine and the loop; pipeline_exec.cpp
// runs pipeline schedules; cadence.cpp decides when to save and stop, and
// resumes and saves; metrics.h writes metrics.jsonl and the step lines;
// signals.h turns signals into stop and save requests; infer/sample.h
// generates the text samples.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "comm/grid.h"
#include "core/arena.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "infer/sample.h"
#include "fp8/linear.h"
#include "model/ops.h"
#include "config/run.h"
#include "train/grad_sync.h"
#include "train/lr_groups.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "estimate/pipeline_plan.h"

namespace sy {

// moe-train's exit code when SIGTERM/SIGINT stopped it after saving a
// checkpoint: the run can be resumed (0 success, 1 error, 2 bad input,
// 3 watchdog abort).
inline constexpr int kInterruptedExitCode = 4;

struct StepTimes {
  double forward = 0, backward = 0, grad_wait = 0, optimizer = 0;
  double moe_wait = 0, moe_plan = 0, moe_permute = 0;
};

struct StepStats {
  int64_t step = 0;
  double loss = 0;              // mean cross-entropy over the global batch
  double lr = 0;
  double grad_norm = 0;         // before clipping
  double seconds = 0;           // wall time of the step (slowest rank)
  double tokens_per_s = 0;      // global tokens / seconds
  double gflops = 0;            // achieved model GFLOP/s of the job (3x forward FLOPs / time)
  double gemm_seconds = 0;      // time inside top-level sgemm calls (this rank)
  double gemm_gflops = 0;       // FLOP rate inside them (this rank)
  double dropped_frac = 0;
  std::vector<std::vector<int64_t>> load;  // per MoE layer, per expert (before dropping), global
  std::vector<double> imbalance;           // per MoE layer: max / mean load
  std::vector<RouterLosses> router;        // per MoE layer, mean over micro-batches
  // Per MoE layer: the smallest router_margin of the step's tokens (every
  // micro-batch, every rank); null in metrics when every expert is chosen.
  std::vector<double> router_margin;
  // moe.expert_groups > 1 (not with pp > 1): distinct (token, expert group)
  // pairs of the step's picks over all MoE layers and ranks, what a dispatch
  // that sends a token once per group (node) moves, per token per MoE layer
  // (1 .. min(K, groups)), and the most groups one token's picks spanned.
  double group_pairs = -1, groups_per_token = 0, groups_max = 0;
  double val_loss = -1;                    // < 0: not computed this step
  double val_capacity_factor = 0;          // the capacity factor validation ran with (moe.eval_capacity_factor)
  std::vector<Fp8GroupStats> fp8;          // per FP8 group (FP8 recipes): amax max and saturation sum over ranks
  double act_mib[4] = {0, 0, 0, 0};        // activation memory held, max over ranks: arena, expert rows, FP8 storage, total
  // Pipeline (pp > 1), per pipeline rank of data-parallel rank 0: idle share
  // of the step measured from op timestamps, the simulator's on the measured
  // op costs, micro-batches of activations held at most, activation MiB.
  std::vector<double> pp_bubble, pp_bubble_sim, pp_act_mib;
  std::vector<int64_t> pp_peak_in_flight;
  double pp_bubble_analytic = -1;
  // Where the step's time went, seconds, each the largest over ranks (a
  // breakdown to find a slow part, not a partition of `seconds`): forward,
  // backward (the gradient buckets are started from it), waiting for the
  // gradient reduction to finish, the optimizer (norm, AdamW, ZeRO-1
  // all-gather); inside the MoE layers: waiting for the row all-to-alls,
  // the dispatch plan with its count exchange, and gather/combine.
  StepTimes times;
};

struct PipeState;  // the executor's buffers and timings (pipeline_exec.cpp)

class Tokenizer;

class Trainer {
 public:
  Trainer(RunConfig cfg, const Comm& world);
  ~Trainer();

  // Runs from the checkpoint checkpoint.resume names (if any) to train.steps,
  // logging on rank 0, writing metrics.jsonl and checkpoints. Returns the
  // exit code: 0, or kInterruptedExitCode after a signal stopped it.
  int train();
  // Loads the checkpoint to resume from, if any; returns steps completed.
  int64_t resume();
  // One optimizer step (0-based); exposed for tests and benchmarks.
  StepStats step(int64_t step);
  // Mean cross-entropy over the fixed validation batches.
  double validate();
  // A text sample from the current weights (train.sample_prompt, greedy or
  // train.sample_temperature), returned on rank 0 ("" elsewhere); collective
  // over rank 0's expert-parallel group, which gathers the routed experts.
  std::string sample(int64_t steps_done);

  const RunConfig& config() const { return cfg_; }
  const Grid& grid() const { return grid_; }
  const Transformer& model() const { return *model_; }
  bool pipelined() const { return grid_.pp_size() > 1; }
  const PipelinePlan* pipeline() const;
  const std::vector<float>& expert_bias() const { return expert_bias_; }
  // The live parameters and gradients: in the backend's memory with
  // run.device = "cuda" (host code must copy them out to read them).
  float* params() { return live_params(); }
  const float* grads() const { return on_device() ? dgrads_.data() : grads_.data(); }
  bool on_device() const { return ops_.b().device() != Device::cpu; }
  Batcher& batcher() { return *batcher_; }
  const GradSync& sync() const { return *sync_; }
  Checkpointer& checkpointer() { return *ckpt_; }
  // The state a checkpoint of the current step would hold.
  TrainState train_state(int64_t steps_done, const StepStats& s) const;
  AdamW& optimizer() { return *opt_; }
  // Human-readable summary of model, data, layout and threads.
  std::string describe() const;

 private:
  void update_bias(const std::vector<std::vector<int64_t>>& load);
  // run.device = "cuda" (setup.cpp): the copies between the live device
  // state and its host copies.
  float* live_params() { return on_device() ? dparams_.data() : params_.data(); }
  float* live_grads() { return on_device() ? dgrads_.data() : grads_.data(); }
  // Pipelines: sums the tied embedding's gradient over its first and last stage.
  void reduce_tied_embedding(float* grads);
  const float* live_bias() const { return on_device() ? dbias_.data() : expert_bias_.data(); }
  void params_to_host();   // device parameters -> params_ (after any background save has staged)
  void bias_to_device();   // expert_bias_ -> the device's copy
  void state_to_device();  // params_, the moments and expert_bias_ -> the device (start, resume)
  // train.threads, else OMP_NUM_THREADS, else the affinity share; refuses
  // more than the machine and OpenBLAS can use.
  void set_threads(const Comm& world);
  // data.tokenizer, checked against model.vocab_size (ConfigError naming both).
  Tokenizer load_tokenizer() const;
  // Pipeline parallelism (pipeline_exec.cpp).
  void setup_pipeline(const MoeContext& ctx, bool fp8_activations);
  void run_pipeline(int64_t step, StepStats& s, double* sums);
  double validate_pipeline();
  void pipeline_stats(StepStats& s);
  void save_checkpoint(int64_t steps_done, const StepStats& s);  // cadence.cpp

  RunConfig cfg_;
  Grid grid_;
  // The groups that move float traffic (gradients, MoE rows, pipeline
  // messages): grid_ itself on the CPU; on a device, its twins for device
  // buffers (NCCL where the CUDA module provides it, else the staged device
  // communicator: device_comm.h).
  Grid dgrid_;
  std::string device_comm_;  // which, for the banner
  bool rank0_ = true;
  std::string dispatch_note_;  // the MoE dispatch transport, for the banner
  std::string group_nodes_;  // moe.expert_groups > 1: whether each group's experts live on one node (banner line)
  std::string threads_source_;  // where the thread count came from, for the banner
  std::vector<std::unique_ptr<Transformer>> chunks_;  // one per pipeline chunk this rank runs
  Transformer* model_ = nullptr;                      // chunks_[0]
  std::unique_ptr<PipeState> pipe_;
  std::shared_ptr<const ParamLayout> layout_;
  std::unique_ptr<ParamLayout> full_layout_;  // all experts: names for messages
  std::unique_ptr<DataFiles> data_;
  std::unique_ptr<Batcher> batcher_;
  FloatBuffer params_, grads_;
  // run.device = "cuda": the live parameters, gradients and balancing bias in
  // the backend's memory; params_, grads_ and expert_bias_ are then host
  // copies (initialisation and loads, checkpoint saves, the gradient norm
  // and its finiteness check, samples).
  GrowBuffer<float> dparams_, dgrads_, dbias_;
  bool pinned_ = false;       // params_ and grads_ page-locked for the device's copies
  std::unique_ptr<GradSync> sync_;
  MoeTimers moe_timers_;               // the MoE layers time into it (StepStats::times)
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<Checkpointer> ckpt_;
  TextSampler sampler_;                // rank 0, train.sample_every > 0
  std::unique_ptr<Fp8Linear> fp8_;     // FP8 recipes: the recipe state the linear layers' GEMMs use
  Ops ops_;                            // what the model chunks run with: the backend, fp8_
  int64_t tokens_seen_ = 0;
  std::vector<float> expert_bias_;     // (moe_layers, E), the same on every rank
  std::vector<int32_t> inputs_, targets_;
  MetricsWriter metrics_;             // rank 0
  std::string resumed_from_;           // the checkpoint this run resumed from ("" from scratch)
  std::string init_from_;              // checkpoint.init_from as resolved (the checkpoint read), "" if not used
  std::string init_from_run_;          // its run identity and step
  int64_t init_from_step_ = 0;
  std::vector<LrGroupUse> lr_use_;     // train.lr_groups: what each group took
};

}  // namespace sy
