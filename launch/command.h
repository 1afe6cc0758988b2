// What moe-launch runs: hostfiles, and the argv of mpirun or srun, built as
// a vector of strings and executed without a shell, so nothing in a config
// or a flag can become a command.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy::launch {

struct Host {
  std::string name;
  int64_t slots = 1;
};

// OpenMPI hostfile: one host per line, optional "slots=N" (also
// "max_slots=N", ignored), '#' comments, blank lines. Errors name file:line.
std::vector<Host> parse_hostfile(const std::string& text, const std::string& path);
std::vector<Host> read_hostfile(const std::string& path);
int64_t total_slots(const std::vector<Host>& hosts);

struct CommandOptions {
  int64_t np = 1;
  std::string train_binary;              // absolute path of moe-train
  std::vector<std::string> train_args;   // config path, --set ...
  // mpirun
  std::string mpirun = "mpirun";
  std::string hostfile;                  // "" = local
  std::string map_by = "slot", bind_to = "none";
  std::vector<std::string> env;          // names forwarded with -x
  bool as_root = false;                  // add --allow-run-as-root
  bool oversubscribe = false;            // more ranks than slots / cores
  // srun
  std::string srun = "srun";
};

// mpirun -np N [--hostfile F] --map-by M --bind-to B --tag-output [-x VAR]...
//        [--allow-run-as-root] [--oversubscribe --mca mpi_yield_when_idle 1] moe-train ARGS
std::vector<std::string> mpirun_argv(const CommandOptions& o);
// srun --mpi=pmix -n N --kill-on-bad-exit=1 --label --export=ALL moe-train ARGS
std::vector<std::string> srun_argv(const CommandOptions& o);

// Checks a value that becomes one argv element of mpirun: non-empty, not
// starting with '-', only [A-Za-z0-9:,=._/+-]; throws ConfigError naming `key`.
void check_option_value(const std::string& value, const std::string& key);
// Environment variable names: [A-Za-z_][A-Za-z0-9_]*.
void check_env_name(const std::string& name, const std::string& key);

// The command as one line a user can paste (arguments quoted for sh).
std::string shell_quote(const std::vector<std::string>& argv);

// Absolute path of an executable: `name` with a '/' as is, else searched in PATH; "" if none.
std::string find_program(const std::string& name);

}  // namespace sy::launch
