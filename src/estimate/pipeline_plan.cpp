#include "estimate/pipeline_plan.h"

#include <stdexcept>

#include "core/check.h"
#include "pipeline/split.h"

namespace sy {

int64_t PipelinePlan::stage_of_layer(int64_t l) const {
  for (int64_t s = 0; s < stages(); ++s)
    if (l < bounds[static_cast<size_t>(s + 1)]) return s;
  SY_FAIL("layer {} is beyond the pipeline's {} layers", l, bounds.back());
}

StageSpec PipelinePlan::stage_spec(int64_t rank) const {
  StageSpec s;
  s.layers.assign(static_cast<size_t>(bounds.back()), false);
  for (int64_t c = 0; c < v; ++c) {
    int64_t st = c * pp + rank;
    for (int64_t l = bounds[static_cast<size_t>(st)]; l < bounds[static_cast<size_t>(st + 1)]; ++l)
      s.layers[static_cast<size_t>(l)] = true;
  }
  s.embed = rank == 0;
  s.head = rank == pp - 1;
  return s;
}

int64_t PipelinePlan::home_rank(int64_t layer, bool embedding) const {
  if (layer >= 0) return rank_of_layer(layer);
  return embedding ? 0 : pp - 1;
}

std::string PipelinePlan::describe() const {
  double total = 0;
  for (double f : stage_flops) total += f;
  std::string out;
  for (int64_t s = 0; s < stages(); ++s) {
    int64_t a = bounds[static_cast<size_t>(s)], b = bounds[static_cast<size_t>(s + 1)];
    std::string extra = s == 0 ? " + embedding" : "";
    if (s == stages() - 1) extra += " + final norm, head, loss";
    out += fmt::format("  stage {:>2} (rank {}, chunk {}): layers {:>2}..{:<2}{:<30} {:5.1f}% of forward FLOPs\n", s,
                       s % pp, s / pp, a, b - 1, extra, total > 0 ? 100 * stage_flops[static_cast<size_t>(s)] / total : 0.0);
  }
  return out;
}

PipelinePlan plan_pipeline(const RunConfig& cfg, int64_t pp) {
  PipelinePlan p;
  const ParallelSection& par = cfg.parallel;
  const int64_t L = cfg.model.n_layers;
  p.pp = pp, p.v = par.virtual_stages, p.m = cfg.train.grad_accum;
  const int64_t S = p.stages();
  SY_CONFIG_CHECK(S <= L, "{}: parallel.pp x parallel.virtual = {} x {} = {} pipeline stages, but the model has {} "
                  "layers (model.n_layers); each stage needs at least one", cfg.source, pp, p.v, S, L);
  std::vector<double> cost(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) cost[static_cast<size_t>(l)] = layer_flops(cfg.model, l);
  if (!par.split.empty()) {
    p.balanced = false;
    SY_CONFIG_CHECK(static_cast<int64_t>(par.split.size()) == S,
                    "{}: parallel.split has {} entries; it needs one per pipeline stage, pp x virtual = {}", cfg.source,
                    par.split.size(), S);
    int64_t sum = 0;
    for (size_t i = 0; i < par.split.size(); ++i) {
      SY_CONFIG_CHECK(par.split[i] >= 1, "{}: parallel.split[{}] = {}: every stage needs at least one layer",
                      cfg.source, i, par.split[i]);
      sum += par.split[i];
    }
    SY_CONFIG_CHECK(sum == L, "{}: parallel.split sums to {} layers, the model has {} (model.n_layers)", cfg.source, sum,
                    L);
    p.counts = par.split;
  } else {
    p.counts = pipe::balance_layers(cost, 0.0, head_flops(cfg.model), S);
  }
  p.bounds = pipe::stage_bounds(p.counts);
  for (int64_t s = 0; s < S; ++s) {
    double f = s == S - 1 ? head_flops(cfg.model) : 0.0;
    for (int64_t l = p.bounds[static_cast<size_t>(s)]; l < p.bounds[static_cast<size_t>(s + 1)]; ++l)
      f += cost[static_cast<size_t>(l)];
    p.stage_flops.push_back(f);
  }
  try {
    p.schedule = pipe::make_schedule(par.schedule, static_cast<int>(pp), static_cast<int>(p.m), static_cast<int>(p.v));
  } catch (const std::invalid_argument& e) {
    SY_CONFIG_FAIL("{}: {}", cfg.source, e.what());
  }
  SY_CONFIG_CHECK(p.m * S * 2 < 32767, "{}: {} micro-batches x {} stages is too many for the message tags; lower "
                  "parallel.microbatches", cfg.source, p.m, S);
  p.validation = pipe::validate(p.schedule);
  SY_CHECK(p.validation.ok, "the {} schedule for pp {} m {} v {} is invalid: {}", pipe::schedule_name(par.schedule), pp, p.m, p.v,
           p.validation.error);
  return p;
}

}  // namespace sy
