#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/cpu/blas.h"

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

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace

Trainer::Trainer(RunConfig cfg, Comm world) : cfg_(std::move(cfg)), world_(world) {
  rank0_ = world_.rank() == 0;
  const ParallelSection& par = cfg_.parallel;
  SY_CONFIG_CHECK(par.dp * par.pp == world_.size(),
                  "{}: parallel.pp x parallel.dp = {} x {} = {} ranks, but the job has {} rank{}; "
                  "run with {} rank{} or set parallel.dp = {}",
                  cfg_.source, par.pp, par.dp, par.pp * par.dp, world_.size(), world_.size() == 1 ? "" : "s",
                  par.pp * par.dp, par.pp * par.dp == 1 ? "" : "s", world_.size() / par.pp);
  SY_CONFIG_CHECK(par.dp == 1 && par.ep == 1 && par.pp == 1,
                  "{}: parallel.dp/ep/pp = {}/{}/{}: multi-rank layouts are not implemented in this "
                  "build yet; use dp = ep = pp = 1", cfg_.source, par.dp, par.ep, par.pp);
  if (cfg_.train.threads > 0) {
    omp_set_num_threads(static_cast<int>(cfg_.train.threads));
    openblas_set_num_threads(static_cast<int>(cfg_.train.threads));
  }

  data_ = std::make_unique<DataFiles>(cfg_.data.format, cfg_.data.train, cfg_.data.val, cfg_.data.val_fraction);
  const int64_t len = cfg_.model.seq_len + 1;
  SY_CONFIG_CHECK(data_->train().windows(len) > 0,
                  "{}: the training data ({}) has no file with at least model.seq_len + 1 = {} tokens",
                  cfg_.source, data_->train().describe(), len);
  if (cfg_.train.val_every > 0)
    SY_CONFIG_CHECK(data_->val().windows(len) > 0,
                    "{}: validation is on (train.val_every = {}) but the validation data ({}) has no "
                    "window of {} tokens; raise data.val_fraction, name data.val, or set train.val_every = 0",
                    cfg_.source, cfg_.train.val_every, data_->val().describe(), len);

  model_ = std::make_unique<Transformer>(cfg_.model, cfg_.train.micro_batch);
  const ParamLayout& layout = model_->layout();
  params_.resize(static_cast<size_t>(layout.total()));
  grads_.resize(static_cast<size_t>(layout.total()));
  init_params(params_.data(), layout, static_cast<uint64_t>(cfg_.train.seed));
  opt_ = std::make_unique<AdamW>(layout, cfg_.train);
  expert_bias_.assign(static_cast<size_t>(cfg_.model.moe_layers() * cfg_.model.moe.experts), 0.f);
  const int64_t N = cfg_.train.micro_batch * cfg_.model.seq_len;
  batcher_ = std::make_unique<Batcher>(data_->train(), data_->val(), cfg_.model.seq_len, cfg_.train.micro_batch,
                                       cfg_.parallel.dp, cfg_.train.val_batches,
                                       static_cast<uint64_t>(cfg_.train.seed), cfg_.model.vocab_size);
  inputs_.resize(static_cast<size_t>(N));
  targets_.resize(static_cast<size_t>(N));
}

Trainer::~Trainer() = default;

