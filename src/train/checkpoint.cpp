#include "train/checkpoint.h"

#include "estimate/pipeline_plan.h"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
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
#include "train/checkpoint_detail.h"
#include "train/metrics.h"
#include "core/check.h"
#include "core/parallel.h"
#include "core/timer.h"
#include "core/version.h"

namespace sy {

namespace fs = std::filesystem;
using ckpt_detail::agree_on_error;

namespace {

bool is_tmp_dir(const std::string& name) { return name.size() > 4 && name.ends_with(".tmp"); }

}  // namespace

Checkpointer::Checkpointer(const RunConfig& cfg, const Grid& grid, const ParamLayout& local, const ParamLayout& full,
                           const GradSync& sync)
    : cfg_(cfg), grid_(grid), local_(local), full_(full), sync_(sync) {
  dir_ = cfg.checkpoint.dir.empty() ? (fs::path(cfg.run_dir()) / "checkpoints").string() : cfg.checkpoint.dir;
  std::vector<ckpt::TensorHome> homes;
  std::unique_ptr<PipelinePlan> plan;
  if (grid.pp_size() > 1) plan = std::make_unique<PipelinePlan>(plan_pipeline(cfg, grid.pp_size()));
  for (const ParamInfo& p : full.params())
    homes.push_back({p.numel(), p.expert, plan ? plan->home_rank(p.layer, p.kind == ParamKind::embed) : -1,
                     p.expert >= 0 ? cfg.model.experts_at(p.layer) : 0});
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
      m.tokenizer_model = tokenizer_;
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

}  // namespace sy
