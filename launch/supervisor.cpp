#include "launch/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "ckpt/dir/latest.h"
#include "core/check.h"

#ifndef SY_REPORT_SCRIPT
#define SY_REPORT_SCRIPT ""
#endif

namespace sy::launch {

namespace fs = std::filesystem;

std::optional<double> RestartPolicy::on_failure(const std::string& what) {
  failures_.push_back(what);
  if (restarts_ >= max_) return std::nullopt;
  double wait = backoff_;
  for (int64_t i = 0; i < restarts_; ++i) wait *= 2;
  ++restarts_;
  return std::min(wait, 600.0);
}

TaggedLine parse_tagged(const std::string& line, bool srun) {
  static const std::regex mpi_re(R"(^\[\d+,(\d+)\]<std(?:out|err)>:(.*)$)");
  static const std::regex srun_re(R"(^\s*(\d+): (.*)$)");
  std::smatch m;
  if (std::regex_match(line, m, srun ? srun_re : mpi_re)) return {std::stoi(m[1].str()), m[2].str()};
  return {-1, line};
}

std::string progress_line(const std::string& s) {
  static const std::regex re(R"(^step\s+(\d+)/(\d+) \| loss ([0-9.]+) .*\| (\S+) tok/s .*\| eta (\S+))");
  std::smatch m;
  if (!std::regex_search(s, m, re)) return "";
  std::string val;
  static const std::regex val_re(R"(\| val ([0-9.]+))");
  std::smatch v;
  if (std::regex_search(s, v, val_re)) val = " | val " + v[1].str();
  return fmt::format("step {}/{} | loss {}{} | {} tok/s | eta {}", m[1].str(), m[2].str(), m[3].str(), val,
                     m[4].str(), m[5].str());
}

std::optional<Heartbeat> read_heartbeat(const std::string& dir, int rank) {
  const fs::path path = fs::path(dir) / fmt::format("rank_{:05d}.json", rank);
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  Heartbeat h;
  h.rank = rank;
  h.host = j.value("host", "");
  h.phase = j.value("phase", "");
  h.op = j.value("op", "");
  h.pid = j.value("pid", int64_t{0});
  h.step = j.value("step", int64_t{-1});
  struct timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  h.age = static_cast<double>(now.tv_sec - st.st_mtim.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec - st.st_mtim.tv_nsec);
  return h;
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::atomic<int> g_signal{0};
std::string sig_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : fmt::format("signal {}", sig);
}
void on_signal(int sig) { g_signal = sig; }

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buf;
}

std::string hostname() {
  char buf[256] = {};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "unknown status";
}

int64_t latest_step(const std::string& ckpt_dir) { return ckpt::parse_step_dir(ckpt::read_latest(ckpt_dir)); }

// What `latest` names, and whose it is: a restart may resume from `latest`
// only once this job has committed a checkpoint there.
std::string latest_identity(const std::string& ckpt_dir, const Environment& env) {
  const std::string name = ckpt::read_latest(ckpt_dir);
  if (name.empty()) return "";
  return name + " " + (env.run_id_of ? env.run_id_of((fs::path(ckpt_dir) / name).string()) : std::string());
}