std::string Trainer::describe() const {
  const ModelConfig& m = cfg_.model;
  const ParamLayout& layout = model_->layout();
  // Active parameters per token: everything but the routed experts not chosen.
  int64_t expert = 0;
  for (const ParamInfo& p : layout.params())
    if (p.expert >= 0) expert += p.numel();
  int64_t active = layout.total() - expert + (m.moe.experts > 0 ? expert / m.moe.experts * m.moe.top_k : 0);
  BlasInfo blas = blas_info();
  std::string moe = m.moe_layers() == 0
                        ? "no MoE layers"
                        : fmt::format("{} MoE layer{}: E={} K={} F={} shared={} {} {}", m.moe_layers(),
                                      m.moe_layers() == 1 ? "" : "s", m.moe.experts, m.moe.top_k,
                                      m.moe.expert_hidden, m.moe.shared_experts,
                                      m.moe.score == ScoreFn::softmax ? "softmax" : "sigmoid",
                                      m.moe.capacity_factor > 0 ? fmt::format("capacity {}", m.moe.capacity_factor)
                                                                : std::string("dropless"));
  return fmt::format(
      "model  : L={} C={} H={}/{} D={} T={} V={} | {} | {} params, {} active per token\n"
      "layout : world {} = pp {} x dp {} (ep {})\n"
      "data   : train {}, val {}\n"
      "batch  : {} seq x {} accum x {} dp = {} tokens/step\n"
      "cpu    : {} threads | OpenBLAS {} kernels ({}), activations {:.1f} MiB",
      m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_size(), m.seq_len, m.vocab_size, moe,
      human_count(static_cast<double>(layout.total())), human_count(static_cast<double>(active)),
      world_.size(), cfg_.parallel.pp, cfg_.parallel.dp, cfg_.parallel.ep, data_->train().describe(),
      data_->val().describe(), cfg_.train.micro_batch, cfg_.train.grad_accum, cfg_.parallel.dp,
      cfg_.global_batch() * m.seq_len, omp_get_max_threads(), blas.core, blas.parallel,
      static_cast<double>(model_->activation_bytes()) / (1 << 20));
}

StepStats Trainer::step(int64_t step) {
  const double t0 = now_seconds();
  reset_gemm_counters();
  const int64_t A = cfg_.train.grad_accum;
  const int64_t dp_rank = 0;
  const ParamLayout& layout = model_->layout();
  grads_.zero();

  StepStats s;
  s.step = step;
  double loss_sum = 0, flops = 0;
  int64_t tokens = 0, dropped = 0, picks = 0;
  for (int64_t a = 0; a < A; ++a) {
    batcher_->train_batch(step, a, dp_rank, inputs_.data(), targets_.data());
    MicroBatchStats mb = model_->forward(params_.data(), expert_bias_.data(), inputs_.data(),
                                         targets_.data(), true, 1.0 / static_cast<double>(A));
    SY_CHECK(std::isfinite(mb.loss_sum), "the loss is {} at step {} (micro-batch {}): training diverged; "
             "lower train.lr or check the data", mb.loss_sum, step, a);
    model_->backward(params_.data(), grads_.data());
    loss_sum += mb.loss_sum;
    tokens += mb.tokens;
    dropped += mb.dropped;
    picks += mb.picks;
    flops += mb.flops;
    if (s.load.empty()) {
      s.load = mb.load;
      s.router = mb.router;
    } else {
      for (size_t l = 0; l < mb.load.size(); ++l) {
        for (size_t e = 0; e < mb.load[l].size(); ++e) s.load[l][e] += mb.load[l][e];
        s.router[l].aux += mb.router[l].aux;
        s.router[l].z += mb.router[l].z;
        s.router[l].entropy += mb.router[l].entropy;
      }
    }
  }
  for (RouterLosses& r : s.router) r.aux /= A, r.z /= A, r.entropy /= A;

  GradNorm gn = grad_norm(grads_.data(), layout);
  SY_CHECK(gn.nonfinite.empty(), "the gradient of '{}' is not finite at step {}: training diverged; lower "
           "train.lr or enable train.grad_clip", gn.nonfinite, step);
  s.lr = lr_at(cfg_.train, step);
  opt_->update(params_.data(), grads_.data(), step, s.lr, clip_coef(gn.norm, cfg_.train.grad_clip));
  update_bias(s.load);

  s.loss = loss_sum / static_cast<double>(tokens);
  s.grad_norm = gn.norm;
  s.dropped_frac = picks > 0 ? static_cast<double>(dropped) / static_cast<double>(picks) : 0.0;
  for (const auto& l : s.load) {
    int64_t mx = 0, sum = 0;
    for (int64_t c : l) mx = std::max(mx, c), sum += c;
    s.imbalance.push_back(sum > 0 ? static_cast<double>(mx) * static_cast<double>(l.size()) / static_cast<double>(sum) : 1.0);
  }
  s.seconds = now_seconds() - t0;
  s.tokens_per_s = static_cast<double>(tokens) / s.seconds;
  s.gflops = 3.0 * flops / s.seconds / 1e9;
  GemmCounters gc = gemm_counters();
  s.gemm_seconds = gc.seconds;
  s.gemm_gflops = gc.seconds > 0 ? gc.flops / gc.seconds / 1e9 : 0;
  return s;
}

