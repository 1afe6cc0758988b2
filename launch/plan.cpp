#include "launch/plan.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "ckpt/dir/latest.h"
#include "core/check.h"
#include "data/dataset.h"
#include "core/mapped_file.h"
#include "estimate/model_size.h"
#include "pipeline/simulate.h"
#include "estimate/pipeline_plan.h"

extern char** environ;

namespace sy::launch {

namespace fs = std::filesystem;

Environment Environment::current() {
  Environment e;
  if (const char* j = std::getenv("SLURM_JOB_ID")) e.slurm_job_id = j;
  if (const char* n = std::getenv("SLURM_NTASKS")) e.slurm_ntasks = std::atoll(n);
  e.cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  e.root = ::geteuid() == 0;
  for (char** p = environ; *p; ++p) {
    std::string kv(*p), name = kv.substr(0, kv.find('='));
    if (name.rfind("OMP_", 0) == 0 || name.rfind("OPENBLAS_", 0) == 0 || name.rfind("SY_", 0) == 0)
      e.forward.push_back(name);
  }
  std::sort(e.forward.begin(), e.forward.end());
  return e;
}

namespace {

std::string absolute(const std::string& p) { return p.empty() ? p : fs::absolute(p).lexically_normal().string(); }

// Where a run with checkpoint.resume = "auto" starts, as moe-train will
// decide it: the line the plan shows ("from scratch", the checkpoint `latest`
// names and its run, or what moe-train will refuse) and that checkpoint.
std::string resume_point(const std::string& dir, bool fallback, const Environment& env, std::string* from) {
  const ckpt::LatestFile l = ckpt::inspect_latest(dir);
  if (l.valid()) {
    *from = (fs::path(dir) / l.name).string();
    const std::string run = env.run_id_of ? env.run_id_of(*from) : std::string();
    return fmt::format("from {}{}", *from, run.empty() ? "" : fmt::format(" (run {})", run));
  }
  const std::vector<int64_t> steps = ckpt::list_steps(dir);
  if (!l.exists && steps.empty()) return "from scratch";
  const std::string what = l.exists ? l.problem : fmt::format("'{}' has no `latest`", dir);
  return fallback ? fmt::format("{}: checkpoint.fallback picks this run's newest intact checkpoint", what)
                  : fmt::format("REFUSED by moe-train: {}, beside {} step director{} (set checkpoint.fallback = true)",
                                what, steps.size(), steps.size() == 1 ? "y" : "ies");
}

double free_bytes(fs::path p) {
  while (!p.empty() && !fs::exists(p)) p = p.parent_path();
  struct statvfs st{};
  if (::statvfs(p.empty() ? "." : p.c_str(), &st) != 0) return -1;
  return static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize);
}

std::string bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} {}", b, unit[u]) : fmt::format("{:.1f} {}", b, unit[u]);
}