// One attempt's child process and its output.
class Job {
 public:
  Job(const std::vector<std::string>& argv) {
    int out[2], err[2];
    SY_CHECK(::pipe(out) == 0 && ::pipe(err) == 0, "pipe: {}", std::strerror(errno));
    pid_ = ::fork();
    SY_CHECK(pid_ >= 0, "fork: {}", std::strerror(errno));
    if (pid_ == 0) {
      ::setpgid(0, 0);  // its own process group: terminal signals reach only the launcher
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::close(out[0]), ::close(out[1]), ::close(err[0]), ::close(err[1]);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      std::fprintf(stderr, "moe-launch: cannot run %s: %s\n", args[0], std::strerror(errno));
      ::_exit(127);
    }
    ::setpgid(pid_, pid_);
    ::close(out[1]), ::close(err[1]);
    fds_[0] = out[0], fds_[1] = err[0];
  }
  ~Job() {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  pid_t pid() const { return pid_; }
  bool exited() const { return exited_; }
  int status() const { return status_; }

  // Waits up to `ms` for output; returns complete lines (stream 0 stdout, 1 stderr).
  std::vector<std::pair<int, std::string>> read(int ms) {
    std::vector<std::pair<int, std::string>> lines;
    pollfd p[2];
    int n = 0;
    for (int i = 0; i < 2; ++i)
      if (fds_[i] >= 0) p[n++] = {fds_[i], POLLIN, 0};
    if (n > 0 && ::poll(p, static_cast<nfds_t>(n), ms) > 0) {
      for (int k = 0; k < n; ++k) {
        if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        int i = p[k].fd == fds_[0] ? 0 : 1;
        char buf[65536];
        ssize_t got = ::read(fds_[i], buf, sizeof(buf));
        if (got <= 0) {
          if (!partial_[i].empty()) lines.emplace_back(i, partial_[i]), partial_[i].clear();
          ::close(fds_[i]);
          fds_[i] = -1;
          continue;
        }
        partial_[i].append(buf, static_cast<size_t>(got));
        size_t pos;
        while ((pos = partial_[i].find('\n')) != std::string::npos) {
          lines.emplace_back(i, partial_[i].substr(0, pos));
          partial_[i].erase(0, pos + 1);
        }
      }
    } else if (n == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    if (!exited_) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) exited_ = true, status_ = st;
    }
    return lines;
  }
  bool drained() const { return fds_[0] < 0 && fds_[1] < 0; }
  void signal(int sig) const {
    if (!exited_) ::kill(pid_, sig);
  }
  void signal_group(int sig) const { ::kill(-pid_, sig); }

 private:
  pid_t pid_ = -1;
  int fds_[2] = {-1, -1};
  std::string partial_[2];
  bool exited_ = false;
  int status_ = 0;
};

class Supervisor {
 public:
  explicit Supervisor(const Plan& p)
      : plan_(p), run_dir_(p.cfg.run_dir()), log_dir_((fs::path(run_dir_) / "logs").string()),
        hb_dir_((fs::path(run_dir_) / "heartbeat").string()), tty_(::isatty(1) != 0), host_(hostname()) {
    fs::create_directories(log_dir_);
    launcher_log_.open(fs::path(log_dir_) / "launcher.log", std::ios::app);
    attempts_.open(fs::path(log_dir_) / "attempts.jsonl", std::ios::app);
  }

