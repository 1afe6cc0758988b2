// moe-plan: the pipeline a config would run, before running it: which
// layers each stage holds, every rank's op list as a timeline, the
// simulated bubble against the textbook one, activations held per rank.
//   moe-plan [CONFIG] [--set k=v ...] [--pp P] [--schedule S] [--microbatches M]
//            [--virtual V] [--width W] [--svg FILE] [--ops] [--json]
// Costs come from the estimated forward FLOPs of each stage (backward =
// 2x forward: input gradient and weight gradient 1x each).
// Exit codes: 0; 1 a failure (writing the SVG); 2 bad input.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/cli.h"
#include "core/check.h"
#include "pipeline/simulate.h"
#include "config/run.h"
#include "estimate/pipeline_plan.h"

namespace {

using json = nlohmann::ordered_json;

json plan_json(const sy::RunConfig& cfg, const sy::PipelinePlan& plan, const sy::pipe::Simulation& sim,
               const sy::pipe::Simulation& uniform, bool ops) {
  const sy::pipe::Schedule& s = plan.schedule;
  double total = 0;
  for (double f : plan.stage_flops) total += f;
  json stages = json::array();
  for (int st = 0; st < s.stages(); ++st) {
    const size_t i = static_cast<size_t>(st);
    stages.push_back({{"stage", st},
                      {"rank", s.rank_of(st)},
                      {"chunk", s.chunk_of(st)},
                      {"first_layer", plan.bounds[i]},
                      {"last_layer", plan.bounds[i + 1] - 1},
                      {"embedding", st == 0},
                      {"head", st == s.stages() - 1},
                      {"forward_flops_share", total > 0 ? plan.stage_flops[i] / total : 0.0}});
  }
  const double textbook = sy::pipe::analytic_bubble(s);
  json ranks = json::array();
  for (int r = 0; r < s.p; ++r) {
    const size_t i = static_cast<size_t>(r);
    json row = {{"rank", r},
                {"bubble_simulated", sim.bubble[i]},
                {"bubble_simulated_uniform", uniform.bubble[i]},
                {"bubble_textbook", textbook},
                {"activations_held", plan.validation.peak_in_flight[i]}};
    if (ops) {
      json list = json::array();
      for (const auto& o : s.ranks[i]) {
        json op = {{"op", sy::pipe::op_name(o.kind)}, {"mb", o.mb}, {"chunk", o.chunk}};
        if (o.peer >= 0) op["peer"] = o.peer;
        list.push_back(op);
      }
      row["ops"] = list;
    }
    ranks.push_back(row);
  }
  return {{"config", cfg.source},
          {"schedule", s.name},
          {"pp", s.p},
          {"virtual", s.v},
          {"microbatches", s.m},
          {"split_backward", s.split_backward},
          {"layers_balanced_by_flops", plan.balanced},
          {"layers_per_stage", plan.counts},
          {"stages", stages},
          {"bubble", {{"simulated_mean", sim.mean_bubble()},
                      {"simulated_uniform_mean", uniform.mean_bubble()},
                      {"textbook", textbook}}},
          {"ranks", ranks},
          {"validated", plan.validation.ok}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-plan: print a config's pipeline schedule, its timeline and simulated bubble"};
  sy::cli::setup(app, "moe-plan");
  std::string config_path, svg, schedule;
  std::vector<std::string> overrides;
  int64_t pp = 0, micro = 0, virt = 0;
  int width = 100;
  bool ops = false, as_json = false;
  app.add_option("config", config_path, "TOML config (default: the built-in configs/tiny.toml)");
  app.add_option("--set", overrides, "override a key: --set parallel.pp=4 (repeatable)");
  app.add_option("--pp", pp, "pipeline stages (parallel.pp; 0 = the config's)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 16));
  app.add_option("--schedule", schedule, "gpipe, 1f1b, interleaved or zb (parallel.schedule; default the config's)");
  app.add_option("--microbatches", micro, "micro-batches per step (parallel.microbatches; 0 = the config's)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--virtual", virt, "chunks per rank (parallel.virtual; 0 = the config's)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 10));
  app.add_option("--width", width, "characters of the text timeline")->check(CLI::Range(20, 1000));
  app.add_option("--svg", svg, "also write the timeline as an SVG picture");
  app.add_flag("--ops", ops, "list every rank's operations");
  app.add_flag("--json", as_json, "print one JSON object (stages, per-rank bubbles, activations held, ops) instead");
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;
  return sy::cli::guarded("moe-plan", [&]() -> int {
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
      double f = mean > 0 ? plan.stage_flops[static_cast<size_t>(st)] / mean : 1.0;
      size_t r = static_cast<size_t>(s.rank_of(st)), ch = static_cast<size_t>(s.chunk_of(st));
      c.f[r][ch] = f, c.b[r][ch] = f, c.w[r][ch] = f;
    }
    sy::pipe::Simulation sim = sy::pipe::simulate(s, c);
    sy::pipe::Simulation uniform = sy::pipe::simulate(s, sy::pipe::Costs::uniform(s.p, v, 1.0 / v, 1.0 / v, 1.0 / v));
    if (!svg.empty()) {
      std::ofstream out(svg);
      SY_CONFIG_CHECK(out.good(), "--svg {}: cannot write the file", svg);
      out << sy::pipe::timeline_svg(s, sim, fmt::format("{} pp={} m={} v={}: simulated bubble {:.1f}%", s.name, s.p, s.m,
                                                        v, 100 * sim.mean_bubble()));
      out.close();
      SY_CHECK(!out.fail(), "--svg {}: writing failed", svg);
    }
    if (as_json) {
      json j = plan_json(cfg, plan, sim, uniform, ops);
      if (!svg.empty()) j["svg"] = svg;
      std::cout << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return 0;
    }
    std::cout << fmt::format("{} schedule: pp {} x {} chunk{} per rank, {} micro-batches ({} split {})\n", s.name, s.p,
                             v, v == 1 ? "" : "s", s.m, plan.balanced ? "layers balanced by FLOPs," : "layers from parallel.split,",
                             fmt::join(plan.counts, "/"))
              << plan.describe() << "\n"
              << sy::pipe::timeline_text(s, sim, width)
              << fmt::format("         F / B / W: forward, input gradient, weight gradient (B alone when not split; chunk > 0 "
                             "lower case); digits: micro-batch; '.': idle\n\n");
    std::cout << fmt::format("bubble (idle / step): simulated {:.1f}% mean over ranks (uniform stage costs {:.1f}%), "
                             "textbook {:.1f}%\n",
                             100 * sim.mean_bubble(), 100 * uniform.mean_bubble(), 100 * sy::pipe::analytic_bubble(s));
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
    if (!svg.empty()) std::cout << "wrote " << svg << "\n";
    return 0;
  });
}