std::string count(double n) {
  if (n >= 1e12) return fmt::format("{:.2f}T", n / 1e12);
  if (n >= 1e9) return fmt::format("{:.2f}G", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

}  // namespace

Plan make_plan(const LaunchFlags& flags, const Environment& env) {
  Plan p;
  p.flags = flags;
  p.env = env;
  p.flags.config = absolute(flags.config);
  p.cfg = flags.config.empty() ? parse_config(default_config_text(), "configs/tiny.toml (built in)", flags.sets)
                               : load_config(p.flags.config, flags.sets);
  RunConfig& cfg = p.cfg;
  const LaunchSection& L = cfg.launch;
  p.slurm = !env.slurm_job_id.empty();

  // Hosts and world size.
  std::string hostfile = !flags.hostfile.empty() ? flags.hostfile : L.hostfile;
  SY_CONFIG_CHECK(!(p.slurm && !hostfile.empty()), "inside a Slurm allocation (job {}) the allocation names the "
                  "hosts; drop {}", env.slurm_job_id, flags.hostfile.empty() ? "launch.hostfile" : "--hostfile");
  if (!hostfile.empty()) {
    check_regular_file(hostfile, "hostfile");  // a FIFO would block the read, a directory never parses
    p.hosts = read_hostfile(hostfile);
    hostfile = absolute(hostfile);
  }
  if (flags.np > 0) {
    p.np = flags.np, p.np_source = "--np";
  } else if (L.np > 0) {
    p.np = L.np, p.np_source = "launch.np in " + cfg.source;
  } else if (p.slurm && env.slurm_ntasks > 0) {
    p.np = env.slurm_ntasks, p.np_source = "SLURM_NTASKS";
  } else if (!p.hosts.empty()) {
    p.np = total_slots(p.hosts), p.np_source = "the hostfile's slots";
  } else if (cfg.parallel.dp > 0) {
    p.np = cfg.parallel.pp * cfg.parallel.dp, p.np_source = "parallel.pp x parallel.dp";
  } else {
    p.np = 1, p.np_source = "default (give --np)";
  }
  if (p.slurm && env.slurm_ntasks > 0)
    SY_CONFIG_CHECK(p.np <= env.slurm_ntasks, "{} asks for {} ranks but the Slurm allocation (job {}) has "
                    "SLURM_NTASKS = {}; ask sbatch for more tasks or launch fewer", p.np_source, p.np,
                    env.slurm_job_id, env.slurm_ntasks);
  if (!p.hosts.empty())
    SY_CONFIG_CHECK(p.np <= total_slots(p.hosts), "{} asks for {} ranks but hostfile '{}' has {} slots; add slots "
                    "or hosts, or launch fewer ranks", p.np_source, p.np, hostfile, total_slots(p.hosts));

  // Layout: the same checks moe-train runs, before anything starts.
  const int64_t experts = cfg.model.experts_gcd();
  p.shape = resolve_layout(p.np, {cfg.parallel.pp, cfg.parallel.dp, cfg.parallel.ep}, experts,
                          cfg.source + fmt::format(" with {} ranks ({})", p.np, p.np_source),
                          cfg.model.uniform_experts() ? "" : cfg.model.experts_text());
  cfg.parallel.dp = p.shape.dp;
  cfg.parallel.ep = p.shape.ep;
  cfg.resolve_batch(p.shape.dp);

  // Sizes.
  const ModelConfig& m = cfg.model;
  const ParamCount full = count_params(m), local = count_params(m, rank_experts(m, 0, p.shape.ep));
  p.params_total = full.total;
  p.params_rank = local.total;
  p.active_per_token = active_params_per_token(m, full);
  // Memory per rank: the estimate moe-train checks before it allocates
  // (nothing of the model is allocated here).
  p.memory = estimate_memory(cfg, p.shape);
  p.ckpt_bytes = 3 * 4.0 * static_cast<double>(p.params_total);
  p.ckpt_need = p.ckpt_bytes * static_cast<double>(cfg.checkpoint.keep + 1);
  p.flops_per_token = forward_flops_per_token(m);
  p.tokens_per_step = static_cast<double>(cfg.train.global_batch * m.seq_len);
  p.ckpt_dir = cfg.checkpoint.dir.empty() ? (fs::path(cfg.run_dir()) / "checkpoints").string() : cfg.checkpoint.dir;
  if (cfg.checkpoint.resume == ResumeMode::automatic) {
    p.resume_line = resume_point(p.ckpt_dir, cfg.checkpoint.fallback, env, &p.resume_from);
  } else {
    p.resume_from = cfg.checkpoint.resume == ResumeMode::none ? "" : cfg.checkpoint.resume_dir;
    p.resume_line = p.resume_from.empty() ? "from scratch (checkpoint.resume = \"none\")" : "from " + p.resume_from;
  }

  // Command.
  CommandOptions& c = p.command;
  c.np = p.np;
  c.train_binary = flags.train_binary;
  if (!flags.config.empty()) c.train_args.push_back(p.flags.config);
  for (const std::string& s : flags.sets) c.train_args.insert(c.train_args.end(), {"--set", s});
  check_option_value(L.map_by, "launch.map_by");
  check_option_value(L.bind_to, "launch.bind_to");
  for (const std::string& e : L.env) check_env_name(e, "launch.env");
  c.hostfile = hostfile;
  c.map_by = L.map_by;
  c.bind_to = L.bind_to;
  c.env = env.forward;
  for (const std::string& e : L.env)
    if (std::find(c.env.begin(), c.env.end(), e) == c.env.end()) c.env.push_back(e);
  c.as_root = env.root;
  c.oversubscribe = p.hosts.empty() && p.np > env.cores;
  if (c.oversubscribe)
    p.notes.push_back(fmt::format("{} ranks on {} hardware threads: oversubscribing, with MPI yielding when idle",
                                  p.np, env.cores));
  p.argv = p.slurm ? srun_argv(c) : mpirun_argv(c);
  return p;
}

void preflight(Plan& p) {
  const RunConfig& cfg = p.cfg;
  // Binaries.
  std::error_code bin_ec;
  SY_CONFIG_CHECK(!p.command.train_binary.empty() && fs::is_regular_file(p.command.train_binary, bin_ec) &&
                      ::access(p.command.train_binary.c_str(), X_OK) == 0,
                  "moe-train not found or not an executable file at '{}'", p.command.train_binary);
  const std::string runner = p.argv[0];
  const std::string found = find_program(runner);
  SY_CONFIG_CHECK(!found.empty(), "'{}' not found in PATH ({}); install {}", runner,
                  p.slurm ? "inside a Slurm job" : "outside Slurm", p.slurm ? "slurm-client" : "openmpi-bin");
  p.argv[0] = found;
  // Data: every pattern matches, every file is a regular file and well
  // formed, every shard token is below model.vocab_size (moe-train's own
  // DataFiles, the same checks), and there is a window of seq_len + 1 tokens.
  std::unique_ptr<DataFiles> files;
  try {  // the data's errors name the key and file; the config that set them is named too
    files = std::make_unique<DataFiles>(option_name(cfg.data.format), cfg.data.train, cfg.data.val,
                                        cfg.data.val_fraction, cfg.model.vocab_size);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: {}", cfg.source, e.what()), e.where());
  }
  const DataFiles& data = *files;
  const int64_t len = cfg.model.seq_len + 1;
  SY_CONFIG_CHECK(data.train().windows(len) > 0, "{}: the training data ({}) has no file with at least "
                  "model.seq_len + 1 = {} tokens", cfg.source, data.train().describe(), len);
  if (cfg.train.val_every > 0)
    SY_CONFIG_CHECK(data.val().windows(len) > 0, "{}: validation is on but the validation data ({}) has no window "
                    "of {} tokens", cfg.source, data.val().describe(), len);
  // Memory: with every rank on this machine (no hostfile, no Slurm) the
  // estimate can be held against what it has (a device run's host share: its
  // activations are device memory, which each moe-train checks); elsewhere
  // each moe-train checks its own node before it allocates.
  if (p.hosts.empty() && !p.slurm)
    check_memory(cfg, cfg.run.device == "cpu" ? p.memory : on_device_host(p.memory), available_memory(), p.np);
  // A writable run directory (logs, heartbeats, metrics) and checkpoint directory.
  for (const std::string& dir : {cfg.run_dir(), p.ckpt_dir}) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    SY_CONFIG_CHECK(!ec, "cannot create directory '{}': {}", dir, ec.message());
    const fs::path probe = fs::path(dir) / fmt::format(".moe-launch-probe-{}", ::getpid());
    {
      std::ofstream f(probe);
      f << "probe\n";
      SY_CONFIG_CHECK(f.good(), "directory '{}' is not writable", dir);
    }
    fs::remove(probe, ec);
  }
  // Free disk for keep + 1 checkpoints (the one being written).
  p.disk_free = free_bytes(p.ckpt_dir);
  if (p.disk_free >= 0)
    SY_CONFIG_CHECK(p.disk_free >= p.ckpt_need, "not enough free disk for checkpoints in '{}': {} free, {} needed "
                    "({} per checkpoint x (checkpoint.keep = {} + 1 being written)); free space, lower "
                    "checkpoint.keep or point checkpoint.dir elsewhere",
                    p.ckpt_dir, bytes(p.disk_free), bytes(p.ckpt_need), bytes(p.ckpt_bytes), cfg.checkpoint.keep);
}

