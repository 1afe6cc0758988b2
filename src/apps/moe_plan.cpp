// moe-plan: the pipeline a config would run, before running it: which
// layers each stage holds, every rank's op list as a timeline, the
// simulated bubble against the textbook one, activations held per rank.
//   moe-plan [CONFIG] [--set k=v ...] [--pp P] [--schedule S] [--microbatches M]
//            [--virtual V] [--width W] [--svg FILE] [--ops]
// Costs come from the estimated forward FLOPs of each stage (backward =
// 2x forward: input gradient and weight gradient 1x each).
// Exit codes: 0, 2 bad input.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/check.h"
#include "pipeline/simulate.h"
#include "train/config.h"
#include "train/pipeline_plan.h"

int main(int argc, char** argv) {
  CLI::App app{"moe-plan: print a config's pipeline schedule, its timeline and simulated bubble"};
  std::string config_path, svg, schedule;
  std::vector<std::string> overrides;
  int64_t pp = 0, micro = 0, virt = 0;
  int width = 100;
  bool ops = false;
  app.add_option("config", config_path, "TOML config (default: the built-in configs/tiny.toml)");
  app.add_option("--set", overrides, "override a key: --set parallel.pp=4 (repeatable)");
  app.add_option("--pp", pp, "pipeline stages (parallel.pp)");
  app.add_option("--schedule", schedule, "gpipe, 1f1b, interleaved or zb (parallel.schedule)");
  app.add_option("--microbatches", micro, "micro-batches per step (parallel.microbatches)");
  app.add_option("--virtual", virt, "chunks per rank (parallel.virtual)");
  app.add_option("--width", width, "characters of the text timeline")->check(CLI::Range(20, 1000));
  app.add_option("--svg", svg, "also write the timeline as an SVG picture");
  app.add_flag("--ops", ops, "list every rank's operations");
  CLI11_PARSE(app, argc, argv);
  try {
    if (pp > 0) overrides.push_back(fmt::format("parallel.pp={}", pp));
    if (!schedule.empty()) overrides.push_back(fmt::format("parallel.schedule=\"{}\"", schedule));
    if (micro > 0) overrides.push_back(fmt::format("parallel.microbatches={}", micro));
    if (virt > 0) overrides.push_back(fmt::format("parallel.virtual={}", virt));
    sy::RunConfig cfg = config_path.empty()
                            ? sy::parse_config(sy::default_config_text(), "configs/tiny.toml (built in)", overrides)
                            : sy::load_config(config_path, overrides);
    if (cfg.parallel.microbatches > 0) cfg.train.grad_accum = cfg.parallel.microbatches;
    const int64_t P = cfg.parallel.pp;
    sy::PipelinePlan plan = sy::plan_pipeline(cfg, P);
    const sy::pipe::Schedule& s = plan.schedule;
    const int v = s.v;
    // Costs per (rank, chunk) from the stage's estimated FLOPs, in units of the mean stage.
    double mean = 0;
    for (double f : plan.stage_flops) mean += f / static_cast<double>(plan.stage_flops.size());
    sy::pipe::Costs c = sy::pipe::Costs::uniform(s.p, v, 0, 0, 0);
    for (int st = 0; st < s.stages(); ++st) {
      double f = plan.stage_flops[static_cast<size_t>(st)] / mean;
      size_t r = static_cast<size_t>(s.rank_of(st)), ch = static_cast<size_t>(s.chunk_of(st));
      c.f[r][ch] = f, c.b[r][ch] = f, c.w[r][ch] = f;
    }
    sy::pipe::Simulation sim = sy::pipe::simulate(s, c);
    std::cout << fmt::format("{} schedule: pp {} x {} chunk{} per rank, {} micro-batches ({} split {})\n", s.name, s.p,
                             v, v == 1 ? "" : "s", s.m, plan.balanced ? "layers balanced by FLOPs," : "layers from parallel.split,",
                             fmt::join(plan.counts, "/"))
              << plan.describe() << "\n"
              << sy::pipe::timeline_text(s, sim, width)
              << fmt::format("         F / B / W: forward, input gradient, weight gradient (B alone when not split; chunk > 0 "
                             "lower case); digits: micro-batch; '.': idle\n\n");
    std::cout << fmt::format("bubble (idle / step): simulated {:.1f}% mean over ranks (uniform stage costs {:.1f}%), "
                             "textbook {:.1f}%\n",
                             100 * sim.mean_bubble(),
                             100 * sy::pipe::simulate(s, sy::pipe::Costs::uniform(s.p, v, 1.0 / v, 1.0 / v, 1.0 / v)).mean_bubble(),
                             100 * sy::pipe::analytic_bubble(s));
    std::cout << "activations held (micro-batches, at most): ";
    for (int r = 0; r < s.p; ++r) std::cout << fmt::format("{}rank {}: {}", r ? ", " : "", r, plan.validation.peak_in_flight[static_cast<size_t>(r)]);
    std::cout << "\nschedule validated: every receive has its send, dependencies in order, no deadlock\n";
    if (ops)
      for (int r = 0; r < s.p; ++r) {
        std::cout << fmt::format("rank {}:", r);
        for (const auto& o : s.ranks[static_cast<size_t>(r)])
          std::cout << fmt::format(" {}{}.{}{}", sy::pipe::op_name(o.kind), o.mb, o.chunk,
                                   o.peer >= 0 ? fmt::format("@{}", o.peer) : "");
        std::cout << "\n";
      }
    if (!svg.empty()) {
      std::ofstream out(svg);
      SY_CONFIG_CHECK(out.good(), "--svg {}: cannot write the file", svg);
      out << sy::pipe::timeline_svg(s, sim, fmt::format("{} pp={} m={} v={}: simulated bubble {:.1f}%", s.name, s.p, s.m,
                                                        v, 100 * sim.mean_bubble()));
      SY_CONFIG_CHECK(out.good(), "--svg {}: writing failed", svg);
      std::cout << "wrote " << svg << "\n";
    }
    return 0;
  } catch (const sy::ConfigError& e) {
    std::cerr << "moe-plan: bad input: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "moe-plan: error: " << e.what() << "\n";
    return 1;
  }
}
