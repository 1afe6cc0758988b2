#include "estimate/memory.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "estimate/model_size.h"
#include "estimate/pipeline_plan.h"

namespace sy {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// AdamW state elements on the rank with the largest ZeRO-1 share: as
// GradSync cuts every gradient bucket over its group (dense buckets over
// dp, routed experts over expert-dp), at most ceil(n / G) of each.
int64_t zero1_state(const ModelConfig& m, const StageSpec& stage, ExpertSlice local_experts, int64_t dp, int64_t edp) {
  const int64_t C = m.d_model, V = m.vocab_size;
  int64_t state = 0;
  if (stage.head) state += ceil_div(C + (m.tie_embeddings ? 0 : V * C), dp);
  for (int64_t l = 0; l < m.n_layers; ++l) {
    if (!stage.holds(l)) continue;
    const LayerParams p = layer_params(m, l, local_experts);
    state += ceil_div(p.dense, dp) + ceil_div(p.expert, edp);
  }
  if (stage.embed || (stage.head && m.tie_embeddings)) state += ceil_div(V * C, dp);
  return state;
}

}  // namespace

MemoryEstimate estimate_memory(const RunConfig& cfg, const GridShape& shape) {
  const ModelConfig& m = cfg.model;
  const int64_t pp = std::max<int64_t>(shape.pp, 1), dp = std::max<int64_t>(shape.dp, 1);
  const int64_t ep = std::max<int64_t>(shape.ep, 1), edp = std::max<int64_t>(dp / ep, 1), world = pp * dp;
  const ExpertSlice local_experts = rank_experts(m, 0, ep);
  const int64_t B = cfg.train.micro_batch;
  const double N = static_cast<double>(B) * static_cast<double>(m.seq_len), f4 = sizeof(float);
  const bool fp8 = is_fp8(cfg.precision.recipe) && cfg.precision.fp8_activations;
  RowOptions rows;
  rows.ep = ep, rows.dp = dp, rows.shm = ep > 1 && cfg.parallel.transport == Transport::shm;
  rows.fp8_activations = fp8, rows.fp8_block = cfg.precision.recipe == Recipe::fp8_block;
  const DispatchDtype out = cfg.parallel.dispatch_dtype;
  rows.out_packed = out == DispatchDtype::fp8    ? 1.0 + 4.0 / 128  // codes and a scale per 128
                    : out == DispatchDtype::bf16 ? 2.0
                                                 : 0.0;
  const bool back16 = cfg.parallel.combine_dtype == CombineDtype::bf16 ||
                      (cfg.parallel.combine_dtype == CombineDtype::automatic && out != DispatchDtype::fp32);
  rows.back_packed = back16 ? 2.0 : 0.0;
  const ParamCount full = count_params(m);

  std::unique_ptr<PipelinePlan> plan;
  if (pp > 1) plan = std::make_unique<PipelinePlan>(plan_pipeline(cfg, pp));
  const bool recompute = pp > 1 && cfg.parallel.recompute == Recompute::full;

  MemoryEstimate best;
  for (int64_t r = 0; r < pp; ++r) {
    MemoryEstimate e;
    e.pp_rank = r;
    StageSpec stage;
    std::vector<StageChunk> chunks;
    double saved_inputs = 0;  // recompute: each stage input held while its micro-batch is in flight
    if (plan) {
      stage = plan->stage_spec(r);
      for (int64_t c = 0; c < plan->v; ++c) {
        const int64_t st = c * pp + r;
        const int64_t peak = plan->validation.peak_in_flight_chunk[static_cast<size_t>(r)][static_cast<size_t>(c)];
        chunks.push_back({plan->bounds[static_cast<size_t>(st)], plan->bounds[static_cast<size_t>(st + 1)], st == 0,
                          st == plan->stages() - 1, recompute ? 1 : std::max<int64_t>(1, peak)});
        if (recompute && st > 0) saved_inputs += static_cast<double>(peak) * N * static_cast<double>(m.d_model) * f4;
      }
    } else {
      chunks.push_back(StageChunk{});
    }
    const ParamCount pc = count_params(m, local_experts, stage);
    e.params_rank = pc.total;
    e.embed_head = pc.embed_head;
    e.expert_params = pc.expert;
    const int64_t state = cfg.parallel.zero1 ? zero1_state(m, stage, local_experts, dp, edp) : pc.total;
    e.params = f4 * static_cast<double>(pc.total);
    // The gradient buffer, and with ZeRO-1 the reduce-scattered shard.
    e.grads = f4 * static_cast<double>(pc.total + (cfg.parallel.zero1 ? state : 0));
    e.optimizer = 2.0 * (cfg.precision.moments == Moments::bf16 ? 2.0 : f4) * static_cast<double>(state);
    for (const StageChunk& run : chunks) {
      const ActivationBytes a = estimate_activations(m, B, run, rows);
      e.activations += a.arena + a.fp8;
      e.expert_rows += a.expert_rows + a.moe_scratch;
      if (run.head) e.logits += f4 * N * static_cast<double>(m.vocab_size) * static_cast<double>(run.slots);
    }
    e.activations += saved_inputs + 2.0 * N * sizeof(int32_t);  // the trainer's inputs and targets
    // Checkpoint writers: every tensor goes to the least loaded rank that
    // holds it, biggest first, so no rank writes more than an even share
    // plus the largest tensor, nor more than it holds. A writer keeps
    // weights and both moments staged (async saves within staging_mb) and,
    // with ZeRO-1 or BF16 moments, a gathered FP32 copy of the moments.
    const double written = world == 1 ? static_cast<double>(pc.total)
                                      : std::min(static_cast<double>(pc.total),
                                                 std::ceil(static_cast<double>(full.total) / static_cast<double>(world)) +
                                                     static_cast<double>(full.largest));
    if (cfg.checkpoint.async && 3 * f4 * written <= static_cast<double>(cfg.checkpoint.staging_mb) * 1048576.0)
      e.staging += 3 * f4 * written;
    if (cfg.parallel.zero1 || cfg.precision.moments == Moments::bf16) e.staging += 2 * f4 * written;
    if (r == 0 || e.total() > best.total()) best = e;
  }
  return best;
}

