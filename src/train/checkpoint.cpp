#include "train/checkpoint.h"

#include "train/pipeline_plan.h"

#include <fcntl.h>
#include <omp.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>

#include "ckpt/files.h"
#include "ckpt/format.h"
#include "ckpt/reader.h"
#include "ckpt/repack.h"
#include "core/check.h"
#include "core/parallel.h"
#include "core/timer.h"
#include "core/version.h"

namespace sy {

namespace fs = std::filesystem;

namespace {

std::string now_iso() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

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

bool is_tmp_dir(const std::string& name) { return name.size() > 4 && name.ends_with(".tmp"); }

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

}  // namespace

Checkpointer::Checkpointer(const RunConfig& cfg, const Grid& grid, const ParamLayout& local, const ParamLayout& full,
                           const GradSync& sync)
    : cfg_(cfg), grid_(grid), local_(local), full_(full), sync_(sync) {
  dir_ = cfg.checkpoint.dir.empty() ? (fs::path(cfg.run_dir()) / "checkpoints").string() : cfg.checkpoint.dir;
  std::vector<ckpt::TensorHome> homes;
  std::unique_ptr<PipelinePlan> plan;
  if (grid.pp_size() > 1) plan = std::make_unique<PipelinePlan>(plan_pipeline(cfg, grid.pp_size()));
  for (const ParamInfo& p : full.params())
    homes.push_back({p.numel(), p.expert, plan ? plan->home_rank(p) : -1});
  writer_ = ckpt::assign_writers(homes, grid.world().size(), grid.dp_size(), grid.ep_size(), cfg.model.moe.experts);
  // Staging for async saves, bounded by checkpoint.staging_mb, paid for now
  // (first touch of fresh pages is slow) rather than inside the first save.
  for (const ParamInfo& p : local.params())
    if (writer_[p.index] == grid.world().rank()) staged_floats_ += 3 * p.numel();
  staged_ = cfg.checkpoint.async && staged_floats_ * 4 <= cfg.checkpoint.staging_mb * (int64_t{1} << 20);
  if (staged_) staging_.resize(static_cast<size_t>(staged_floats_));
}

Checkpointer::~Checkpointer() {
  if (thread_.joinable()) thread_.join();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::string Checkpointer::new_run_id() const {
  return bcast_string(grid_.world(), grid_.world().rank() == 0 ? ckpt::new_run_id() : std::string(), 0);
}

int64_t Checkpointer::written_moments_layout(std::map<int64_t, int64_t>& where) const {
  int64_t size = 0;
  for (const ParamInfo& p : local_.params())
    if (writer_[p.index] == grid_.world().rank()) where[p.index] = size, size += 2 * p.numel();
  return size;
}

std::vector<float> Checkpointer::gather_moments(const AdamW& opt, std::map<int64_t, int64_t>& where) const {
  // With ZeRO-1 each rank holds parts of the moments; send every part to
  // its tensor's writer. A piece on the wire: 3 int64 header words (tensor
  // index, first element, count) as 6 floats, then m, then v.
  const Comm& world = grid_.world();
  const int64_t P = world.size();
  std::vector<std::vector<float>> out(P);
  auto put64 = [](std::vector<float>& v, int64_t x) {
    float f[2];
    std::memcpy(f, &x, 8);
    v.push_back(f[0]), v.push_back(f[1]);
  };
  for (const OptRange& r : opt.ranges()) {
    const ParamInfo& p = local_.params()[r.param];
    if (p.replica) continue;  // its home stage sends the same moments
    std::vector<float>& v = out[writer_[p.index]];
    const int64_t n = r.end - r.begin;
    put64(v, p.index);
    put64(v, r.begin - p.offset);
    put64(v, n);
    for (char which : {'m', 'v'}) {
      v.resize(v.size() + static_cast<size_t>(n));
      opt.get_moments(which, r.state, n, v.data() + v.size() - n);
    }
  }
  std::vector<int64_t> scount(P), sdispl(P), rcount(P), rdispl(P);
  std::vector<float> send;
  for (int64_t d = 0; d < P; ++d) {
    sdispl[d] = static_cast<int64_t>(send.size());
    scount[d] = static_cast<int64_t>(out[d].size());
    send.insert(send.end(), out[d].begin(), out[d].end());
  }
  world.alltoall(scount.data(), 1, rcount.data());
  int64_t total = 0;
  for (int64_t s = 0; s < P; ++s) rdispl[s] = total, total += rcount[s];
  std::vector<float> recv(static_cast<size_t>(total));
  world.alltoallv_rows(send.data(), scount, sdispl, recv.data(), rcount, rdispl, 1, "checkpoint moment gather");

  std::vector<float> moments(static_cast<size_t>(written_moments_layout(where)));
  auto get64 = [](const float* f) {
    int64_t x;
    std::memcpy(&x, f, 8);
    return x;
  };
  for (int64_t at = 0; at < total;) {
    int64_t idx = get64(&recv[at]), begin = get64(&recv[at + 2]), n = get64(&recv[at + 4]);
    const float* m = &recv[at + 6];
    int64_t numel = full_.params()[idx].numel(), off = where.at(idx);
    std::copy(m, m + n, moments.begin() + off + begin);
    std::copy(m + n, m + 2 * n, moments.begin() + off + numel + begin);
    at += 6 + 2 * n;
  }
  return moments;
}

uint32_t Checkpointer::write_shard(const std::string& path, const std::vector<Item>& items, int64_t step) const {
  try {
    h5::File f = h5::File::create(path);
    ckpt::write_shard_identity(f, run_id_, step, grid_.world().rank());
    for (const Item& it : items) {
      const ParamInfo& p = local_.params()[it.local];
      for (int g = 0; g < 3; ++g) ckpt::write_tensor(f, ckpt::kGroups[g], p.name, it.data[g], p.shape.dims);
    }
    f.close();
    h5::sync_path(path);
    return f.digest();
  } catch (const Error& e) {
    SY_FAIL("writing '{}' failed: {}{}", path, e.what(), ckpt::io_hint(path, errno));
  }
}

std::string Checkpointer::save(const TrainState& st, const float* params, const AdamW& opt) {
  const double t0 = now_seconds();
  finish();  // a second save waits for the first
  const Comm& world = grid_.world();
  const int64_t me = world.rank();
  const fs::path final_dir = fs::path(dir_) / ckpt::step_dir_name(st.step);
  fs::path tmp = final_dir;
  tmp += ".tmp";
  if (run_id_.empty()) run_id_ = new_run_id();  // a save without resume_candidates() (benchmarks)
  std::string setup_error;
  if (me == 0) {
    try {
      fs::create_directories(dir_);
      // Stale work of saves that never completed (the lock says no other
      // job writes here) takes space the new save may need.
      for (const auto& e : fs::directory_iterator(dir_))
        if (is_tmp_dir(e.path().filename().string()) && e.is_directory()) fs::remove_all(e.path());
      fs::remove(fs::path(dir_) / (std::string(ckpt::kLatest) + ".tmp"));
      if (fs::exists(final_dir)) {  // re-saving a step: only this run's, or what overwrite allows
        const std::string owner = ckpt::read_run_id(final_dir.string());
        SY_CHECK(owner.empty() || owner == run_id_ || delete_others_,
                 "'{}' holds a checkpoint of another run ({}; this run is {}): not replacing it. Use another "
                 "checkpoint.dir, or set checkpoint.overwrite = true to take the directory over",
                 final_dir.string(), owner, run_id_);
      }
      fs::create_directory(tmp);
    } catch (const Error& e) {
      setup_error = e.what();
    } catch (const fs::filesystem_error& e) {
      setup_error = fmt::format("cannot prepare checkpoint directory '{}': {}{}", tmp.string(), e.code().message(),
                                ckpt::io_hint(dir_, e.code().value()));
    }
  }
  int who = 0;
  std::string err = agree_on_error(world, setup_error, &who);
  SY_CHECK(err.empty(), "{}", err);

  // What this rank writes: its tensors' weights and moments.
  std::map<int64_t, int64_t> where;
  // Moments the writer reads from a copy: ZeRO-1 gathers the parts; BF16
  // moments are widened to FP32 (exact) for the file.
  const bool copied = sync_.zero1() || opt.bf16_moments();
  if (sync_.zero1()) {
    moments_ = gather_moments(opt, where);
  } else if (opt.bf16_moments()) {
    moments_.resize(static_cast<size_t>(written_moments_layout(where)));
    for (const ParamInfo& p : local_.params())
      if (auto it = where.find(p.index); it != where.end()) {
        opt.get_moments('m', p.offset, p.numel(), moments_.data() + it->second);
        opt.get_moments('v', p.offset, p.numel(), moments_.data() + it->second + p.numel());
      }
  }
  std::vector<Item> items;
  for (size_t i = 0; i < local_.params().size(); ++i) {
    const ParamInfo& p = local_.params()[i];
    if (writer_[p.index] != me) continue;
    const float* m = copied ? moments_.data() + where.at(p.index) : opt.fp32_moments('m') + p.offset;
    const float* v = copied ? m + p.numel() : opt.fp32_moments('v') + p.offset;
    items.push_back({static_cast<int64_t>(i), {params + p.offset, m, v}});
  }
  pending_ = true;
  pending_dir_ = final_dir.string();
  pending_state_ = st;
  error_.clear();
  const std::string path = (tmp / ckpt::shard_file_name(me)).string();
  done_ = false;
  if (staged_) {
    // The writer copies the live buffers first (the caller may not change
    // them until wait_staged() returns), then writes from the copy.
    {
      std::lock_guard<std::mutex> lk(mu_);
      copying_ = true;
    }
    thread_ = std::thread([this, path, items]() mutable {
      // Background work yields the CPU to training: one thread (no OpenMP
      // team of its own for the checksums) at a lower priority.
      omp_set_num_threads(1);
      setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
      int64_t at = 0;
      for (Item& it : items) {
        const int64_t n = local_.params()[it.local].numel();
        for (int g = 0; g < 3; ++g) {
          std::memcpy(staging_.data() + at, it.data[g], static_cast<size_t>(n) * sizeof(float));
          it.data[g] = staging_.data() + at;
          at += n;
        }
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        copying_ = false;
      }
      staged_cv_.notify_all();
      try {
        if (!items.empty()) digest_ = write_shard(path, items, pending_state_.step);
      } catch (const std::exception& e) {
        error_ = e.what();
      }
      done_ = true;
    });
  } else {
    try {
      if (!items.empty()) digest_ = write_shard(path, items, st.step);
    } catch (const std::exception& e) {
      error_ = e.what();
    }
    done_ = true;
    finish();
  }
  last_stall_ = now_seconds() - t0;
  return final_dir.string();
}

void Checkpointer::wait_staged() {
  std::unique_lock<std::mutex> lk(mu_);
  if (!copying_) return;
  const double t0 = now_seconds();
  staged_cv_.wait(lk, [this] { return !copying_; });
  last_stall_ += now_seconds() - t0;
}

void Checkpointer::poll() {
  if (!pending_) return;
  int all = done_ ? 1 : 0;
  grid_.world().allreduce_min(&all, 1);
  if (all) finish();
}

void Checkpointer::finish() {
  if (!pending_) return;
  if (thread_.joinable()) thread_.join();
  commit();
}

void Checkpointer::install(const std::string& tmp, const std::string& final_dir) const {
  if (fs::exists(final_dir)) {
    // Re-saving a step (after a fallback, or a resume from an older
    // checkpoint): swap the directories, then drop the old one.
    ckpt::exchange_dirs(tmp, final_dir);
    h5::sync_path(dir_);
    fs::remove_all(tmp);
  } else {
    ckpt::rename_noreplace(tmp, final_dir);
  }
  h5::sync_path(dir_);
}

void Checkpointer::commit() {
  pending_ = false;
  const Comm& world = grid_.world();
  const fs::path final_dir = pending_dir_;
  fs::path tmp = final_dir;
  tmp += ".tmp";
  // Every shard's digest goes into the manifest (-1: the rank wrote none).
  std::vector<int64_t> digests(static_cast<size_t>(world.size()), 0);
  bool wrote = false;
  for (const ParamInfo& p : local_.params()) wrote = wrote || writer_[p.index] == world.rank();
  digests[static_cast<size_t>(world.rank())] = wrote && error_.empty() ? static_cast<int64_t>(digest_) : -1;
  world.allreduce_sum(digests.data(), digests.size());
  int who = 0;
  std::string err = agree_on_error(world, error_, &who);
  if (!err.empty()) {
    if (world.rank() == 0) {
      std::error_code ec;
      fs::remove_all(tmp, ec);  // free what the failed save took
    }
    SY_FAIL("checkpoint save failed on rank {}: {} (the previous checkpoint and `latest` are intact)", who, err);
  }
  std::string commit_error;
  if (world.rank() == 0) {
    try {
      const TrainState& st = pending_state_;
      ckpt::Manifest m;
      static_cast<ckpt::CheckpointState&>(m) = st;
      m.sealed = true;
      m.software_version = version();
      m.saved_at = now_iso();
      m.config_toml = to_toml(cfg_);
      m.run_id = run_id_;
      m.world = world.size(), m.pp = grid_.pp_size(), m.dp = grid_.dp_size(), m.ep = grid_.ep_size();
      m.zero1 = sync_.zero1() ? 1 : 0;
      for (int64_t r = 0; r < world.size(); ++r)
        if (digests[static_cast<size_t>(r)] >= 0)
          m.shard_digests[ckpt::shard_file_name(r)] = static_cast<uint32_t>(digests[static_cast<size_t>(r)]);
      m.shards = static_cast<int64_t>(m.shard_digests.size());
      const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
      if (L > 0) {  // no loads recorded (yet): zeros
        m.bias_shape = {L, E};
        m.expert_load.resize(static_cast<size_t>(L * E), 0);
      } else {
        m.bias_shape.clear(), m.expert_bias.clear(), m.expert_load.clear();
      }
      if (st.fp8_len() > 0) {
        m.fp8_shape = {static_cast<int64_t>(full_.params().size()), 3, st.fp8_len()};
      } else {
        m.fp8_shape.clear(), m.fp8_amax_history.clear();
      }
      for (const ParamInfo& p : full_.params())
        m.tensors.push_back({p.name, p.shape.dims, ckpt::shard_file_name(writer_[p.index]), p.index});
      const std::string manifest = (tmp / ckpt::kManifest).string();
      try {
        ckpt::write_manifest(manifest, m);
        h5::sync_path(manifest);
        h5::sync_path(tmp.string());
      } catch (const Error& e) {
        SY_FAIL("{}{}", e.what(), ckpt::io_hint(manifest, errno));
      }
      install(tmp.string(), final_dir.string());
      const fs::path latest = fs::path(dir_) / ckpt::kLatest;
      if (std::error_code ec; fs::is_directory(fs::symlink_status(latest, ec))) {
        // A directory where `latest` belongs: keep whatever it holds, out of the way.
        if (fs::is_empty(latest, ec)) {
          fs::remove(latest);
        } else {
          const std::string aside = fmt::format("{}.damaged-{}", latest.string(), std::time(nullptr));
          ckpt::rename_noreplace(latest.string(), aside);
          std::cout << fmt::format("'{}' was a directory; moved it to '{}'\n", latest.string(), aside) << std::flush;
        }
      }
      ckpt::write_file_durably(latest.string(), final_dir.filename().string() + "\n");
      retain();
      if (delete_others_) delete_other_runs();
    } catch (const std::exception& e) {
      commit_error = fmt::format("committing checkpoint '{}' failed: {} (the previous checkpoint and `latest` are "
                                 "intact)", pending_dir_, e.what());
      std::error_code ec;
      fs::remove_all(tmp, ec);
    }
  }
  err = agree_on_error(world, commit_error, &who);
  SY_CHECK(err.empty(), "{}", err);
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

TrainState Checkpointer::load(const std::string& dir, float* params, AdamW& opt) {
  TrainState st;
  std::string err;
  try {
    ckpt::Reader r(dir);
    const ckpt::Manifest& m = r.manifest();
    RunConfig theirs = parse_config(m.config_toml, dir + " (its config)");
    std::vector<std::string> diffs = differing_keys(theirs, cfg_, {"model", "moe"});
    SY_CHECK(diffs.empty(), "checkpoint '{}' holds a different model ({}): it cannot be loaded into this config", dir,
             fmt::join(diffs, "; "));
    // Everything besides the tensors first, against what this model needs.
    const std::string name = fs::path(dir).lexically_normal().filename().string();
    if (const int64_t s = ckpt::parse_step_dir(name); s >= 0)
      SY_CHECK(s == m.step, "checkpoint '{}': its manifest says step {}, its directory name step {}: the manifest is "
               "not from this checkpoint", dir, m.step, s);
    st = m;  // the state, checked below against what this model needs
    const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
    if (L > 0) {
      if (m.bias_shape.empty() && !m.sealed) {
        st.bias_shape = {L, E};  // format 1 without the datasets: start at zero
        st.expert_bias.assign(static_cast<size_t>(L * E), 0.f);
        st.expert_load.assign(static_cast<size_t>(L * E), 0);
      } else {
        SY_CHECK(m.bias_shape == std::vector<int64_t>({L, E}), "checkpoint '{}': datasets 'expert_bias' and "
                 "'expert_load' have shape ({}), the model needs ({}, {}) (MoE layers, experts)", dir,
                 fmt::join(m.bias_shape, ", "), L, E);
      }
    } else {
      SY_CHECK(m.bias_shape.empty(), "checkpoint '{}' holds expert_bias ({}) but the model has no MoE layers", dir,
               fmt::join(m.bias_shape, "x"));
    }
    if (!m.fp8_shape.empty()) {
      SY_CHECK(m.fp8_shape[0] == static_cast<int64_t>(full_.params().size()),
               "checkpoint '{}': fp8_amax_history covers {} tensors, the model has {}", dir, m.fp8_shape[0],
               full_.params().size());
      SY_CHECK(m.fp8_shape[2] <= std::min(m.step, theirs.precision.amax_history),
               "checkpoint '{}': fp8_amax_history holds {} steps, more than the {} it can have after {} steps with "
               "precision.amax_history = {}", dir, m.fp8_shape[2], std::min(m.step, theirs.precision.amax_history),
               m.step, theirs.precision.amax_history);
    } else {
      SY_CHECK(!m.sealed || theirs.precision.recipe != Recipe::fp8_tensor_delayed || m.step == 0,
               "checkpoint '{}' was saved with precision.recipe = \"fp8-tensor-delayed\" after {} steps but holds "
               "no fp8_amax_history", dir, m.step);
    }
    auto entry = [&](const ParamInfo& p) -> const ckpt::TensorEntry& {
      const ckpt::TensorEntry& t = r.tensor(p.name);
      SY_CHECK(t.shape == p.shape.dims, "checkpoint '{}': tensor '{}' has shape {} there, {} here", dir, p.name,
               Shape(t.shape).str(), p.shape.str());
      return t;
    };
    // Tensor by tensor, its weights then its moment ranges: the order the
    // shard files were written in, so reads stay sequential.
    std::vector<std::vector<const OptRange*>> ranges_of(local_.params().size());
    for (const OptRange& range : opt.ranges()) ranges_of[range.param].push_back(&range);
    for (size_t i = 0; i < local_.params().size(); ++i) {
      const ParamInfo& p = local_.params()[i];
      const ckpt::TensorEntry& t = entry(p);
      r.read("params", t, params + p.offset, 0, p.numel());
      for (const char* g : {"adam_m", "adam_v"})
        for (const OptRange* range : ranges_of[i]) {
          std::vector<float> part(static_cast<size_t>(range->end - range->begin));
          r.read(g, t, part.data(), range->begin - p.offset, range->end - p.offset);
          opt.set_moments(g[5], range->state, static_cast<int64_t>(part.size()), part.data());
        }
    }
  } catch (const Error& e) {
    err = e.what();
  } catch (const std::exception& e) {
    err = fmt::format("checkpoint '{}': {}", dir, e.what());
  }
  int who = 0;
  std::string msg = agree_on_error(grid_.world(), err, &who);
  SY_CONFIG_CHECK(msg.empty(), "{}{}", msg, grid_.world().size() > 1 ? fmt::format(" (seen on rank {})", who) : "");
  return st;
}

}  // namespace sy
