#include "comm/watchdog.h"

#include "comm/mpi/mpi_comm.h"
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "comm/comm.h"

namespace sy::watchdog {

namespace fs = std::filesystem;

namespace {

double wall_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

struct State {
  WatchdogConfig cfg;
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool running = false;
  std::string host;
  // Written by the main thread under mu.
  int64_t step = -1;
  std::string phase = "start";
  std::string op, group;
  std::vector<int> members;
  double op_start = 0;
  bool in_op = false;
};

State& state() {
  static State s;
  return s;
}

std::string rank_file(const std::string& dir, int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "rank_%05d.json", rank);
  return (fs::path(dir) / name).string();
}

void write_heartbeat(State& s, double now) {
  nlohmann::json j;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    j = {{"rank", s.cfg.rank}, {"host", s.host}, {"pid", ::getpid()}, {"step", s.step}, {"phase", s.phase},
         {"op", s.in_op ? s.op : ""}, {"group", s.in_op ? s.group : ""},
         {"op_seconds", s.in_op ? now - s.op_start : 0.0}, {"time", now}};
  }
  std::string path = rank_file(s.cfg.dir, s.cfg.rank), tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << '\n';
    if (!out.good()) return;  // a full disk must not kill training; the next beat retries
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
}

std::string describe_peers(const State& s, const std::vector<int>& members, double now) {
  if (s.cfg.dir.empty()) return "  (no heartbeat directory: peers unknown)\n";
  std::ostringstream os;
  double stale = std::max(3.0 * s.cfg.interval, 2.5);  // about three missed beats
  int named = 0, silent = 0, busy = 0;
  // Fresh members by host, for hosts other than this one: when no member is
  // silent or busy, every member is blocked waiting (on the same operation,
  // or still in an earlier one whose messages did not arrive), which is what
  // a network fault between hosts looks like with heartbeats on a shared
  // file system; those ranks are named with their hosts.
  std::map<std::string, std::vector<int>> elsewhere;
  for (int r : members) {
    if (r == s.cfg.rank) continue;
    std::ifstream in(rank_file(s.cfg.dir, r));
    nlohmann::json j;
    try {
      if (in.good()) in >> j;
    } catch (const std::exception&) {
      j = nullptr;
    }
    if (j.is_null() || !j.contains("time")) {
      os << fmt::format("  rank {}: no heartbeat at all (never started, or dead before its first beat)\n", r);
      ++named, ++silent;
      continue;
    }
    double age = now - j["time"].get<double>();
    const std::string host = j["host"].get<std::string>(), op = j["op"].get<std::string>();
    std::string where = fmt::format("step {} in {}{}", j["step"].get<int64_t>(), j["phase"].get<std::string>(),
                                    op.empty() ? std::string() : fmt::format(" / {} on {}", op, j["group"].get<std::string>()));
    // How long the peer had been blocked in its operation when it last beat.
    const double blocked = op.empty() ? 0.0 : j.value("op_seconds", 0.0);
    if (age > stale) {
      os << fmt::format("  rank {} (host {}, pid {}): SILENT for {:.0f} s - dead or stopped; last seen at {}\n", r,
                        host, j["pid"].get<int64_t>(), age, where);
      ++named, ++silent;
      continue;
    }
    if (op != s.op || j["group"].get<std::string>() != s.group) {
      if (blocked > stale) {
        // Fresh but stuck in another operation for seconds: waiting on
        // messages too (an earlier operation that never completed), not busy.
        os << fmt::format("  rank {} (host {}): alive but blocked for {:.0f} s at {}\n", r, host, blocked, where);
      } else {
        os << fmt::format("  rank {} (host {}): alive but elsewhere, at {}\n", r, host, where);
        ++busy;
      }
      ++named;
    }
    if (host != s.host) elsewhere[host].push_back(r);
  }
  if (silent == 0 && busy == 0) {
    os << (named == 0 ? "  every member's heartbeat is fresh and in the same operation"
                      : "  no member is silent or busy: all are blocked waiting");
    if (elsewhere.empty()) {
      os << " (a slow network?)\n";
    } else {
      os << "; members on other hosts:";
      bool first = true;
      for (const auto& [host, ranks] : elsewhere) {
        os << (first ? " " : ", ") << fmt::format("host {} (rank{} {})", host, ranks.size() == 1 ? "" : "s",
                                                   fmt::join(ranks, ", "));
        first = false;
      }
      os << fmt::format(": a slow or broken network between this host ({}) and {}?\n", s.host,
                        elsewhere.size() == 1 ? "that one" : "those");
    }
  }
  return os.str();
}

void loop() {
  State& s = state();
  // The first beat after one interval (stop() writes a last one, so a run
  // shorter than an interval still says where each rank ran). Until a rank's
  // first beat the launcher names it from what mpirun says about it.
  std::unique_lock<std::mutex> lk(s.mu);
  while (!s.stop) {
    s.cv.wait_for(lk, std::chrono::duration<double>(s.cfg.interval));
    if (s.stop) break;
    double now = wall_now();
    bool expired = s.in_op && s.cfg.timeout > 0 && now - s.op_start > s.cfg.timeout;
    lk.unlock();
    if (!s.cfg.dir.empty()) write_heartbeat(s, now);
    if (expired) {
      std::string op, group;
      std::vector<int> members;
      int64_t step;
      {
        std::lock_guard<std::mutex> g(s.mu);
        op = s.op, group = s.group, members = s.members, step = s.step;
      }
      std::string msg = fmt::format(
          "watchdog: rank {} (host {}) has waited {:.0f} s (limit parallel.timeout = {:.0f} s) in {} on group {} "
          "at step {}; its members:\n{}aborting the job.\n",
          s.cfg.rank, s.host, now - s.op_start, s.cfg.timeout, op, group, step, describe_peers(s, members, now));
      std::cerr << msg << std::flush;
      if (MpiEnv::thread_multiple()) mpi_abort_world(kWatchdogExitCode);
      std::_Exit(kWatchdogExitCode);  // the launcher (mpirun / srun) ends the others
    }
    lk.lock();
  }
}

}  // namespace

void start(const WatchdogConfig& cfg) {
  State& s = state();
  stop();
  s.cfg = cfg;
  s.host = host_name();
  s.stop = false;
  if (!cfg.dir.empty()) {
    std::error_code ec;
    fs::create_directories(cfg.dir, ec);
  }
  s.running = true;
  s.thread = std::thread(loop);
}

void stop() {
  State& s = state();
  if (!s.running) return;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    s.stop = true;
  }
  s.cv.notify_all();
  s.thread.join();
  s.running = false;
  // A last beat: the step the rank ended at, and, for a run shorter than one
  // interval, where it ran at all.
  if (!s.cfg.dir.empty()) write_heartbeat(s, wall_now());
}

bool running() { return state().running; }

void set_step(int64_t step) {
  std::lock_guard<std::mutex> lk(state().mu);
  state().step = step;
}

void set_phase(const char* phase) {
  std::lock_guard<std::mutex> lk(state().mu);
  state().phase = phase;
}

Scope::Scope(const char* op, const std::string& group, const std::vector<int>& members) : active_(running()) {
  if (!active_) return;
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  s.op = op;
  s.group = group;
  s.members = members;
  s.op_start = wall_now();
  s.in_op = true;
}

Scope::~Scope() {
  if (!active_) return;
  std::lock_guard<std::mutex> lk(state().mu);
  state().in_op = false;
}

}  // namespace sy::watchdog