std::string describe(const Plan& p) {
  const RunConfig& cfg = p.cfg;
  const ModelConfig& m = cfg.model;
  std::string out;
  out += fmt::format("plan     : {} (run dir {})\n", cfg.source, cfg.run_dir());
  out += fmt::format("launcher : {}\n", p.slurm ? fmt::format("srun inside Slurm job {}", p.env.slurm_job_id)
                                                 : p.hosts.empty() ? std::string("mpirun on this machine")
                                                                   : fmt::format("mpirun on {} hosts from {}",
                                                                                 p.hosts.size(), p.command.hostfile));
  out += fmt::format("world    : {} ranks ({}) = pp {} x dp {}; ep {} ({} experts per rank{}), expert-dp {}\n", p.np,
                     p.np_source, p.shape.pp, p.shape.dp, p.shape.ep, experts_per_rank_text(m, p.shape.ep),
                     m.uniform_experts() ? "" : " by MoE layer", p.shape.dp / p.shape.ep);
  out += fmt::format("model    : {} params, {} active per token, {} on each rank\n", count(p.params_total),
                     count(p.active_per_token), count(p.params_rank));
  out += fmt::format("batch    : {} sequences x {} tokens per step = {} micro-batch x {} accum x {} dp\n",
                     cfg.train.global_batch, m.seq_len, cfg.train.micro_batch, cfg.train.grad_accum, p.shape.dp);
  const MemoryEstimate& e = p.memory;
  out += fmt::format("memory   : per rank ~{}: weights {}, gradients {}, AdamW moments {}{}, activations {}, "
                     "expert rows ~{} (balanced load){}\n",
                     bytes(e.total()), bytes(e.params), bytes(e.grads), bytes(e.optimizer),
                     cfg.parallel.zero1 ? " (ZeRO-1)" : "", bytes(e.activations), bytes(e.expert_rows),
                     e.staging > 0 ? fmt::format(", checkpoint staging {}", bytes(e.staging)) : "");
  out += fmt::format("compute  : {} FLOP per step ({} per token forward, x3 with backward), {} steps\n",
                     count(p.flops_per_step()), count(p.flops_per_token), cfg.train.steps);
  if (p.shape.pp == 1) {
    out += fmt::format("schedule : pp = {}: one stage, {} micro-batch(es) per step, gradients reduced in buckets "
                       "during backward\n", p.shape.pp, cfg.train.grad_accum);
  } else {
    RunConfig c = cfg;
    if (c.parallel.microbatches > 0) c.train.grad_accum = c.parallel.microbatches;
    PipelinePlan pl = plan_pipeline(c, p.shape.pp);
    pipe::Simulation sim = pipe::simulate(pl.schedule, pipe::Costs::uniform(static_cast<int>(pl.pp), static_cast<int>(pl.v),
                                                                            1.0, 1.0, 1.0));
    out += fmt::format("schedule : {} over pp = {} x {} chunk(s), {} micro-batches per step, split {}; simulated bubble "
                       "{:.1f}% (textbook {:.1f}%); `moe-plan` draws the timeline\n{}",
                       pl.schedule.name, pl.pp, pl.v, pl.m, fmt::join(pl.counts, "/"), 100 * sim.mean_bubble(),
                       100 * pipe::analytic_bubble(pl.schedule), pl.describe());
  }
  out += fmt::format("ckpt     : {} each in {}; keep {} + 1 in flight needs {}{}\n", bytes(p.ckpt_bytes), p.ckpt_dir,
                     cfg.checkpoint.keep, bytes(p.ckpt_need),
                     p.disk_free >= 0 ? fmt::format(" ({} free)", bytes(p.disk_free)) : "");
  out += fmt::format("resume   : {}\n", p.resume_line);
  out += fmt::format("faults   : heartbeat timeout {:g} s, up to {} restarts (backoff {:g} s, doubling), grace {:g} s "
                     "for a checkpoint on SIGTERM/SIGINT/SIGUSR1\n",
                     cfg.launch.hang_timeout, cfg.launch.max_restarts, cfg.launch.restart_backoff, cfg.launch.grace);
  for (const std::string& n : p.notes) out += "note     : " + n + "\n";
  out += "command  : " + shell_quote(p.argv) + "\n";
  return out;
}

