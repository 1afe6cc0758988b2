#include "train/checkpoint.h"

#include "train/pipeline_plan.h"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <numeric>

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

void write_text_durably(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    SY_CHECK(out.good(), "cannot write '{}'", tmp.string());
  }
  h5::sync_path(tmp.string());
  fs::rename(tmp, path);
  h5::sync_path(path.parent_path().string());
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

void Checkpointer::write_shard(const std::string& path, const std::vector<Item>& items) const {
  h5::File f = h5::File::create(path);
  f.set_attr("", "rank", static_cast<int64_t>(grid_.world().rank()));
  for (const Item& it : items) {
    const ParamInfo& p = local_.params()[it.local];
    for (int g = 0; g < 3; ++g) ckpt::write_tensor(f, ckpt::kGroups[g], p.name, it.data[g], p.shape.dims);
  }
  f.close();
  h5::sync_path(path);
}

std::string Checkpointer::save(const TrainState& st, const float* params, const AdamW& opt) {
  const double t0 = now_seconds();
  finish();  // a second save waits for the first
  const Comm& world = grid_.world();
  const int64_t me = world.rank();
  const fs::path final_dir = fs::path(dir_) / ckpt::step_dir_name(st.step);
  fs::path tmp = final_dir;
  tmp += ".tmp";
  std::string setup_error;
  if (me == 0) {
    try {
      fs::create_directories(dir_);
      fs::remove_all(tmp);
      if (fs::exists(final_dir)) fs::remove_all(final_dir);  // re-saving a step (e.g. after a resume)
      fs::create_directory(tmp);
    } catch (const std::exception& e) {
      setup_error = fmt::format("cannot prepare checkpoint directory '{}': {}", tmp.string(), e.what());
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
        if (!items.empty()) write_shard(path, items);
      } catch (const std::exception& e) {
        error_ = e.what();
      }
      done_ = true;
    });
  } else {
    try {
      if (!items.empty()) write_shard(path, items);
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

void Checkpointer::commit() {
  pending_ = false;
  const Comm& world = grid_.world();
  int who = 0;
  std::string err = agree_on_error(world, error_, &who);
  SY_CHECK(err.empty(), "checkpoint save failed on rank {}: {}", who, err);
  std::string commit_error;
  if (world.rank() == 0) {
    try {
      const fs::path final_dir = pending_dir_;
      fs::path tmp = final_dir;
      tmp += ".tmp";
      const TrainState& st = pending_state_;
      ckpt::Manifest m;
      m.software_version = version();
      m.saved_at = now_iso();
      m.config_toml = to_toml(cfg_);
      m.step = st.step;
      m.tokens_seen = st.metrics.count("tokens_seen") ? static_cast<int64_t>(st.metrics.at("tokens_seen")) : 0;
      m.seed = st.seed;
      m.world = world.size(), m.pp = grid_.pp_size(), m.dp = grid_.dp_size(), m.ep = grid_.ep_size();
      m.zero1 = sync_.zero1() ? 1 : 0;
      std::vector<int64_t> files(writer_.begin(), writer_.end());
      std::sort(files.begin(), files.end());
      m.shards = std::unique(files.begin(), files.end()) - files.begin();
      for (const auto& [k, v] : st.metrics)
        if (k != "tokens_seen") m.metrics[k] = v;
      const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
      if (L > 0) {
        m.bias_shape = {L, E};
        m.expert_bias = st.expert_bias;
        m.expert_load.assign(static_cast<size_t>(L * E), 0);
        for (size_t l = 0; l < st.expert_load.size(); ++l)
          for (size_t e = 0; e < st.expert_load[l].size(); ++e) m.expert_load[l * E + e] = st.expert_load[l][e];
      }
      if (st.fp8_len > 0) {
        m.fp8_shape = {static_cast<int64_t>(full_.params().size()), 3, st.fp8_len};
        m.fp8_amax_history = st.fp8_amax;
      }
      for (const ParamInfo& p : full_.params())
        m.tensors.push_back({p.name, p.shape.dims, ckpt::shard_file_name(writer_[p.index]), p.index});
      const std::string manifest = (tmp / ckpt::kManifest).string();
      ckpt::write_manifest(manifest, m);
      h5::sync_path(manifest);
      h5::sync_path(tmp.string());
      fs::rename(tmp, final_dir);
      h5::sync_path(dir_);
      write_text_durably(fs::path(dir_) / ckpt::kLatest, final_dir.filename().string() + "\n");
      retain();
    } catch (const std::exception& e) {
      commit_error = fmt::format("committing checkpoint '{}' failed: {}", pending_dir_, e.what());
    }
  }
  err = agree_on_error(world, commit_error, &who);
  SY_CHECK(err.empty(), "{}", err);
}

void Checkpointer::retain() const {
  std::vector<int64_t> steps;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir_)) {
    std::string name = e.path().filename().string();
    if (e.is_directory() && name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0)
      stale.push_back(e.path());  // a save that never completed
    else if (int64_t s = ckpt::parse_step_dir(name); s >= 0 && e.is_directory())
      steps.push_back(s);
  }
  std::sort(steps.begin(), steps.end());
  const int64_t keep = cfg_.checkpoint.keep, every = cfg_.checkpoint.keep_every;
  for (size_t i = 0; i < steps.size(); ++i) {
    bool newest = static_cast<int64_t>(steps.size() - i) <= keep;
    bool milestone = every > 0 && steps[i] % every == 0;
    if (!newest && !milestone) fs::remove_all(fs::path(dir_) / ckpt::step_dir_name(steps[i]));
  }
  for (const fs::path& p : stale) fs::remove_all(p);
}