// ---------------------------------------------------------------- available memory

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return in ? ss.str() : std::string();
}

// The number after `key` in "key value" lines (memory.stat, /proc/meminfo).
double field(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string k;
  double v = 0;
  while (in >> k) {
    if (k == key && in >> v) return v;
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

double number(const std::string& text) {
  if (text.empty() || text.rfind("max", 0) == 0) return -1;  // cgroup v2 "max": no limit
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  return end == text.c_str() ? -1 : v;
}

// What a cgroup lets its processes still allocate: limit - usage, counting
// the inactive page cache (which the kernel reclaims) as free, as `docker
// stats` does. < 0: no limit here.
double cgroup_room(double limit, double usage, double inactive) {
  if (limit < 0 || limit >= 0x1p62 || usage < 0) return -1;  // v1 "unlimited" is ~2^63
  return std::max(0.0, limit - usage + std::max(0.0, inactive));
}

}  // namespace

MemoryAvailable available_memory(const std::string& root) {
  MemoryAvailable out;
  const double kb = field(slurp(root + "/proc/meminfo"), "MemAvailable:");
  if (kb >= 0) out = {kb * 1024.0, "MemAvailable"};
  auto consider = [&](double room, const std::string& what) {
    if (room >= 0 && (out.bytes < 0 || room < out.bytes)) out = {room, what};
  };
  std::istringstream lines(slurp(root + "/proc/self/cgroup"));
  for (std::string line; std::getline(lines, line);) {
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string id = line.substr(0, a), ctl = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    namespace fs = std::filesystem;
    if (id == "0" && ctl.empty()) {
      // cgroup v2: every level from this one up to the root may limit us.
      for (fs::path p = path; !p.empty(); p = p.parent_path()) {
        const std::string dir = root + "/sys/fs/cgroup" + (p == "/" ? std::string() : p.string());
        const std::string stat = slurp(dir + "/memory.stat");
        consider(cgroup_room(number(slurp(dir + "/memory.max")), number(slurp(dir + "/memory.current")),
                             field(stat, "inactive_file")),
                 "cgroup memory.max");
        if (p == p.parent_path()) break;
      }
    } else if (("," + ctl + ",").find(",memory,") != std::string::npos) {
      // cgroup v1: memory.stat's hierarchical limit already takes the
      // ancestors into account. In a container the hierarchy is often
      // mounted at the group itself, so try the path, then the mount.
      std::string dir = root + "/sys/fs/cgroup/memory" + (path == "/" ? std::string() : path);
      if (!fs::exists(dir + "/memory.usage_in_bytes")) dir = root + "/sys/fs/cgroup/memory";
      const std::string stat = slurp(dir + "/memory.stat");
      double limit = number(slurp(dir + "/memory.limit_in_bytes"));
      const double hier = field(stat, "hierarchical_memory_limit");
      if (hier >= 0 && (limit < 0 || hier < limit)) limit = hier;
      consider(cgroup_room(limit, number(slurp(dir + "/memory.usage_in_bytes")), field(stat, "total_inactive_file")),
               "cgroup memory.limit_in_bytes");
    }
  }
  // An address-space limit (ulimit -v, RLIMIT_AS) caps what this process
  // can map whatever the machine has: the room is the limit less what is
  // mapped already (VmSize). Only for the machine itself (root ""): a test
  // root describes another machine.
  struct rlimit as{};
  if (root.empty() && getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    const double vm_kb = field(slurp("/proc/self/status"), "VmSize:");
    if (vm_kb >= 0)
      consider(std::max(0.0, static_cast<double>(as.rlim_cur) - vm_kb * 1024.0), "the address-space limit (ulimit -v)");
  }
  return out;
}

bool memory_check_skipped() {
  const char* v = std::getenv("SY_SKIP_MEMORY_CHECK");
  return v && *v && std::string(v) != "0";
}

std::string format_bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} {}", b, unit[u]) : fmt::format("{:.1f} {}", b, unit[u]);
}