std::string describe_json(const Plan& p) {
  using json = nlohmann::ordered_json;
  const RunConfig& cfg = p.cfg;
  const ModelConfig& m = cfg.model;
  const MemoryEstimate& e = p.memory;
  json j;
  j["config"] = cfg.source;
  j["run_dir"] = cfg.run_dir();
  j["launcher"] = p.slurm ? "srun" : "mpirun";
  if (p.slurm) j["slurm_job_id"] = p.env.slurm_job_id;
  if (!p.hosts.empty()) j["hostfile"] = p.command.hostfile;
  j["world"] = {{"ranks", p.np}, {"source", p.np_source}, {"hosts", p.hosts.size()}};
  j["layout"] = {{"pp", p.shape.pp}, {"dp", p.shape.dp}, {"ep", p.shape.ep}, {"expert_dp", p.shape.dp / p.shape.ep},
                 {"experts_per_rank", m.moe_layers() > 0 ? m.moe.experts / p.shape.ep : 0},
                 {"zero1", cfg.parallel.zero1}};
  if (!m.uniform_experts()) {  // per-layer counts: experts_per_rank is the largest layer's
    std::vector<int64_t> per;
    for (int64_t l = m.dense_layers; l < m.n_layers; ++l) per.push_back(m.experts_at(l) / p.shape.ep);
    j["layout"]["experts_per_rank_by_layer"] = per;
  }
  j["model"] = {{"parameters", p.params_total}, {"active_per_token", p.active_per_token},
                {"parameters_per_rank", p.params_rank}};
  j["batch"] = {{"global_batch", cfg.train.global_batch}, {"seq_len", m.seq_len},
                {"micro_batch", cfg.train.micro_batch}, {"grad_accum", cfg.train.grad_accum},
                {"tokens_per_step", p.tokens_per_step}};
  j["memory_bytes_per_rank"] = {{"weights", e.params},         {"gradients", e.grads},
                                {"optimizer", e.optimizer},    {"activations", e.activations},
                                {"expert_rows", e.expert_rows}, {"checkpoint_staging", e.staging},
                                {"total", e.total()}};
  j["compute"] = {{"flops_per_step", p.flops_per_step()}, {"forward_flops_per_token", p.flops_per_token},
                  {"steps", cfg.train.steps}};
  if (p.shape.pp > 1) {
    RunConfig c = cfg;
    if (c.parallel.microbatches > 0) c.train.grad_accum = c.parallel.microbatches;
    PipelinePlan pl = plan_pipeline(c, p.shape.pp);
    pipe::Simulation sim = pipe::simulate(pl.schedule, pipe::Costs::uniform(static_cast<int>(pl.pp), static_cast<int>(pl.v),
                                                                            1.0, 1.0, 1.0));
    j["schedule"] = {{"name", pl.schedule.name}, {"pp", pl.pp}, {"virtual", pl.v}, {"microbatches", pl.m},
                     {"layers_per_stage", pl.counts}, {"simulated_bubble", sim.mean_bubble()},
                     {"textbook_bubble", pipe::analytic_bubble(pl.schedule)}};
  } else {
    j["schedule"] = {{"name", "single-stage"}, {"pp", 1}, {"microbatches", cfg.train.grad_accum}};
  }
  j["checkpoint"] = {{"dir", p.ckpt_dir}, {"bytes", p.ckpt_bytes}, {"keep", cfg.checkpoint.keep},
                     {"bytes_needed", p.ckpt_need}, {"disk_free", p.disk_free >= 0 ? json(p.disk_free) : json(nullptr)}};
  j["resume"] = p.resume_from.empty() ? json(nullptr) : json(p.resume_from);
  j["resume_line"] = p.resume_line;
  j["faults"] = {{"hang_timeout", cfg.launch.hang_timeout}, {"max_restarts", cfg.launch.max_restarts},
                 {"restart_backoff", cfg.launch.restart_backoff}, {"grace", cfg.launch.grace}};
  j["notes"] = p.notes;
  j["argv"] = p.argv;
  return j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace sy::launch
