// moe-launch: start a training job on this machine, a hostfile's hosts or a
// Slurm allocation, and keep it alive.
//   moe-launch [CONFIG] [--np N] [--hostfile F] [--set k=v ...] [--dry-run [--json]]
//   moe-launch --report RUN_DIR
// Outside Slurm it runs mpirun; inside an allocation (SLURM_JOB_ID set) srun
// --mpi=pmix. The layout is checked against the world size and the
// preflight (binaries, data, run directory, free disk) runs before anything
// starts; the argv is built without a shell.
// Exit codes: 0 success; 1 launcher failure; 2 bad input (no retry);
// 3 failures beyond launch.max_restarts; 4 stopped by SIGTERM/SIGINT/SIGUSR1
// after a checkpoint (resumable; inside Slurm SIGUSR1 also requeues the job).
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "apps/cli.h"
#include "ckpt/format.h"
#include "core/check.h"
#include "launch/plan.h"
#include "launch/supervisor.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  CLI::App app{"Switchyard: launch a training job and keep it alive"};
  sy::cli::setup(app, "moe-launch");
  sy::launch::LaunchFlags flags;
  bool dry_run = false, as_json = false;
  std::string report_dir;
  app.add_option("config", flags.config, "TOML config (default: the built-in configs/tiny.toml)");
  app.add_option("--np", flags.np, "ranks (default: launch.np, SLURM_NTASKS, the hostfile's slots, or pp x dp)")
      ->default_str("auto")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app.add_option("--hostfile", flags.hostfile, "OpenMPI hostfile (host slots=N per line)");
  app.add_option("--set", flags.sets, "override a config key, passed on to moe-train: --set train.steps=10");
  app.add_option("--train-binary", flags.train_binary, "moe-train to run (default: the one beside moe-launch)");
  app.add_flag("--dry-run", dry_run, "print the plan (layout, memory, FLOPs, checkpoint size, command) and exit");
  app.add_flag("--json", as_json, "with --dry-run: the plan as one JSON object");
  app.add_option("--report", report_dir, "write the run report of RUN_DIR (report/*.png, summary.txt) and exit");
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;
  return sy::cli::guarded("moe-launch", [&]() -> int {
    SY_CONFIG_CHECK(!as_json || dry_run, "--json needs --dry-run (the plan as JSON)");
    if (!report_dir.empty()) return sy::launch::write_report(report_dir) ? 0 : 1;
    if (flags.train_binary.empty()) {
      std::error_code ec;
      fs::path self = fs::read_symlink("/proc/self/exe", ec);
      flags.train_binary = ((ec ? fs::absolute(argv[0]) : self).parent_path() / "moe-train").string();
    }
    flags.train_binary = fs::absolute(flags.train_binary).string();
    sy::launch::Environment env = sy::launch::Environment::current();
    env.run_id_of = sy::ckpt::read_run_id;  // the one HDF5 read the launcher makes (linked here, not in launch/)
    sy::launch::Plan plan = sy::launch::make_plan(flags, env);
    sy::launch::preflight(plan);
    std::cout << (as_json ? sy::launch::describe_json(plan) : sy::launch::describe(plan)) << std::flush;
    if (dry_run) return sy::launch::kExitOk;
    return sy::launch::supervise(plan);
  });
}