  int run() {
    const LaunchSection& L = plan_.cfg.launch;
    RestartPolicy policy(L.max_restarts, L.restart_backoff);
    latest_at_start_ = latest_identity(plan_.ckpt_dir, plan_.env);
    struct sigaction sa{}, old[4];
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[4] = {SIGTERM, SIGINT, SIGUSR1, SIGHUP};
    for (int i = 0; i < 4; ++i) ::sigaction(sigs[i], &sa, &old[i]);
    ::signal(SIGPIPE, SIG_IGN);
    int code = kExitError;
    for (int attempt = 1;; ++attempt) {
      Outcome o = run_attempt(attempt);
      record(attempt, o);
      if (o.kind == Outcome::ok) {
        say(fmt::format("training finished ({} attempt{})", attempt, attempt > 1 ? "s" : ""));
        code = kExitOk;
        break;
      }
      if (o.kind == Outcome::bad_input) {
        say("moe-train rejected its input (exit 2): not restarting; see the message above and logs/rank_00000.log");
        code = kExitBadInput;
        break;
      }
      if (o.kind == Outcome::stopped) {
        say(fmt::format("stopped by {} after a checkpoint (step {}); rerun the same command to resume", o.signal_name,
                        latest_step(plan_.ckpt_dir)));
        code = kExitStopped;
        if (o.requeue) requeue();
        break;
      }
      // A failure or a hang (a hang was reported when it was detected).
      if (o.kind == Outcome::failed) say(o.report);
      std::optional<double> wait = policy.on_failure(o.report);
      if (!wait) {
        std::string list;
        for (size_t i = 0; i < policy.failures().size(); ++i)
          list += fmt::format("\n  attempt {}: {}", i + 1, policy.failures()[i]);
        say(fmt::format("giving up: {} failures, more than launch.max_restarts = {} restarts allow; the last intact "
                        "checkpoint is step {} in {}:{}",
                        policy.failures().size(), L.max_restarts, latest_step(plan_.ckpt_dir), plan_.ckpt_dir, list));
        code = kExitExhausted;
        break;
      }
      say(fmt::format("restart {} of {} in {:.0f} s from the latest checkpoint (step {})", policy.restarts(),
                      L.max_restarts, *wait, latest_step(plan_.ckpt_dir)));
      auto t0 = Clock::now();
      while (since(t0) < *wait && g_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (g_signal != 0) {
        say(fmt::format("{} during the restart backoff: not restarting", sig_name(g_signal.load())));
        code = kExitStopped;
        break;
      }
    }
    for (int i = 0; i < 4; ++i) ::sigaction(sigs[i], &old[i], nullptr);
    if (L.report) write_report(run_dir_);
    return code;
  }

 private:
  struct Outcome {
    enum Kind { ok, bad_input, stopped, failed, hung } kind = failed;
    std::string report, signal_name;
    bool requeue = false;
    std::string status;
    double seconds = 0, first_step = -1;
    double ended_at = 0;  // wall clock (s since the epoch) when the job ended or the hang was detected
  };

  void say(const std::string& msg) {
    clear_progress();
    std::cerr << "moe-launch: " << msg << std::endl;
    launcher_log_ << "[" << timestamp() << "] " << msg << std::endl;
  }

  void clear_progress() {
    if (tty_ && progress_shown_) {
      std::cout << "\r\033[K" << std::flush;
      progress_shown_ = false;
    }
  }

  void show_rank0(const std::string& text, bool err) {
    std::string prog = tty_ && !err ? progress_line(text) : "";
    if (!prog.empty()) {
      std::cout << "\r\033[K" << prog << std::flush;
      progress_shown_ = true;
      return;
    }
    clear_progress();
    (err ? std::cerr : std::cout) << text << std::endl;
  }

  std::ofstream& rank_log(int rank) {
    auto it = rank_logs_.find(rank);
    if (it == rank_logs_.end()) {
      it = rank_logs_.emplace(rank, std::ofstream(fs::path(log_dir_) / fmt::format("rank_{:05d}.log", rank),
                                                  std::ios::app)).first;
      it->second << fmt::format("=== attempt {} at {} ===\n", attempt_, timestamp());
    }
    return it->second;
  }

  void handle(int stream, const std::string& line, Outcome& o, Clock::time_point start) {
    TaggedLine t = parse_tagged(line, plan_.slurm);
    if (t.rank >= 0) {
      rank_log(t.rank) << t.text << '\n';
      note_watchdog(t.rank, t.text);
      if (t.rank == 0) {
        rank_log(0).flush();
        if (o.first_step < 0 && t.text.rfind("step ", 0) == 0) o.first_step = since(start);
        show_rank0(t.text, stream == 1);
      }
      return;
    }
    // The launcher program's own lines (mpirun / srun): keep and show.
    launcher_log_ << line << '\n';
    static const std::regex mpi_dead(R"(process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+) \(([^)]*)\))");
    static const std::regex mpi_exit(R"(process rank (\d+) with PID (\d+) on node (\S+) exited with status (\d+))");
    static const std::regex srun_dead(R"(task (\d+): (.*))");
    std::smatch m;
    // mpirun names the rank's node and pid: the report uses them when the
    // rank died before its first heartbeat (which would have named them).
    if (std::regex_search(line, m, mpi_dead))
      dead_.emplace(std::stoi(m[1].str()), Death{fmt::format("died on signal {} ({})", m[4].str(), m[5].str()),
                                                 m[3].str(), std::stol(m[2].str())});
    else if (std::regex_search(line, m, mpi_exit))
      dead_.emplace(std::stoi(m[1].str()),
                    Death{fmt::format("exited with status {}", m[4].str()), m[3].str(), std::stol(m[2].str())});
    else if (plan_.slurm && std::regex_search(line, m, srun_dead))
      dead_.emplace(std::stoi(m[1].str()), Death{m[2].str(), "", 0});
    clear_progress();
    std::cerr << line << std::endl;
  }

  // Keeps the first watchdog report of the attempt: its header line and the
  // member lines after it from the same rank, up to "aborting the job.".
  void note_watchdog(int rank, const std::string& text) {
    static const std::string head = "watchdog: rank ", tail = "; its members:";
    if (watchdog_.empty() && text.rfind(head, 0) == 0) {
      watchdog_ = text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0
                      ? text.substr(0, text.size() - tail.size())
                      : text;
      watchdog_rank_ = rank, watchdog_open_ = true;
    } else if (watchdog_open_ && rank == watchdog_rank_) {
      if (text.rfind("  ", 0) == 0 && watchdog_.size() < 4000)
        watchdog_ += (watchdog_.find(": ", watchdog_.find(" at step ")) == std::string::npos ? ": " : "; ") +
                     text.substr(text.find_first_not_of(' '));
      else
        watchdog_open_ = false;
    }
  }

  struct Death {
    std::string what, host;  // host: "" when the launcher program did not say
    long pid = 0;            // 0: not said (some mpirun versions print PID 0)
  };

  std::string describe_rank(int r, const std::string& what, const std::string& host = "", long pid = 0) {
    auto hb = read_heartbeat(hb_dir_, r);
    if (!hb) {
      std::string where = host.empty() ? "" : pid > 0 ? fmt::format(" (host {}, pid {})", host, pid) : fmt::format(" (host {})", host);
      return fmt::format("rank {}{} {} before its first heartbeat", r, where, what);
    }
    return fmt::format("rank {} (host {}, pid {}) {}; last step {}, last operation {}{}", r, hb->host, hb->pid, what,
                       hb->step + 1, hb->phase, hb->op.empty() ? "" : " / " + hb->op);
  }

  // Stops every process of the job: the program's process group, then any
  // rank on this host still alive (a stopped rank ignores SIGTERM).
  void kill_all(Job& job) {
    job.signal_group(SIGTERM);
    job.signal_group(SIGCONT);
    for (int r = 0; r < plan_.np; ++r)
      if (auto hb = read_heartbeat(hb_dir_, r); hb && hb->host == host_ && hb->pid > 0) ::kill(static_cast<pid_t>(hb->pid), SIGKILL);
    auto t0 = Clock::now();
    while (!job.exited() && since(t0) < 5) job.read(100);
    if (!job.exited()) job.signal_group(SIGKILL);
    while (!job.exited() || !job.drained()) {
      job.read(100);
      if (since(t0) > 30) break;
    }
  }

  Outcome run_attempt(int attempt) {
    attempt_ = attempt;
    rank_logs_.clear();
    dead_.clear();
    watchdog_.clear(), watchdog_rank_ = -1, watchdog_open_ = false;
    const LaunchSection& L = plan_.cfg.launch;
    std::vector<std::string> argv = plan_.argv;
    if (attempt > 1) {
      // Carry on from this job's newest intact checkpoint. Until the job has
      // committed one, start the way the first attempt did (from scratch, or
      // from checkpoint.resume): `latest` may still be another run's.
      if (latest_identity(plan_.ckpt_dir, plan_.env) != latest_at_start_) argv.insert(argv.end(), {"--set", "checkpoint.resume=auto"});
      argv.insert(argv.end(), {"--set", "checkpoint.fallback=true"});
    }
    // Heartbeats of an earlier attempt must not count for this one.
    std::error_code ec;
    for (int r = 0; r < plan_.np; ++r) fs::remove(fs::path(hb_dir_) / fmt::format("rank_{:05d}.json", r), ec);
    for (int r = 0; r < plan_.np; ++r) rank_log(r).flush();  // every rank has its log, with this attempt's header
    say(fmt::format("attempt {}: {}", attempt, shell_quote(argv)));
    Outcome o;
    auto start = Clock::now();
    Job job(argv);
    bool stopping = false, killed = false;
    int stop_sig = 0;
    Clock::time_point stop_at{};
    double last_check = 0;
    Clock::time_point exited_at{};
    bool seen_exit = false;
    while (!job.exited() || !job.drained()) {
      for (auto& [stream, line] : job.read(200)) handle(stream, line, o, start);
      if (job.exited()) {
        if (!seen_exit) seen_exit = true, exited_at = Clock::now();
        if (since(exited_at) > 10) break;  // an orphan still holds the pipe: stop reading it
        continue;
      }
      if (int sig = g_signal.exchange(0)) {
        if (stopping) {
          say(fmt::format("second {}: killing the job now", sig_name(sig)));
          kill_all(job);
          killed = true;
          continue;
        }
        stopping = true;
        stop_sig = sig;
        stop_at = Clock::now();
        say(fmt::format("{} received: asking every rank to finish its step, checkpoint and exit (grace {:g} s)",
                        sig_name(sig), L.grace));
        job.signal(SIGUSR2);  // mpirun and srun forward it to every rank
      }
      if (stopping && !killed && since(stop_at) > L.grace) {
        say(fmt::format("the ranks did not exit within launch.grace = {:g} s: killing them", L.grace));
        kill_all(job);
        killed = true;
        continue;
      }
      const double t = since(start);
      if (!stopping && !killed && t - last_check >= 1.0) {
        last_check = t;
        for (int r = 0; r < plan_.np; ++r) {
          auto hb = read_heartbeat(hb_dir_, r);
          std::string why;
          if (!hb && t > L.start_timeout)
            why = fmt::format("rank {} wrote no heartbeat within launch.start_timeout = {:g} s", r, L.start_timeout);
          else if (hb && hb->age > L.hang_timeout)
            why = describe_rank(r, fmt::format("has written no heartbeat for {:.0f} s (launch.hang_timeout = {:g} s): "
                                               "hung or stopped", hb->age, L.hang_timeout));
          if (!why.empty()) {
            o.kind = Outcome::hung;
            o.ended_at = wall_seconds();
            // After a watchdog abort the ranks are gone but the launcher
            // program did not end the job (mpirun cannot reach a host whose
            // network is down): say what the watchdog saw first.
            o.report = watchdog_.empty() ? "hang detected: " + why
                                         : fmt::format("hang detected: the job did not end after a watchdog abort ({}); {}",
                                                       watchdog_, why);
            say(o.report + "; tearing the job down");
            kill_all(job);
            killed = true;
            break;
          }
        }
      }
    }
    o.seconds = since(start);
    if (o.ended_at == 0) o.ended_at = wall_seconds();
    o.status = describe_status(job.status());
    clear_progress();
    for (auto& [r, f] : rank_logs_) f.flush();
    if (o.kind == Outcome::hung) return o;
    const int code = WIFEXITED(job.status()) ? WEXITSTATUS(job.status()) : -1;
    if (stopping && code == 4) {
      o.kind = Outcome::stopped;
      o.signal_name = sig_name(stop_sig);
      o.requeue = stop_sig == SIGUSR1 && plan_.slurm && L.requeue;
      return o;
    }
    if (code == 0 && !killed) {
      o.kind = Outcome::ok;
      return o;
    }
    if (code == 2) {
      o.kind = Outcome::bad_input;
      return o;
    }
    if (code == 4) {  // someone signalled the ranks directly; they saved and stopped
      o.kind = Outcome::stopped;
      o.signal_name = "a signal to the ranks";
      return o;
    }
    o.kind = Outcome::failed;
    std::string who;
    for (auto& [r, d] : dead_) who += (who.empty() ? "" : "; ") + describe_rank(r, d.what, d.host, d.pid);
    if (stopping)
      o.report = fmt::format("the job did not stop cleanly after {} ({}){}", sig_name(stop_sig), o.status,
                             who.empty() ? "" : ": " + who);
    else
      o.report = fmt::format("the job failed after {:.0f} s ({}){}", o.seconds, o.status,
                             who.empty() ? "" : ": " + who);
    if (!watchdog_.empty()) o.report += "; " + watchdog_;
    if (stopping) {
      o.kind = Outcome::stopped;  // a stop was asked for: no restart
      o.signal_name = sig_name(stop_sig);
      say(o.report);
    }
    return o;
  }

  void record(int attempt, const Outcome& o) {
    static const char* kinds[] = {"ok", "bad_input", "stopped", "failed", "hung"};
    nlohmann::json j = {{"attempt", attempt},           {"outcome", kinds[o.kind]},
                        {"status", o.status},           {"seconds", o.seconds},
                        {"first_step_seconds", o.first_step}, {"report", o.report},
                        {"latest_checkpoint_step", latest_step(plan_.ckpt_dir)}, {"time", timestamp()},
                        {"ended_at", o.ended_at}};
    attempts_ << j.dump() << std::endl;
  }

  void requeue() {
    const std::string scontrol = find_program("scontrol");
    if (scontrol.empty()) {
      say("cannot requeue: scontrol not found");
      return;
    }
    say(fmt::format("requeueing Slurm job {} (it resumes from the checkpoint when it runs again)",
                    plan_.env.slurm_job_id));
    pid_t pid = ::fork();
    if (pid == 0) {
      ::execl(scontrol.c_str(), scontrol.c_str(), "requeue", plan_.env.slurm_job_id.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) say(fmt::format("scontrol requeue {} failed ({})", plan_.env.slurm_job_id, describe_status(st)));
  }

  const Plan& plan_;
  std::string latest_at_start_;  // latest_identity() before the first attempt
  std::string run_dir_, log_dir_, hb_dir_;
  bool tty_;
  std::string host_;
  bool progress_shown_ = false;
  int attempt_ = 0;
  std::ofstream launcher_log_, attempts_;
  std::map<int, std::ofstream> rank_logs_;
  std::map<int, Death> dead_;
  // The first watchdog report of this attempt (moe-train's comm/watchdog: the
  // rank that gave up waiting, the operation, and its group's members with
  // their hosts), one line; it goes into the attempt's report.
  std::string watchdog_;
  int watchdog_rank_ = -1;
  bool watchdog_open_ = false;
};

}  // namespace

int supervise(const Plan& plan) { return Supervisor(plan).run(); }

bool write_report(const std::string& run_dir) {
  std::string script = SY_REPORT_SCRIPT;
  if (const char* s = std::getenv("SY_REPORT_SCRIPT")) script = s;
  // Debian's python3 (with python3-matplotlib) before whatever PATH finds first.
  std::string python = std::getenv("SY_PYTHON") ? std::getenv("SY_PYTHON") : "";
  if (python.empty()) python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : find_program("python3");
  if (script.empty() || !fs::exists(script) || python.empty()) {
    std::cerr << fmt::format("moe-launch: no run report: {} not found\n", python.empty() ? "python3" : "the report script " + script);
    return false;
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(python.c_str(), python.c_str(), script.c_str(), run_dir.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::cerr << fmt::format("moe-launch: the run report failed ({})\n", describe_status(st));
    return false;
  }
  return true;
}

}  // namespace sy::launch
