#include "launch/command.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "core/mapped_file.h"

namespace sy::launch {

namespace fs = std::filesystem;

// More slots than any node has cores (mpirun would try to start them all).
constexpr long long kMaxSlots = 65536;

std::vector<Host> parse_hostfile(const std::string& text, const std::string& path) {
  std::vector<Host> hosts;
  std::istringstream in(text);
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string name;
    if (!(words >> name)) continue;
    SY_CONFIG_CHECK(name.find('=') == std::string::npos && name[0] != '-',
                    "{}:{}: expected a host name first, got '{}'", path, line_no, name);
    Host h{name, 1};
    for (std::string w; words >> w;) {
      auto eq = w.find('=');
      SY_CONFIG_CHECK(eq != std::string::npos, "{}:{}: expected key=value after the host name, got '{}'", path,
                      line_no, w);
      std::string key = w.substr(0, eq), value = w.substr(eq + 1);
      if (key == "slots" || key == "max_slots" || key == "max-slots") {
        char* end = nullptr;
        long long v = std::strtoll(value.c_str(), &end, 10);
        SY_CONFIG_CHECK(!value.empty() && *end == '\0' && v >= 1 && v <= kMaxSlots,
                        "{}:{}: {} must be an integer from 1 to {}, got '{}'", path, line_no, key, kMaxSlots, value);
        if (key == "slots") h.slots = v;
      } else {
        SY_CONFIG_FAIL("{}:{}: unknown hostfile key '{}' (known: slots, max_slots)", path, line_no, key);
      }
    }
    for (const Host& other : hosts)
      SY_CONFIG_CHECK(other.name != h.name, "{}:{}: host '{}' is listed twice", path, line_no, h.name);
    hosts.push_back(h);
  }
  SY_CONFIG_CHECK(!hosts.empty(), "{}: the hostfile lists no host", path);
  return hosts;
}

std::vector<Host> read_hostfile(const std::string& path) {
  // A regular file of at most 1 MiB (a FIFO would block, /dev/zero never end).
  return parse_hostfile(read_text_file(path, "hostfile", size_t{1} << 20), path);
}

int64_t total_slots(const std::vector<Host>& hosts) {
  int64_t n = 0;
  for (const Host& h : hosts) n += h.slots;
  return n;
}

void check_option_value(const std::string& value, const std::string& key) {
  SY_CONFIG_CHECK(!value.empty(), "{} is empty", key);
  SY_CONFIG_CHECK(value[0] != '-', "{} = \"{}\": a value may not start with '-'", key, value);
  for (char c : value)
    SY_CONFIG_CHECK(std::isalnum(static_cast<unsigned char>(c)) || std::string_view(":,=._/+-").find(c) !=
                        std::string_view::npos,
                    "{} = \"{}\": character '{}' is not allowed (letters, digits and :,=._/+- only)", key, value, c);
}

void check_env_name(const std::string& name, const std::string& key) {
  bool ok = !name.empty() && (std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_');
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
  SY_CONFIG_CHECK(ok, "{}: '{}' is not an environment variable name", key, name);
}

std::vector<std::string> mpirun_argv(const CommandOptions& o) {
  std::vector<std::string> a = {o.mpirun, "-np", std::to_string(o.np)};
  if (!o.hostfile.empty()) a.insert(a.end(), {"--hostfile", o.hostfile});
  a.insert(a.end(), {"--map-by", o.map_by, "--bind-to", o.bind_to, "--tag-output"});
  for (const std::string& e : o.env) a.insert(a.end(), {"-x", e});
  if (o.as_root) a.push_back("--allow-run-as-root");
  if (o.oversubscribe) a.insert(a.end(), {"--oversubscribe", "--mca", "mpi_yield_when_idle", "1"});
  a.push_back(o.train_binary);
  a.insert(a.end(), o.train_args.begin(), o.train_args.end());
  return a;
}

std::vector<std::string> srun_argv(const CommandOptions& o) {
  std::vector<std::string> a = {o.srun, "--mpi=pmix", "-n", std::to_string(o.np), "--kill-on-bad-exit=1",
                                "--label", "--export=ALL", o.train_binary};
  a.insert(a.end(), o.train_args.begin(), o.train_args.end());
  return a;
}

std::string shell_quote(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& s : argv) {
    if (!out.empty()) out += ' ';
    bool plain = !s.empty();
    for (char c : s)
      plain = plain && (std::isalnum(static_cast<unsigned char>(c)) ||
                        std::string_view("@%+=:,./_-").find(c) != std::string_view::npos);
    if (plain) {
      out += s;
    } else {
      out += '\'';
      for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

std::string find_program(const std::string& name) {
  if (name.empty()) return "";
  if (name.find('/') != std::string::npos)
    return ::access(name.c_str(), X_OK) == 0 ? fs::absolute(name).string() : "";
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string d; std::getline(dirs, d, ':');) {
    fs::path p = fs::path(d.empty() ? "." : d) / name;
    if (::access(p.c_str(), X_OK) == 0 && fs::is_regular_file(p)) return fs::absolute(p).string();
  }
  return "";
}

}  // namespace sy::launch
