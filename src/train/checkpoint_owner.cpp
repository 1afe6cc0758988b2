// The checkpointer's ownership rules: run identities, the directory lock,
// which checkpoints a run may resume from (checkpoint.resume, .fallback,
// .overwrite), retention, and deleting another run's checkpoints once
// checkpoint.overwrite allows it. Saving: checkpoint.cpp; loading:
// checkpoint_load.cpp.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "ckpt/files.h"
#include "ckpt/format.h"
#include "core/check.h"
#include "train/checkpoint_detail.h"

namespace sy {

namespace fs = std::filesystem;

namespace ckpt_detail {

// Every rank learns the first (lowest-rank) non-empty message.
std::string agree_on_error(const Comm& world, const std::string& mine, int* who) {
  int bad = mine.empty() ? INT_MAX : world.rank();
  world.allreduce_min(&bad, 1);
  *who = bad;
  if (bad == INT_MAX) return "";
  int64_t len = world.rank() == bad ? static_cast<int64_t>(mine.size()) : 0;
  world.bcast(&len, 1, bad);
  std::string msg(static_cast<size_t>(len), '\0');
  if (world.rank() == bad) msg = mine;
  world.bcast(msg.data(), msg.size(), bad);
  return msg;
}

// The same string on every rank, from `root`.
std::string bcast_string(const Comm& world, std::string s, int root) {
  int64_t len = static_cast<int64_t>(s.size());
  world.bcast(&len, 1, root);
  s.resize(static_cast<size_t>(len));
  world.bcast(s.data(), s.size(), root);
  return s;
}

// Deleting a checkpoint is two steps: an atomic rename out of the step
// namespace (a name ending in .tmp, which no reader takes for a checkpoint
// and the next save clears), then the removal. A kill in between leaves the
// leftover under a .tmp name, never a half-deleted step directory.
void remove_checkpoint_dir(const fs::path& dir) {
  fs::path aside = dir;
  aside += ".retired.tmp";
  std::error_code ec;
  fs::remove_all(aside, ec);
  fs::rename(dir, aside, ec);
  if (ec) {  // the new checkpoint is committed: a retention failure is worth a warning, not the run
    std::cerr << fmt::format("warning: could not delete checkpoint '{}' (rename to '{}'): {}; it stays\n",
                             dir.string(), aside.string(), ec.message()) << std::flush;
    return;
  }
  fs::remove_all(aside, ec);
}

}  // namespace ckpt_detail

using ckpt_detail::bcast_string;
using ckpt_detail::remove_checkpoint_dir;

std::string Checkpointer::new_run_id() const {
  return bcast_string(grid_.world(), grid_.world().rank() == 0 ? ckpt::new_run_id() : std::string(), 0);
}

void Checkpointer::retain() const {
  // This run's checkpoints, newest first; others' are never touched.
  const std::string latest = ckpt::read_latest(dir_);
  std::vector<int64_t> mine;
  for (int64_t s : ckpt::list_steps(dir_))
    if (ckpt::read_run_id((fs::path(dir_) / ckpt::step_dir_name(s)).string()) == run_id_) mine.push_back(s);
  const int64_t keep = cfg_.checkpoint.keep, every = cfg_.checkpoint.keep_every;
  for (size_t i = 0; i < mine.size(); ++i) {
    const std::string name = ckpt::step_dir_name(mine[i]);
    const bool newest = static_cast<int64_t>(i) < keep;
    const bool milestone = every > 0 && mine[i] % every == 0;
    if (!newest && !milestone && name != latest) remove_checkpoint_dir(fs::path(dir_) / name);
  }
}

void Checkpointer::delete_other_runs() const {
  for (int64_t s : ckpt::list_steps(dir_)) {
    const fs::path d = fs::path(dir_) / ckpt::step_dir_name(s);
    const std::string owner = ckpt::read_run_id(d.string());
    if (owner == run_id_) continue;
    remove_checkpoint_dir(d);
    std::cout << fmt::format("checkpoint.overwrite: deleted '{}' ({})\n", d.string(),
                             owner.empty() ? std::string("no run identity") : "run " + owner)
              << std::flush;
  }
}

std::vector<std::string> Checkpointer::own_checkpoints(const std::string& run, const std::string& skip) const {
  std::vector<std::string> out;
  for (int64_t s : ckpt::list_steps(dir_)) {
    const std::string p = (fs::path(dir_) / ckpt::step_dir_name(s)).string();
    if (p != skip && ckpt::read_run_id(p) == run) out.push_back(p);
  }
  return out;
}

std::string Checkpointer::plan_resume() {
  const CheckpointSection& c = cfg_.checkpoint;
  std::vector<std::string> out;
  std::error_code ec;
  // The lock: two jobs never write into one checkpoint directory.
  if (lock_fd_ < 0) {
    fs::create_directories(dir_, ec);
    const std::string lock = (fs::path(dir_) / ".lock").string();
    int fd = fs::is_directory(dir_, ec) ? ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644) : -1;
    if (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char holder[256] = {};
      const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
      ::close(fd);
      fd = -1;  // no flock on this filesystem (ENOLCK, EOPNOTSUPP): go on without
      SY_CONFIG_CHECK(err != EWOULDBLOCK, "checkpoint directory '{}' is in use by another job ({}): two runs must "
                      "not write into one directory; wait for it, or use another run.dir / checkpoint.dir", dir_,
                      n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string("see its .lock"));
    }
    if (fd >= 0) {
      const std::string who = fmt::format("pid {} on {}", ::getpid(), host_name());
      if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, who.data(), who.size(), 0) < 0) {
        // the holder's name is a courtesy for the message above
      }
      lock_fd_ = fd;
    }
  }
  if (int n = ckpt::recover_replaced(dir_); n > 0)
    std::cout << fmt::format("recovered {} checkpoint{} a crash left mid-swap in '{}'\n", n, n == 1 ? "" : "s", dir_);
  const ckpt::LatestFile latest = ckpt::inspect_latest(dir_);
  const std::vector<int64_t> steps = ckpt::list_steps(dir_);
  // Who owns what is here.
  std::map<std::string, std::vector<int64_t>> owners;  // run id ("" unknown) -> steps, newest first
  for (int64_t s : steps) owners[ckpt::read_run_id((fs::path(dir_) / ckpt::step_dir_name(s)).string())].push_back(s);
  auto describe_owners = [&] {
    std::vector<std::string> parts;
    for (const auto& [run, st] : owners)
      parts.push_back(fmt::format("{}: steps {}", run.empty() ? std::string("no readable run identity") : "run " + run,
                                  fmt::join(st, ", ")));
    return fmt::format("{}", fmt::join(parts, "; "));
  };
  // Starting here (from scratch, or from a checkpoint of run `run`) must
  // not mix with another run's checkpoints unless overwrite says so.
  auto claim = [&](const std::string& run, const char* how) {
    bool others = false;
    for (const auto& [r, st] : owners) others = others || r != run || r.empty();
    if (!others) return;
    SY_CONFIG_CHECK(c.overwrite, "{}: refusing to {} in '{}', which holds checkpoints of another run ({}). Use "
                    "another run.dir (or checkpoint.dir); resume the run that is there with checkpoint.resume = "
                    "\"auto\"; or set checkpoint.overwrite = true to delete them once this run has saved its first "
                    "checkpoint", cfg_.source, how, dir_, describe_owners());
    delete_others_ = true;
    std::cout << fmt::format("checkpoint.overwrite: '{}' holds other checkpoints ({}); they are deleted after this "
                             "run's first checkpoint\n", dir_, describe_owners()) << std::flush;
  };
  if (c.resume == ResumeMode::none) {
    claim("", "start from scratch");
  } else if (c.resume == ResumeMode::dir) {
    const std::string path = ckpt::resolve_checkpoint(c.resume_dir);
    claim(fs::is_directory(path) ? ckpt::read_run_id(path) : std::string(), "resume from another checkpoint");
    out.push_back(path);
  } else if (latest.valid()) {
    const std::string p = (fs::path(dir_) / latest.name).string();
    out.push_back(p);
    if (c.fallback) {
      // Fall back only within the run that wrote `latest`. Its files may
      // disagree (a manifest or shard swapped in from another run): then the
      // run is the one among them that has other checkpoints here.
      std::vector<std::string> ids = ckpt::read_run_ids(p), with_others;
      if (ids.empty() && owners.size() == 1 && !owners.begin()->first.empty())
        ids.push_back(owners.begin()->first);  // unreadable, and only one run is here: it is one of theirs
      for (const std::string& id : ids)
        if (!own_checkpoints(id, p).empty()) with_others.push_back(id);
      SY_CONFIG_CHECK(with_others.size() <= 1, "'{}' mixes files of runs {} and each has other checkpoints in '{}': "
                      "checkpoint.fallback cannot tell which run to resume. Set checkpoint.resume = <a step "
                      "directory>", p, fmt::join(with_others, " and "), dir_);
      if (!with_others.empty())
        for (const std::string& q : own_checkpoints(with_others[0], p)) out.push_back(q);
    }
  } else if (latest.exists || !steps.empty()) {
    const std::string what = latest.exists ? latest.problem : fmt::format("'{}' has no `latest`", dir_);
    SY_CONFIG_CHECK(c.fallback, "{}, but the directory holds checkpoints ({}): not starting from scratch over them. "
                    "Set checkpoint.fallback = true to resume from this run's newest intact checkpoint, "
                    "checkpoint.resume = <a step directory> to pick one, or use another run.dir", what,
                    describe_owners());
    std::vector<std::string> runs;
    for (const auto& [r, st] : owners)
      if (!r.empty()) runs.push_back(r);
    SY_CONFIG_CHECK(runs.size() == 1, "{}, and checkpoint.fallback cannot tell which run to resume: {}. Set "
                    "checkpoint.resume = <a step directory>", what, describe_owners());
    std::cout << fmt::format("{}: falling back to run {}'s newest intact checkpoint\n", what, runs[0]) << std::flush;
    out = own_checkpoints(runs[0], "");
  }
  std::string list;
  for (const std::string& x : out) list += x + "\n";
  return list;
}

std::vector<std::string> Checkpointer::resume_candidates() {
  std::string list, err;
  if (grid_.world().rank() == 0) {
    try {
      list = plan_resume();
    } catch (const Error& e) {
      err = e.what();
    } catch (const std::exception& e) {
      err = fmt::format("checkpoint directory '{}': {}", dir_, e.what());
    }
  }
  err = bcast_string(grid_.world(), err, 0);
  SY_CONFIG_CHECK(err.empty(), "{}", err);
  delete_others_ = bcast_string(grid_.world(), delete_others_ ? "1" : "0", 0) == "1";
  list = bcast_string(grid_.world(), list, 0);
  std::vector<std::string> out;
  for (size_t b = 0, e; (e = list.find('\n', b)) != std::string::npos; b = e + 1) out.push_back(list.substr(b, e - b));
  return out;
}

}  // namespace sy