namespace {

struct Term {
  const char* name;
  double bytes;
  std::string keys;
};

// The parts of `need` with the keys that drive each; the largest first is the one to name.
std::vector<Term> memory_terms(const RunConfig& cfg, const MemoryEstimate& need) {
  const ModelConfig& m = cfg.model;
  const TrainSection& t = cfg.train;
  // The keys behind the weights: whichever part of the rank's parameters is largest.
  const int64_t rest = need.params_rank - need.embed_head - need.expert_params;
  std::string weights_keys =
      need.embed_head >= std::max(need.expert_params, rest)
          ? fmt::format("model.vocab_size = {}, model.d_model = {}", m.vocab_size, m.d_model)
      : need.expert_params >= rest
          ? fmt::format("{}, moe.expert_hidden = {}, model.d_model = {}, model.n_layers = {}",
                        m.experts_text(), m.moe.expert_hidden, m.d_model, m.n_layers)
          : fmt::format("model.d_model = {}, model.n_layers = {}", m.d_model, m.n_layers);
  const std::string batch =
      t.global_batch != t.micro_batch
          ? fmt::format("model.seq_len = {}, train.micro_batch = {} (of train.global_batch = {})", m.seq_len,
                        t.micro_batch, t.global_batch)
          : fmt::format("model.seq_len = {}, train.micro_batch = train.global_batch = {}", m.seq_len, t.micro_batch);
  return {
      {"weights", need.params, weights_keys},
      {"gradients", need.grads, weights_keys},
      {"AdamW moments", need.optimizer,
       weights_keys + (cfg.parallel.zero1 ? "" : "; parallel.zero1 = true shards them") +
           (cfg.precision.moments == Moments::bf16 ? "" : "; precision.moments = \"bf16\" halves them")},
      {"activations", need.activations,
       batch + (need.logits * 2 >= need.activations ? fmt::format(", model.vocab_size = {}", m.vocab_size)
                                                     : fmt::format(", model.d_model = {}, model.n_layers = {}",
                                                                   m.d_model, m.n_layers))},
      {"expert rows", need.expert_rows,
       batch + fmt::format(", moe.top_k = {}, moe.expert_hidden = {}", m.moe.top_k, m.moe.expert_hidden)},
      {"checkpoint staging", need.staging,
       fmt::format("checkpoint.async = {}, checkpoint.staging_mb = {}", cfg.checkpoint.async ? "true" : "false",
                   cfg.checkpoint.staging_mb)},
  };
}

const Term& largest(const std::vector<Term>& terms) {
  return *std::max_element(terms.begin(), terms.end(), [](const Term& a, const Term& b) { return a.bytes < b.bytes; });
}

// "activations need 1.0 GiB per rank (keys); 1.7 GiB per rank in all (weights ..., expert rows ...)": the
// largest part of `need`, its keys and every part (checkpoint staging too when it is counted).
std::string shortfall(const RunConfig& cfg, const MemoryEstimate& need, bool with_staging) {
  const std::vector<Term> terms = memory_terms(cfg, need);
  const Term& top = largest(terms);
  return fmt::format("{} need {} per rank ({}); {} per rank in all (weights {}, gradients {}, AdamW moments {}, "
                     "activations {}, expert rows {}{}){}",
                     top.name, format_bytes(top.bytes), top.keys, format_bytes(need.total()), format_bytes(need.params),
                     format_bytes(need.grads), format_bytes(need.optimizer), format_bytes(need.activations),
                     format_bytes(need.expert_rows),
                     with_staging ? ", checkpoint staging " + format_bytes(need.staging) : std::string(),
                     cfg.parallel.pp > 1 ? fmt::format(" on pipeline rank {}", need.pp_rank) : std::string());
}

}  // namespace