std::vector<std::string> Checkpointer::resume_candidates() const {
  std::string list;
  if (grid_.world().rank() == 0) {
    const std::string& r = cfg_.checkpoint.resume;
    std::vector<std::string> out;
    if (r == "auto") {
      if (std::string name = ckpt::read_latest(dir_); !name.empty()) out.push_back((fs::path(dir_) / name).string());
      if (cfg_.checkpoint.fallback && fs::exists(dir_)) {
        std::vector<int64_t> steps;
        for (const auto& e : fs::directory_iterator(dir_))
          if (int64_t s = ckpt::parse_step_dir(e.path().filename().string()); s >= 0 && e.is_directory())
            steps.push_back(s);
        std::sort(steps.rbegin(), steps.rend());
        for (int64_t s : steps) {
          std::string p = (fs::path(dir_) / ckpt::step_dir_name(s)).string();
          if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
        }
      }
    } else if (r != "none") {
      out.push_back(r);
    }
    for (const std::string& s : out) list += s + "\n";
  }
  int64_t len = static_cast<int64_t>(list.size());
  grid_.world().bcast(&len, 1, 0);
  list.resize(static_cast<size_t>(len));
  grid_.world().bcast(list.data(), list.size(), 0);
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
    st.step = m.step;
    st.seed = m.seed;
    st.expert_bias = m.expert_bias;
    const int64_t E = cfg_.model.moe.experts;
    for (int64_t l = 0; l < cfg_.model.moe_layers(); ++l)
      st.expert_load.emplace_back(m.expert_load.begin() + l * E, m.expert_load.begin() + (l + 1) * E);
    st.metrics = m.metrics;
    if (!m.fp8_shape.empty()) {
      SY_CHECK(m.fp8_shape[0] == static_cast<int64_t>(full_.params().size()),
               "checkpoint '{}': fp8_amax_history covers {} tensors, the model has {}", dir, m.fp8_shape[0],
               full_.params().size());
      st.fp8_amax = m.fp8_amax_history;
      st.fp8_len = m.fp8_shape[2];
    }
    st.metrics["tokens_seen"] = static_cast<double>(m.tokens_seen);
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
