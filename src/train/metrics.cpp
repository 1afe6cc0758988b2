#include "train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "ckpt/files.h"
#include "core/check.h"
#include "train/trainer.h"

namespace sy {

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

std::string step_line(const StepStats& s, int64_t steps, double eta) {
  std::string imb;
  for (double x : s.imbalance) imb += fmt::format("{}{:.2f}", imb.empty() ? "" : " ", x);
  std::string line = fmt::format(
      "step {:>{}}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {} tok/s | {:.1f} GFLOP/s | imb {} | drop {:.2f}% | eta {}",
      s.step + 1, fmt::format("{}", steps).size(), steps, s.loss, s.lr, s.grad_norm,
      human_count(s.tokens_per_s), s.gflops, imb.empty() ? "-" : imb, 100.0 * s.dropped_frac, human_time(eta));
  if (s.val_loss >= 0) line += fmt::format(" | val {:.4f}", s.val_loss);
  if (!s.fp8.empty()) {
    float act = 0, grad = 0;
    int64_t sat = 0;
    for (const Fp8GroupStats& g : s.fp8) act = std::max(act, g.amax_act), grad = std::max(grad, g.amax_grad), sat += g.saturated;
    line += fmt::format(" | fp8 amax act {:.3g} grad {:.3g} sat {}", act, grad, sat);
  }
  return line;
}

void MetricsWriter::open(const std::string& path) {
  path_ = path;
  bool newline = false;  // a line cut short (a full disk, a kill) must not join the next
  if (std::ifstream in(path, std::ios::binary | std::ios::ate); in && in.tellg() > 0) {
    in.seekg(-1, std::ios::end);
    newline = in.get() != '\n';
  }
  out_.open(path, std::ios::app | std::ios::binary);
  SY_CHECK(out_.good(), "cannot write '{}': {}{}", path, std::strerror(errno), ckpt::io_hint(path, errno));
  if (newline) out_ << '\n';
}

void MetricsWriter::write(const StepStats& s) {
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
  if (s.group_pairs >= 0)
    j["expert_groups"] = {{"pairs", s.group_pairs}, {"per_token", s.groups_per_token}, {"max", s.groups_max}};
  if (s.val_loss >= 0) {
    j["val_loss"] = s.val_loss;
    j["val_capacity_factor"] = s.val_capacity_factor;  // moe.eval_capacity_factor (0: dropless)
  }
  j["times"] = {{"forward", s.times.forward},     {"backward", s.times.backward}, {"grad_wait", s.times.grad_wait},
                {"optimizer", s.times.optimizer}, {"moe_wait", s.times.moe_wait}, {"moe_plan", s.times.moe_plan},
                {"moe_permute", s.times.moe_permute}};  // seconds, each the largest over ranks
  j["activation_mib"] = {{"arena", s.act_mib[0]}, {"expert_rows", s.act_mib[1]}, {"fp8", s.act_mib[2]},
                         {"total", s.act_mib[3]}};
  for (size_t g = 0; g < s.fp8.size(); ++g)
    j["fp8"][to_string(static_cast<Fp8Group>(g))] = {{"amax_act", s.fp8[g].amax_act},
                                                      {"amax_weight", s.fp8[g].amax_weight},
                                                      {"amax_grad", s.fp8[g].amax_grad},
                                                      {"saturated", s.fp8[g].saturated}};
  write_line(j.dump());
}

void MetricsWriter::write_line(const std::string& line) {
  out_ << line << '\n';
  out_.flush();
  SY_CHECK(out_.good(), "cannot append to '{}': {}{}", path_, std::strerror(errno), ckpt::io_hint(path_, errno));
}

}  // namespace sy