void Trainer::update_bias(const std::vector<std::vector<int64_t>>& load) {
  // DeepSeek-V3's auxiliary-loss-free balancing: raise the bias of
  // under-loaded experts, lower the over-loaded, by a fixed step.
  const double rate = cfg_.model.moe.bias_update_rate;
  if (rate == 0) return;
  const int64_t E = cfg_.model.moe.experts;
  for (size_t l = 0; l < load.size(); ++l) {
    double mean = 0;
    for (int64_t c : load[l]) mean += static_cast<double>(c);
    mean /= static_cast<double>(E);
    for (int64_t e = 0; e < E; ++e) {
      double err = mean - static_cast<double>(load[l][static_cast<size_t>(e)]);
      float sign = err > 0 ? 1.f : (err < 0 ? -1.f : 0.f);
      expert_bias_[l * static_cast<size_t>(E) + static_cast<size_t>(e)] += static_cast<float>(rate) * sign;
    }
  }
}

double Trainer::validate() {
  const int64_t dp_rank = 0;
  double sum = 0;
  int64_t tokens = 0;
  for (int64_t a = 0; a < cfg_.train.val_batches; ++a) {
    batcher_->val_batch(a, dp_rank, inputs_.data(), targets_.data());
    MicroBatchStats mb = model_->forward(params_.data(), expert_bias_.data(), inputs_.data(), targets_.data(), false);
    sum += mb.loss_sum;
    tokens += mb.tokens;
  }
  return sum / static_cast<double>(tokens);
}

void Trainer::log_step(const StepStats& s, double eta) {
  std::string imb;
  for (double x : s.imbalance) imb += fmt::format("{}{:.2f}", imb.empty() ? "" : " ", x);
  std::string line = fmt::format(
      "step {:>{}}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {} tok/s | {:.1f} GFLOP/s | imb {} | drop {:.2f}% | eta {}",
      s.step + 1, fmt::format("{}", cfg_.train.steps).size(), cfg_.train.steps, s.loss, s.lr, s.grad_norm,
      human_count(s.tokens_per_s), s.gflops, imb.empty() ? "-" : imb, 100.0 * s.dropped_frac, human_time(eta));
  if (s.val_loss >= 0) line += fmt::format(" | val {:.4f}", s.val_loss);
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
  j["imbalance"] = s.imbalance;
  std::vector<double> aux, z, ent;
  for (const RouterLosses& r : s.router) aux.push_back(r.aux), z.push_back(r.z), ent.push_back(r.entropy);
  j["aux_loss"] = aux;
  j["z_loss"] = z;
  j["router_entropy"] = ent;
  if (s.val_loss >= 0) j["val_loss"] = s.val_loss;
  metrics_ << j.dump() << '\n';
  metrics_.flush();
}

void Trainer::train() {
  const fs::path dir = cfg_.run_dir();
  if (rank0_) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    SY_CHECK(!ec, "cannot create run directory '{}': {}", dir.string(), ec.message());
    std::ofstream(dir / "config.toml") << "# resolved configuration of this run (from " << cfg_.source << ")\n"
                                       << to_toml(cfg_);
    metrics_.open(dir / "metrics.jsonl", std::ios::trunc);
    SY_CHECK(metrics_.good(), "cannot write '{}'", (dir / "metrics.jsonl").string());
    std::cout << fmt::format("switchyard | config {} | run dir {}\n{}\n", cfg_.source, dir.string(), describe())
              << std::flush;
  }
  double avg = 0;
  const int64_t steps = cfg_.train.steps;
  for (int64_t i = 0; i < steps; ++i) {
    StepStats s = step(i);
    bool last = i + 1 == steps;
    if (cfg_.train.val_every > 0 && ((i + 1) % cfg_.train.val_every == 0 || last)) s.val_loss = validate();
    avg = i == 0 ? s.seconds : 0.9 * avg + 0.1 * s.seconds;
    if (rank0_) {
      write_metrics(s);
      if ((i + 1) % cfg_.train.log_every == 0 || i == 0 || last || s.val_loss >= 0)
        log_step(s, avg * static_cast<double>(steps - i - 1));
    }
  }
}

}  // namespace sy