void check_memory(const RunConfig& cfg, const MemoryEstimate& need, const MemoryAvailable& avail,
                  int64_t ranks_on_node) {
  if (avail.bytes < 0) return;  // nothing known to compare with
  const double per_rank = avail.bytes / static_cast<double>(std::max<int64_t>(ranks_on_node, 1));
  if (need.total() <= per_rank || memory_check_skipped()) return;
  SY_CONFIG_FAIL("{}: not enough memory: {}; this node has {} available ({}), {} for each of its {} rank{}. Lower "
                 "those keys or spread the run over more ranks (SY_SKIP_MEMORY_CHECK=1 runs it anyway)",
                 cfg.source, shortfall(cfg, need, true), format_bytes(avail.bytes), avail.source,
                 format_bytes(per_rank), ranks_on_node, ranks_on_node == 1 ? "" : "s");
}

MemoryEstimate on_device_host(MemoryEstimate need) {
  need.activations = 0, need.expert_rows = 0, need.logits = 0;
  return need;
}

void check_device_memory(const RunConfig& cfg, const MemoryEstimate& need, double device_free, double device_total,
                         int64_t ranks_per_device) {
  MemoryEstimate dev = need;
  dev.staging = 0;  // checkpoint staging is host memory
  const double per_rank = device_free / static_cast<double>(std::max<int64_t>(ranks_per_device, 1));
  if (dev.total() <= per_rank || memory_check_skipped()) return;
  SY_CONFIG_FAIL("{}: run.device = \"{}\": not enough device memory: {}; the device has {} free of {}, {} for "
                 "each of the {} rank{} that share it. Lower those keys or spread the run over more devices "
                 "(SY_SKIP_MEMORY_CHECK=1 runs it anyway)",
                 cfg.source, cfg.run.device, shortfall(cfg, dev, false), format_bytes(device_free),
                 format_bytes(device_total), format_bytes(per_rank), ranks_per_device, ranks_per_device == 1 ? "" : "s");
}

}  // namespace sy
