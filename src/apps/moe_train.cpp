// moe-train: train a model from a TOML config (or the built-in tiny one).
//   moe-train [CONFIG] [--set section.key=value ...] [--print-config] [--help-config]
// Exit codes: 0 success; 1 a failure (divergence, I/O, MPI); 2 bad input
// (config, flags, data files, an unusable checkpoint): running again will not
// help; 3 the watchdog aborted a stuck collective; 4 stopped by SIGTERM/SIGINT
// after saving a checkpoint (resumable).
#include <iostream>

#include "apps/cli.h"
#include "comm/comm.h"
#include "core/check.h"
#include "core/cpu.h"
#include "kernels/cpu/blas.h"
#include "config/run.h"
#include "apps/device.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);  // may re-exec; must come before MPI_Init
  sy::flush_denormals();
  CLI::App app{"Switchyard: train a Mixture-of-Experts transformer"};
  sy::cli::setup(app, "moe-train");
  std::string config_path;
  std::vector<std::string> overrides;
  bool print_config = false, help_config = false;
  app.add_option("config", config_path, "TOML config (default: the built-in configs/tiny.toml)");
  app.add_option("--set", overrides, "override a key: --set train.steps=10 (repeatable)");
  app.add_flag("--print-config", print_config, "print the resolved configuration and exit");
  app.add_flag("--help-config", help_config, "list every config key and exit");
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;  // before MPI: every rank exits alike

  sy::MpiEnv mpi(&argc, &argv);
  sy::Comm world = sy::Comm::world();
  auto fail = [&](const char* kind, const std::string& what, const std::string& where, int code) {
    std::cerr << fmt::format("moe-train: {}{}: {}\n", kind,
                             world.size() > 1 ? fmt::format(" on rank {}", world.rank()) : "", what)
              << (where.empty() ? "" : fmt::format("  (raised at {})\n", where)) << std::flush;
    if (world.size() > 1) world.abort(code);
    return code;
  };
  try {
    if (help_config) {
      if (world.rank() == 0) std::cout << sy::describe_keys();
      return 0;
    }
    sy::RunConfig cfg = config_path.empty()
                            ? sy::parse_config(sy::default_config_text(), "configs/tiny.toml (built in)", overrides)
                            : sy::load_config(config_path, overrides);
    if (print_config) {
      if (world.rank() == 0) std::cout << sy::to_toml(cfg);
      return 0;
    }
    if (cfg.run.device != "cpu") {  // opens the CUDA backend (or names why there is none), as moe-generate does
      try {
        sy::cli::open_device(cfg.run.device);
      } catch (const sy::ConfigError& e) {
        throw sy::ConfigError(fmt::format("{}: run.device = \"{}\": {}", cfg.source, cfg.run.device, e.what()), e.where());
      }
    }
    sy::Trainer trainer(std::move(cfg), world);
    return trainer.train();
  } catch (const sy::ConfigError& e) {
    return fail("bad input", e.what(), e.where(), sy::cli::kExitBadInput);
  } catch (const sy::Error& e) {
    return fail("error", e.what(), e.where(), sy::cli::kExitError);
  } catch (const std::filesystem::filesystem_error& e) {
    const int code = sy::cli::filesystem_exit_code(e.code());
    return fail(code == sy::cli::kExitBadInput ? "bad input" : "error", e.what(), "", code);
  } catch (const std::bad_alloc&) {
    return fail("error", "out of memory", "", sy::cli::kExitError);
  } catch (const std::exception& e) {
    return fail("error", e.what(), "", sy::cli::kExitError);
  } catch (...) {
    return fail("error", "an unknown exception", "", sy::cli::kExitError);
  }
}
