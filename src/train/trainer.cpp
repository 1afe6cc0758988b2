#include "train/trainer.h"

#include "train/pipeline_state.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdlib>

#include <unistd.h>

#include "ckpt/files.h"
#include "comm/shm.h"
#include "comm/watchdog.h"
#include "core/check.h"
#include "core/timer.h"
#include "core/version.h"
#include "kernels/cpu/blas.h"
#include "model/estimate.h"
#include "moe/balance.h"
#include "train/memory.h"

extern "C" void openblas_set_num_threads(int);

namespace sy {

namespace fs = std::filesystem;

namespace {

std::string human_count(double x) {
  if (x >= 1e9) return fmt::format("{:.2f}B", x / 1e9);
  if (x >= 1e6) return fmt::format("{:.2f}M", x / 1e6);
  if (x >= 1e3) return fmt::format("{:.1f}k", x / 1e3);
  return fmt::format("{:.0f}", x);
}

std::string now_iso() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

GridShape shape_of(const ParallelSection& p) { return {p.pp, p.dp, p.ep}; }

}  // namespace

Trainer::Trainer(RunConfig cfg, const Comm& world)
    : cfg_(std::move(cfg)),
      grid_(world, shape_of(cfg_.parallel), cfg_.model.moe_layers() > 0 ? cfg_.model.moe.experts : 0, cfg_.source) {
  rank0_ = world.rank() == 0;
  cfg_.parallel.dp = grid_.dp_size();
  cfg_.parallel.ep = grid_.ep_size();
  cfg_.resolve_batch(grid_.dp_size());
  set_threads(world);

  // Before anything that grows with the model: does this rank's share fit
  // the memory its node has left? Every rank of the node measures before
  // any of them allocates (the barrier), so none counts another's buffers.
  const MemoryEstimate need = estimate_memory(cfg_, {grid_.pp_size(), grid_.dp_size(), grid_.ep_size()});
  const int64_t on_node = node_ranks(world);
  check_memory(cfg_, need, available_memory(), on_node);
  world.barrier();

  data_ = std::make_unique<DataFiles>(option_name(cfg_.data.format), cfg_.data.train, cfg_.data.val, cfg_.data.val_fraction,
                                      cfg_.model.vocab_size);
  const int64_t len = cfg_.model.seq_len + 1;
  SY_CONFIG_CHECK(data_->train().windows(len) > 0,
                  "{}: the training data ({}) has no file with at least model.seq_len + 1 = {} tokens",
                  cfg_.source, data_->train().describe(), len);
  if (cfg_.train.val_every > 0)
    SY_CONFIG_CHECK(data_->val().windows(len) > 0,
                    "{}: validation is on (train.val_every = {}) but the validation data ({}) has no "
                    "window of {} tokens; raise data.val_fraction, name data.val, or set train.val_every = 0",
                    cfg_.source, cfg_.train.val_every, data_->val().describe(), len);
  batcher_ = std::make_unique<Batcher>(data_->train(), data_->val(), cfg_.model.seq_len, cfg_.train.micro_batch,
                                       grid_.dp_size(), cfg_.train.val_batches,
                                       static_cast<uint64_t>(cfg_.train.seed), cfg_.model.vocab_size);

  const Transport transport = cfg_.parallel.transport;
  bool one_node = grid_.ep_size() > 1 && same_node(grid_.ep());
  SY_CONFIG_CHECK(transport != Transport::shm || one_node || grid_.ep_size() == 1,
                  "{}: parallel.transport = \"shm\" needs every expert-parallel group on one node, and {} spans "
                  "several; use \"mpi\" or \"auto\"", cfg_.source, grid_.ep().describe());
  shm_ = one_node && transport != Transport::mpi;
  MoeContext ctx{grid_.dp(), grid_.ep(), grid_.dp_rank() * cfg_.train.micro_batch * cfg_.model.seq_len,
                 static_cast<int>(cfg_.parallel.dispatch_chunks), cfg_.parallel.overlap, shm_};
  const bool fp8_acts = cfg_.precision.recipe != Recipe::fp32 && cfg_.precision.fp8_activations;
  if (pipelined()) {
    setup_pipeline(ctx, fp8_acts);
  } else {
    SY_CONFIG_CHECK(cfg_.parallel.recompute == Recompute::none, "{}: parallel.recompute = \"{}\" recomputes pipeline stages; "
                    "it needs parallel.pp > 1", cfg_.source, option_name(cfg_.parallel.recompute));
    SY_CONFIG_CHECK(cfg_.parallel.virtual_stages == 1 && cfg_.parallel.split.empty(),
                    "{}: parallel.virtual and parallel.split need parallel.pp > 1", cfg_.source);
    chunks_.push_back(std::make_unique<Transformer>(cfg_.model, cfg_.train.micro_batch, ctx, fp8_acts));
  }
  model_ = chunks_[0].get();
  full_layout_ = std::make_unique<ParamLayout>(cfg_.model);
  const ParamLayout& layout = model_->layout();
  params_.resize(static_cast<size_t>(layout.total()));
  grads_.resize(static_cast<size_t>(layout.total()));
  init_params(params_.data(), layout, static_cast<uint64_t>(cfg_.train.seed));
  sync_ = std::make_unique<GradSync>(layout, grid_, cfg_.parallel.zero1);
  opt_ = std::make_unique<AdamW>(sync_->ranges(), sync_->state_size(), cfg_.train, cfg_.precision.moments == Moments::bf16);
  ckpt_ = std::make_unique<Checkpointer>(cfg_, grid_, layout, *full_layout_, *sync_);
  expert_bias_.assign(static_cast<size_t>(cfg_.model.moe_layers() * cfg_.model.moe.experts), 0.f);
  if (cfg_.precision.recipe != Recipe::fp32) {
    Fp8Recipe r;
    const Recipe recipe = cfg_.precision.recipe;
    r.scaling = recipe == Recipe::fp8_block ? Fp8Scaling::block
                : recipe == Recipe::fp8_tensor_delayed ? Fp8Scaling::tensor_delayed : Fp8Scaling::tensor_current;
    r.grad_format = cfg_.precision.grad_format == GradFormat::e4m3 ? Fp8Format::e4m3 : Fp8Format::e5m2;
    r.amax_history = cfg_.precision.amax_history;
    r.pow2_scales = cfg_.precision.pow2_scales;
    r.saturate = cfg_.precision.saturate;
    fp8_ = std::make_unique<Fp8Linear>(r);
    if (r.scaling == Fp8Scaling::tensor_delayed) {  // histories by global tensor index: reduced, checkpointed
      std::vector<std::pair<const float*, int64_t>> ids;
      for (const ParamInfo& p : layout.params()) ids.emplace_back(params_.data() + p.offset, p.index);
      fp8_->name_weights(ids, static_cast<int64_t>(full_layout_->params().size()));
    }
  }
  const int64_t N = cfg_.train.micro_batch * cfg_.model.seq_len;
  inputs_.resize(static_cast<size_t>(N));
  targets_.resize(static_cast<size_t>(N));
}


void Trainer::set_threads(const Comm& world) {
  ThreadCount tc = default_thread_count(world);  // collective (counts the node's ranks): every rank calls it
  std::string key = tc.source;
  if (cfg_.train.threads > 0) tc = {static_cast<int>(cfg_.train.threads), "train.threads"}, key = "train.threads";
  // More threads than CPUs only makes OpenMP and OpenBLAS threads spin
  // against each other: the fault campaign saw train.threads = 4096 hang
  // inside OpenBLAS on a Zen 3; on 2 cores of an EPYC 64 threads ran at
  // half the speed of 2. Beyond what OpenBLAS was built for (MAX_THREADS,
  // 64 in Debian's build) openblas_set_num_threads silently cuts to its
  // limit and resets OpenMP's team with it, so 128 or 4096 ran as 64: the
  // run would not be what the config says.
  const int cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const std::string config = blas_info().config;
  const auto at = config.find("MAX_THREADS=");
  const int blas_max = at == std::string::npos ? 0 : std::atoi(config.c_str() + at + 12);
  const int limit = blas_max > 0 ? std::min(std::max(cpus, 1), blas_max) : std::max(cpus, 1);
  SY_CONFIG_CHECK(tc.threads <= limit, "{}{} = {} threads per rank is more than this machine can use: {} CPUs{}; "
                  "use at most {}{}", key == "train.threads" ? cfg_.source + ": " : "", key, tc.threads, cpus,
                  blas_max > 0 ? fmt::format(", OpenBLAS built for at most {} threads", blas_max) : "", limit,
                  key == "train.threads" ? " (0 = OMP_NUM_THREADS, else the CPUs shared among the node's ranks)" : "");
  threads_source_ = tc.source;
  omp_set_num_threads(tc.threads);
  openblas_set_num_threads(tc.threads);
}

std::string Trainer::describe() const {
  const ModelConfig& m = cfg_.model;
  const ParamLayout& full = *full_layout_;
  ParamCount counted;
  counted.total = full.total();
  for (const ParamInfo& p : full.params())
    if (p.expert >= 0) counted.expert += p.numel();
  const int64_t active = active_params_per_token(m, counted);
  BlasInfo blas = blas_info();
  std::string moe = m.moe_layers() == 0
                        ? "no MoE layers"
                        : fmt::format("{} MoE layer{}: E={} K={} F={} shared={} {} {}", m.moe_layers(),
                                      m.moe_layers() == 1 ? "" : "s", m.moe.experts, m.moe.top_k,
                                      m.moe.expert_hidden, m.moe.shared_experts,
                                      score_name(m.moe.score),
                                      m.moe.capacity_factor > 0 ? fmt::format("capacity {}", m.moe.capacity_factor)
                                                                : std::string("dropless"));
  const ParallelSection& p = cfg_.parallel;
  std::string pipe;
  if (const PipelinePlan* pl = pipeline())
    pipe = fmt::format("\npipe   : {} schedule, pp {} x {} chunk{}, {} micro-batches, recompute {}, split {} {}\n{}",
                       pipe::schedule_name(p.schedule), pl->pp, pl->v, pl->v == 1 ? "" : "s", pl->m, option_name(p.recompute),
                       pl->balanced ? "balanced by FLOPs" : "from parallel.split", fmt::join(pl->counts, "/"),
                       pl->describe());
  if (!pipe.empty() && pipe.back() == '\n') pipe.pop_back();
  return fmt::format(
      "model  : L={} C={} H={}/{} D={} T={} V={} | {} | {} params, {} active per token\n"
      "layout : {} | {}{} | {} params on rank 0\n"
      "data   : train {}, val {}\n"
      "batch  : {} seq x {} accum x {} dp = {} tokens/step\n"
      "cpu    : {} thread{} per rank ({}) | OpenBLAS {} kernels ({}), activations {:.1f} MiB per rank{}",
      m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_size(), m.seq_len, m.vocab_size, moe,
      human_count(static_cast<double>(full.total())), human_count(static_cast<double>(active)),
      grid_.describe(m.moe.experts), p.zero1 ? "ZeRO-1" : "replicated optimizer",
      grid_.ep_size() == 1 ? std::string(", no dispatch")
      : shm_               ? std::string(", shared-memory dispatch")
      : p.overlap          ? fmt::format(", MPI dispatch overlapped ({} chunks)", p.dispatch_chunks)
                           : std::string(", MPI dispatch"),
      human_count(static_cast<double>(model_->layout().total())), data_->train().describe(),
      data_->val().describe(), cfg_.train.micro_batch, cfg_.train.grad_accum, grid_.dp_size(),
      cfg_.train.global_batch * m.seq_len, omp_get_max_threads(), omp_get_max_threads() == 1 ? "" : "s", threads_source_, blas.core, blas.parallel,
      static_cast<double>(model_->activation_bytes()) / (1 << 20), pipe);
}

StepStats Trainer::step(int64_t step) {
  Fp8Scope fp8_scope(fp8_.get());  // FP8 recipes: the linear layers' GEMMs go through it
  const double t0 = now_seconds();
  reset_gemm_counters();
  watchdog::set_step(step);
  const int64_t A = cfg_.train.grad_accum;
  const ParamLayout& layout = model_->layout();
  grads_.zero();

  StepStats s;
  s.step = step;
  // Summed over ranks at the end: CE sum, tokens, dropped, picks, flops.
  double sums[5] = {0, 0, 0, 0, 0};
  if (pipelined()) run_pipeline(step, s, sums);
  for (int64_t a = 0; a < A && !pipelined(); ++a) {
    batcher_->train_batch(step, a, grid_.dp_rank(), inputs_.data(), targets_.data());
    watchdog::set_phase("forward");
    MicroBatchStats mb = model_->forward(params_.data(), expert_bias_.data(), inputs_.data(), targets_.data(), true,
                                         1.0 / static_cast<double>(A));
    SY_CHECK(std::isfinite(mb.loss_sum), "the loss is {} at step {} (micro-batch {}, rank {}): training diverged; "
             "lower train.lr or check the data", mb.loss_sum, step, a, grid_.world().rank());
    watchdog::set_phase("backward");
    bool last = a + 1 == A;
    model_->backward(params_.data(), grads_.data(), [&](int64_t key) {
      if (last) sync_->ready(key, grads_.data());
    });
    sums[0] += mb.loss_sum;
    sums[1] += static_cast<double>(mb.tokens);
    sums[2] += static_cast<double>(mb.dropped);
    sums[3] += static_cast<double>(mb.picks);
    sums[4] += mb.flops;
    if (s.load.empty()) {
      s.load = mb.load;
      s.router = mb.router;
      s.router_margin = mb.margin;
    } else {
      for (size_t l = 0; l < mb.load.size(); ++l) {
        for (size_t e = 0; e < mb.load[l].size(); ++e) s.load[l][e] += mb.load[l][e];
        s.router_margin[l] = std::min(s.router_margin[l], mb.margin[l]);
        s.router[l].aux += mb.router[l].aux;
        s.router[l].z += mb.router[l].z;
        s.router[l].entropy += mb.router[l].entropy;
      }
    }
  }
  for (RouterLosses& r : s.router) r.aux /= A, r.z /= A, r.entropy /= A;
  // The closest top-k call anywhere (a minimum: the same on any layout).
  if (!s.router_margin.empty()) grid_.world().allreduce_min(s.router_margin.data(), s.router_margin.size());
  watchdog::set_phase("optimizer");
  sync_->finish();

  // Global gradient norm: every rank's owned share, summed.
  GradNormPart gn = grad_norm_part(sync_->reduced(grads_.data()), sync_->owned(), layout);
  double norm_in[2] = {gn.sumsq, 0}, bad = gn.nonfinite < 0 ? 1e300 : static_cast<double>(gn.nonfinite);
  grid_.world().allreduce_sum(norm_in, 1);
  grid_.world().allreduce_min(&bad, 1);
  SY_CHECK(bad >= 1e300, "the gradient of '{}' is not finite at step {}: training diverged; lower train.lr or "
           "enable train.grad_clip", full_layout_->params()[static_cast<size_t>(bad)].name, step);
  s.grad_norm = std::sqrt(norm_in[0]);
  s.lr = lr_at(cfg_.train, step);
  ckpt_->wait_staged();  // a background save may still be copying the weights and moments
  opt_->update(params_.data(), sync_->reduced(grads_.data()), step, s.lr, clip_coef(s.grad_norm, cfg_.train.grad_clip));
  sync_->gather_params(params_.data());
  update_bias(s.load);

  grid_.dp().allreduce_sum(sums, 5);
  s.loss = sums[0] / sums[1];
  s.dropped_frac = sums[3] > 0 ? sums[2] / sums[3] : 0.0;
  for (const auto& l : s.load) {
    int64_t mx = 0, sum = 0;
    for (int64_t c : l) mx = std::max(mx, c), sum += c;
    s.imbalance.push_back(sum > 0 ? static_cast<double>(mx) * static_cast<double>(l.size()) / static_cast<double>(sum) : 1.0);
  }
  // Slowest rank's step time and largest activation memory, in one all-reduce.
  Transformer::ActivationMemory am;
  for (const auto& c : chunks_) {
    Transformer::ActivationMemory a = c->activation_memory();
    am.arena += a.arena, am.expert_rows += a.expert_rows, am.fp8 += a.fp8;
  }
  const size_t amb[4] = {am.arena, am.expert_rows, am.fp8, am.total()};
  double mx[5] = {now_seconds() - t0};
  for (int i = 0; i < 4; ++i) mx[i + 1] = static_cast<double>(amb[i]) / (1 << 20);
  grid_.world().allreduce_max(mx, 5);
  s.seconds = mx[0];
  std::copy(mx + 1, mx + 5, s.act_mib);
  s.tokens_per_s = sums[1] / s.seconds;
  s.gflops = 3.0 * sums[4] / s.seconds / 1e9;
  GemmCounters gc = gemm_counters();
  s.gemm_seconds = gc.seconds;
  s.gemm_gflops = gc.seconds > 0 ? gc.flops / gc.seconds / 1e9 : 0;
  if (fp8_) {
    s.fp8 = fp8_->take_stats([&](float* v, size_t n) { grid_.world().allreduce_max(v, n); });
    std::vector<float> amax;
    std::vector<int64_t> sat;
    for (const Fp8GroupStats& g : s.fp8) amax.insert(amax.end(), {g.amax_act, g.amax_weight, g.amax_grad}), sat.push_back(g.saturated);
    grid_.world().allreduce_max(amax.data(), amax.size());
    grid_.world().allreduce_sum(sat.data(), sat.size());
    for (size_t i = 0; i < s.fp8.size(); ++i)
      s.fp8[i] = {amax[3 * i], amax[3 * i + 1], amax[3 * i + 2], sat[i]};
  }
  if (pipelined()) pipeline_stats(s);
  return s;
}

void Trainer::update_bias(const std::vector<std::vector<int64_t>>& load) {
  update_expert_bias(expert_bias_, load, cfg_.model.moe.experts, cfg_.model.moe.bias_update_rate);
}

double Trainer::validate() {
  watchdog::set_phase("validation");
  Fp8Scope fp8_scope(fp8_.get());
  if (pipelined()) return validate_pipeline();
  double sums[2] = {0, 0};
  for (int64_t a = 0; a < cfg_.train.val_batches; ++a) {
    batcher_->val_batch(a, grid_.dp_rank(), inputs_.data(), targets_.data());
    MicroBatchStats mb = model_->forward(params_.data(), expert_bias_.data(), inputs_.data(), targets_.data(), false);
    sums[0] += mb.loss_sum;
    sums[1] += static_cast<double>(mb.tokens);
  }
  grid_.dp().allreduce_sum(sums, 2);
  return sums[0] / sums[1];
}

std::string Trainer::sample(int64_t steps_done) {
  const Comm& ep = grid_.ep();
  const std::vector<int>& members = ep.world_ranks();
  if (std::find(members.begin(), members.end(), 0) == members.end() && !ep.solo()) return "";
  watchdog::set_phase("sample");
  const ModelConfig& m = cfg_.model;
  const ParamLayout& local = model_->layout();
  const ParamLayout& full = *full_layout_;
  std::vector<float> whole;
  if (rank0_) whole.resize(static_cast<size_t>(full.total()));
  // Dense tensors are on every rank; each layer's routed experts are one
  // contiguous range, spread over the expert-parallel group in rank order.
  for (const ParamInfo& p : full.params())
    if (p.expert < 0 && rank0_)
      std::copy_n(params_.data() + local.find(p.name).offset, p.numel(), whole.data() + p.offset);
  if (m.moe_layers() > 0) {
    std::vector<float> recv;
    for (int64_t l = m.dense_layers; l < m.n_layers; ++l) {
      const BlockOffsets& lo = local.block(l);
      const BlockOffsets& fo = full.block(l);
      const int64_t n = static_cast<int64_t>(lo.expert_w13.size()) * 3 * m.moe.expert_hidden * m.d_model;
      SY_CHECK(lo.expert_w2.back() + m.moe.expert_hidden * m.d_model - lo.expert_w13[0] == n,
               "layer {}: routed experts are not one contiguous range of the parameter buffer", l);
      if (ep.size() == 1) {
        if (rank0_) std::copy_n(params_.data() + lo.expert_w13[0], n, whole.data() + fo.expert_w13[0]);
        continue;
      }
      std::vector<int64_t> counts(static_cast<size_t>(ep.size()), n), displs(counts.size());
      for (size_t r = 0; r < counts.size(); ++r) displs[r] = static_cast<int64_t>(r) * n;
      recv.resize(static_cast<size_t>(n * ep.size()));
      ep.allgatherv(params_.data() + lo.expert_w13[0], n, recv.data(), counts, displs);
      if (rank0_) std::copy(recv.begin(), recv.end(), whole.data() + fo.expert_w13[0]);
    }
  }
  if (!rank0_) return "";
  const bool bytes = byte_level(cfg_);
  std::vector<int32_t> ids;
  if (bytes) {
    ids = encode_bytes(cfg_.train.sample_prompt);
  } else {  // no tokenizer: the first tokens of the first validation (or training) window
    const TokenDataset& set = data_->val().windows(m.seq_len) > 0 ? data_->val() : data_->train();
    ids.resize(static_cast<size_t>(std::min<int64_t>(8, m.seq_len)));
    std::vector<int32_t> win(static_cast<size_t>(m.seq_len));
    set.window(0, m.seq_len, win.data(), m.vocab_size);
    std::copy_n(win.begin(), ids.size(), ids.begin());
  }
  if (ids.empty()) ids.push_back(static_cast<int32_t>('\n'));
  const int64_t context = std::min<int64_t>(m.seq_len, static_cast<int64_t>(ids.size()) + cfg_.train.sample_tokens);
  if (static_cast<int64_t>(ids.size()) >= context) ids.resize(static_cast<size_t>(context - 1));
  if (!sampler_ || sampler_->context() != context)
    sampler_ = std::make_unique<Decoder>(m, std::move(whole), expert_bias_, context);
  else {
    std::copy(whole.begin(), whole.end(), sampler_->params());
    sampler_->bias() = expert_bias_;
  }
  sampler_->reset();
  SamplingOptions opt;
  opt.temperature = cfg_.train.sample_temperature;
  opt.seed = static_cast<uint64_t>(cfg_.train.seed) * 1000003u + static_cast<uint64_t>(steps_done);
  const int64_t V = m.vocab_size;
  const float* last = sampler_->extend(ids.data(), static_cast<int64_t>(ids.size())) + (ids.size() - 1) * V;
  const size_t prompt = ids.size();
  while (static_cast<int64_t>(ids.size()) < context) {
    ids.push_back(sample_token(last, V, opt, static_cast<int64_t>(ids.size())));
    if (static_cast<int64_t>(ids.size()) < context) last = sampler_->extend(&ids.back(), 1);
  }
  std::string text;
  if (bytes) {
    text = decode_bytes(ids);
  } else {
    text = fmt::format("{}", fmt::join(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(prompt), " ")) + " |" +
           fmt::format(" {}", fmt::join(ids.begin() + static_cast<std::ptrdiff_t>(prompt), ids.end(), " "));
  }
  std::ofstream out(fs::path(cfg_.run_dir()) / "samples.txt", std::ios::app);
  out << fmt::format("=== step {} (temperature {}, seed {}) ===\n{}\n", steps_done, opt.temperature, opt.seed, text);
  SY_CHECK(out.good(), "cannot append to '{}'", (fs::path(cfg_.run_dir()) / "samples.txt").string());
  std::cout << fmt::format("sample step {}: {}\n", steps_done, escape_text(text)) << std::flush;
  return text;
}

void Trainer::log_step(const StepStats& s, double eta) {
  std::string imb;
  for (double x : s.imbalance) imb += fmt::format("{}{:.2f}", imb.empty() ? "" : " ", x);
  std::string line = fmt::format(
      "step {:>{}}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {} tok/s | {:.1f} GFLOP/s | imb {} | drop {:.2f}% | eta {}",
      s.step + 1, fmt::format("{}", cfg_.train.steps).size(), cfg_.train.steps, s.loss, s.lr, s.grad_norm,
      human_count(s.tokens_per_s), s.gflops, imb.empty() ? "-" : imb, 100.0 * s.dropped_frac, human_time(eta));
  if (s.val_loss >= 0) line += fmt::format(" | val {:.4f}", s.val_loss);
  if (!s.fp8.empty()) {
    float act = 0, grad = 0;
    int64_t sat = 0;
    for (const Fp8GroupStats& g : s.fp8) act = std::max(act, g.amax_act), grad = std::max(grad, g.amax_grad), sat += g.saturated;
    line += fmt::format(" | fp8 amax act {:.3g} grad {:.3g} sat {}", act, grad, sat);
  }
  std::cout << line << std::endl;
}

void Trainer::write_metrics(const StepStats& s) {
  nlohmann::json j;
  j["step"] = s.step + 1;
  j["loss"] = s.loss;
  j["lr"] = s.lr;
  j["grad_norm"] = s.grad_norm;
  j["step_seconds"] = s.seconds;
  j["tokens_per_s"] = s.tokens_per_s;
  j["gflops"] = s.gflops;
  j["gemm_gflops"] = s.gemm_gflops;
  j["dropped_frac"] = s.dropped_frac;
  j["expert_load"] = s.load;
  if (!s.pp_bubble.empty())
    j["pipeline"] = {{"bubble", s.pp_bubble}, {"bubble_sim", s.pp_bubble_sim}, {"bubble_analytic", s.pp_bubble_analytic},
                     {"peak_in_flight", s.pp_peak_in_flight}, {"activation_mib", s.pp_act_mib}};
  j["imbalance"] = s.imbalance;
  std::vector<double> aux, z, ent;
  for (const RouterLosses& r : s.router) aux.push_back(r.aux), z.push_back(r.z), ent.push_back(r.entropy);
  j["aux_loss"] = aux;
  j["z_loss"] = z;
  j["router_entropy"] = ent;
  j["router_margin"] = s.router_margin;  // +inf (no decision: every expert chosen) is written as null
  if (s.val_loss >= 0) j["val_loss"] = s.val_loss;
  j["activation_mib"] = {{"arena", s.act_mib[0]}, {"expert_rows", s.act_mib[1]}, {"fp8", s.act_mib[2]},
                         {"total", s.act_mib[3]}};
  for (size_t g = 0; g < s.fp8.size(); ++g)
    j["fp8"][to_string(static_cast<Fp8Group>(g))] = {{"amax_act", s.fp8[g].amax_act},
                                                      {"amax_weight", s.fp8[g].amax_weight},
                                                      {"amax_grad", s.fp8[g].amax_grad},
                                                      {"saturated", s.fp8[g].saturated}};
  write_metrics_line(j.dump());
}

void Trainer::write_metrics_line(const std::string& line) {
  metrics_ << line << '\n';
  metrics_.flush();
  const fs::path path = fs::path(cfg_.run_dir()) / "metrics.jsonl";
  SY_CHECK(metrics_.good(), "cannot append to '{}': {}{}", path.string(), std::strerror(errno),
           ckpt::io_hint(path.string(), errno));
}

namespace {

// SIGUSR1: checkpoint after this step. SIGTERM / SIGINT / SIGUSR2: checkpoint
// and stop (mpirun forwards SIGUSR1 and SIGUSR2 to every rank: moe-launch
// stops a job with SIGUSR2).
std::atomic<int> g_save_signal{0}, g_stop_signal{0};
void on_signal(int sig) { (sig == SIGUSR1 ? g_save_signal : g_stop_signal) = 1; }

struct SignalScope {
  struct sigaction old_usr1{}, old_usr2{}, old_term{}, old_int{};
  SignalScope() {
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old_usr1);
    sigaction(SIGUSR2, &sa, &old_usr2);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
  }
  ~SignalScope() {
    sigaction(SIGUSR1, &old_usr1, nullptr);
    sigaction(SIGUSR2, &old_usr2, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    sigaction(SIGINT, &old_int, nullptr);
  }
};

}  // namespace

int64_t Trainer::resume() {
  std::vector<std::string> candidates = ckpt_->resume_candidates();
  for (size_t c = 0; c < candidates.size(); ++c) {
    try {
      TrainState st = ckpt_->load(candidates[c], params_.data(), *opt_);
      if (!st.expert_bias.empty()) expert_bias_ = st.expert_bias;
      if (fp8_ && fp8_->named() > 0) {
        if (st.fp8_len() > 0)
          fp8_->set_histories(st.fp8_amax_history, st.fp8_len());
        else if (rank0_)
          std::cout << "fp8: the checkpoint has no amax histories (saved without fp8-tensor-delayed); delayed "
                       "scales start from each tensor's current amax\n";
      }
      tokens_seen_ = st.tokens_seen;
      if (st.seed != cfg_.train.seed) {
        if (rank0_)
          std::cout << fmt::format("note: continuing with the checkpoint's seed {} (this config says {}) so the data "
                                   "order carries on\n", st.seed, cfg_.train.seed);
        cfg_.train.seed = st.seed;
        batcher_ = std::make_unique<Batcher>(data_->train(), data_->val(), cfg_.model.seq_len, cfg_.train.micro_batch,
                                             grid_.dp_size(), cfg_.train.val_batches,
                                             static_cast<uint64_t>(cfg_.train.seed), cfg_.model.vocab_size);
      }
      if (!st.sealed && rank0_)
        std::cout << "note: a format-1 checkpoint (no checksums over its metadata, no run identity); this run's "
                     "checkpoints are format 2 under a new run identity\n";
      ckpt_->set_run_id(st.run_id.empty() ? ckpt_->new_run_id() : st.run_id);
      resumed_from_ = candidates[c];
      if (rank0_) std::cout << fmt::format("resumed from {} (step {})\n", candidates[c], st.step) << std::flush;
      return st.step;
    } catch (const ConfigError& e) {
      if (!cfg_.checkpoint.fallback)
        throw ConfigError(fmt::format("{}; set checkpoint.fallback = true to resume from this run's newest intact "
                                      "checkpoint instead", e.what()), e.where());
      if (c + 1 == candidates.size())
        throw ConfigError(fmt::format("{}; no intact checkpoint of this run is left to fall back to", e.what()),
                          e.where());
      if (rank0_)
        std::cout << fmt::format("checkpoint {} is unusable: {}\n  falling back to the next older one\n",
                                 candidates[c], e.what()) << std::flush;
    }
  }
  ckpt_->set_run_id(ckpt_->new_run_id());
  return 0;
}

TrainState Trainer::train_state(int64_t steps_done, const StepStats& s) const {
  TrainState st;
  st.run_id = ckpt_->run_id();
  st.step = steps_done;
  st.tokens_seen = tokens_seen_;
  st.seed = cfg_.train.seed;
  const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
  if (L > 0) {
    st.bias_shape = {L, E};
    st.expert_bias = expert_bias_;
    st.expert_load.assign(static_cast<size_t>(L * E), 0);  // (L, E) row-major; zeros where the step recorded none
    for (size_t l = 0; l < s.load.size(); ++l)
      for (size_t e = 0; e < s.load[l].size(); ++e) st.expert_load[l * static_cast<size_t>(E) + e] = s.load[l][e];
  }
  st.metrics = {{"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm}};
  if (s.val_loss >= 0) st.metrics["val_loss"] = s.val_loss;
  if (fp8_ && fp8_->named() > 0) {
    int64_t len = 0;
    st.fp8_amax_history = fp8_->histories(&len);
    if (len > 0) st.fp8_shape = {static_cast<int64_t>(full_layout_->params().size()), 3, len};
  }
  return st;
}

void Trainer::save_checkpoint(int64_t steps_done, const StepStats& s) {
  watchdog::set_phase("checkpoint");
  std::string where = ckpt_->save(train_state(steps_done, s), params_.data(), *opt_);
  if (rank0_)
    std::cout << fmt::format("checkpoint step {} -> {} ({}; training paused {:.2f} s)\n", steps_done, where,
                             cfg_.checkpoint.async ? "writing in the background" : "written", ckpt_->last_stall())
              << std::flush;
}

int Trainer::train() {
  const fs::path dir = cfg_.run_dir();
  if (rank0_) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    SY_CHECK(!ec, "cannot create run directory '{}': {}", dir.string(), ec.message());
    ckpt::write_file_durably((dir / "config.toml").string(), "# resolved configuration of this run (from " +
                                                                 cfg_.source + ")\n" + to_toml(cfg_));
    std::cout << fmt::format("switchyard {} | config {} | run dir {}\n{}\n", version(), cfg_.source, dir.string(),
                             describe())
              << std::flush;
  }
  watchdog::start({(dir / "heartbeat").string(), grid_.world().rank(), cfg_.parallel.timeout, 1.0});
  SignalScope signals;
  const int64_t steps = cfg_.train.steps;
  const int64_t start = resume();
  if (rank0_) {
    // Recorded metrics are never dropped: append, after a line that marks
    // this start (a resume repeats the steps after its checkpoint; readers
    // keep the last record of each step).
    const fs::path path = dir / "metrics.jsonl";
    bool newline = false;  // a line cut short (a full disk, a kill) must not join the next
    if (std::ifstream in(path, std::ios::binary | std::ios::ate); in && in.tellg() > 0) {
      in.seekg(-1, std::ios::end);
      newline = in.get() != '\n';
    }
    metrics_.open(path, std::ios::app | std::ios::binary);
    SY_CHECK(metrics_.good(), "cannot write '{}': {}{}", path.string(), std::strerror(errno),
             ckpt::io_hint(path.string(), errno));
    if (newline) metrics_ << '\n';
    nlohmann::json ev = {{"event", start > 0 ? "resume" : "start"}, {"from_step", start},
                         {"run_id", ckpt_->run_id()}, {"time", now_iso()}, {"world", grid_.world().size()},
                         {"software_version", version()}};
    if (!resumed_from_.empty()) ev["checkpoint"] = resumed_from_;
    write_metrics_line(ev.dump());
    std::cout << fmt::format("run {}: {} at step {}\n", ckpt_->run_id(), start > 0 ? "resuming" : "starting", start);
    if (start >= steps) std::cout << fmt::format("nothing to do: already at step {} of {}\n", start, steps);
  }
  double avg = 0;
  int exit_code = 0;
  for (int64_t i = start; i < steps; ++i) {
    StepStats s = step(i);
    tokens_seen_ += cfg_.train.global_batch * cfg_.model.seq_len;
    bool last = i + 1 == steps;
    if (cfg_.train.val_every > 0 && ((i + 1) % cfg_.train.val_every == 0 || last)) s.val_loss = validate();
    if (cfg_.train.sample_every > 0 && ((i + 1) % cfg_.train.sample_every == 0 || last)) sample(i + 1);
    avg = i == start ? s.seconds : 0.9 * avg + 0.1 * s.seconds;
    if (rank0_) {
      write_metrics(s);
      if ((i + 1) % cfg_.train.log_every == 0 || i == start || last || s.val_loss >= 0)
        log_step(s, avg * static_cast<double>(steps - i - 1));
    }
    ckpt_->poll();
    int flags[2] = {g_save_signal.exchange(0), g_stop_signal.exchange(0)};
    grid_.world().allreduce_max(flags, 2);
    const int64_t every = cfg_.checkpoint.interval;
    const bool planned_stop = cfg_.train.stop_after > 0 && i + 1 >= cfg_.train.stop_after && !last;
    if ((every > 0 && (i + 1) % every == 0) || (last && (every > 0 || cfg_.checkpoint.at_end)) || flags[0] ||
        flags[1] || planned_stop)
      save_checkpoint(i + 1, s);
    if (flags[1] || planned_stop) {
      ckpt_->finish();
      if (rank0_)
        std::cout << (planned_stop ? fmt::format("stopping after step {} as train.stop_after asks; run again to "
                                                 "resume\n", i + 1)
                                   : fmt::format("stopped by a signal after step {}; the checkpoint is saved\n", i + 1));
      exit_code = planned_stop ? 0 : kInterruptedExitCode;
      break;
    }
  }
  ckpt_->finish();
  watchdog::set_phase("done");
  grid_.world().barrier();
  watchdog::stop();
  return exit_code;
}

}  // namespace sy
