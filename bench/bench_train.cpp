// sy-bench-train CONFIG [--set k=v ...] [--steps N] [--warmup W] [--json]
//   (or mpirun -np P sy-bench-train ...)
// Times training steps of a config and, in the same processes on the same
// threads, the OpenBLAS sgemm peak (square n = 2048, best of 5, all ranks at
// once, summed), and prints tokens/s, achieved model GFLOP/s, the FLOP rate
// inside the GEMMs and both as fractions of the peak. Never pass/fail.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/comm.h"
#include "core/check.h"
#include "core/cpu.h"
#include "core/timer.h"
#include "kernels/cpu/blas.h"
#include "config/run.h"
#include "train/trainer.h"

namespace {

double sgemm_peak(int64_t n) {
  std::vector<float> a(static_cast<size_t>(n * n), 0.5f), b(static_cast<size_t>(n * n), 0.25f),
      c(static_cast<size_t>(n * n));
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    double t0 = sy::now_seconds();
    sy::sgemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    best = std::min(best, sy::now_seconds() - t0);
  }
  return 2.0 * static_cast<double>(n * n * n) / best / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"time Switchyard training steps against the sgemm peak"};
  std::string config;
  std::vector<std::string> overrides;
  int64_t steps = 10, warmup = 3;
  bool json = false;
  app.add_option("config", config, "TOML config (default: built-in tiny)");
  app.add_option("--set", overrides);
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_flag("--json", json, "one JSON object instead of text");
  CLI11_PARSE(app, argc, argv);
  sy::MpiEnv mpi(&argc, &argv);
  try {
    sy::RunConfig cfg = config.empty() ? sy::parse_config(sy::default_config_text(), "tiny", overrides)
                                       : sy::load_config(config, overrides);
    cfg.train.steps = warmup + steps;
    cfg.train.val_every = 0;
    sy::Comm world = sy::Comm::world();
    sy::Trainer trainer(cfg, world);
    auto job_peak = [&] {  // every rank at once, on its threads; the job's sum
      world.barrier();
      double p = sgemm_peak(2048);
      world.allreduce_sum(&p, 1);
      return p;
    };
    double peak_before = job_peak();
    std::vector<double> secs, tok, model, gemm, gemm_frac;
    std::vector<std::vector<double>> parts(7);  // StepStats::times, in its order
    for (int64_t s = 0; s < warmup + steps; ++s) {
      sy::StepStats st = trainer.step(s);
      if (s < warmup) continue;
      secs.push_back(st.seconds);
      tok.push_back(st.tokens_per_s);
      model.push_back(st.gflops);
      double g = st.gemm_gflops;  // this rank's rate inside its GEMMs; the job's is the sum
      world.allreduce_sum(&g, 1);
      gemm.push_back(g);
      gemm_frac.push_back(st.gemm_seconds / st.seconds);
      const sy::StepTimes& t = st.times;
      const double each[7] = {t.forward, t.backward, t.grad_wait, t.optimizer, t.moe_wait, t.moe_plan, t.moe_permute};
      for (int i = 0; i < 7; ++i) parts[i].push_back(each[i]);
    }
    double peak = std::max(peak_before, job_peak());  // before and after the steps
    sy::BlasInfo blas = sy::blas_info();
    if (world.rank() != 0) return 0;
    nlohmann::json r = {{"config", config.empty() ? "tiny (built in)" : config},
                        {"ranks", world.size()},
                        {"threads", blas.threads},
                        {"blas_core", blas.core},
                        {"step_seconds", median(secs)},
                        {"tokens_per_s", median(tok)},
                        {"model_gflops", median(model)},
                        {"gemm_gflops", median(gemm)},
                        {"gemm_time_frac", median(gemm_frac)},
                        {"sgemm_peak_gflops", peak}};
    const char* part_names[7] = {"forward", "backward", "grad_wait", "optimizer", "moe_wait", "moe_plan", "moe_permute"};
    std::string breakdown;
    for (int i = 0; i < 7; ++i) {
      r["times"][part_names[i]] = median(parts[i]);
      breakdown += fmt::format("{}{} {:.3f}", i ? ", " : "", part_names[i], median(parts[i]));
    }
    if (json) {
      std::cout << r.dump() << "\n";
    } else {
      std::cout << fmt::format(
          "{} on {} rank{}: {:.0f} tokens/s (median of {} steps, {:.3f} s/step) | model {:.1f} GFLOP/s = {:.0f}% "
          "of peak | GEMMs {:.1f} GFLOP/s = {:.0f}% of peak, {:.0f}% of step time | sgemm peak {:.1f} GFLOP/s "
          "(OpenBLAS {}, {} threads per rank)\n",
          r["config"].get<std::string>(), world.size(), world.size() == 1 ? "" : "s", median(tok), steps,
          median(secs), median(model), 100 * median(model) / peak, median(gemm), 100 * median(gemm) / peak,
          100 * median(gemm_frac), peak, blas.core, blas.threads);
      std::cout << "  step parts (s, median of the slowest rank each): " << breakdown << "\n";
    }
    return 0;
  } catch (const sy::Error& e) {
    std::cerr << "sy-bench-train: " << e.what() << "\n";
    return 1;
  }
}
