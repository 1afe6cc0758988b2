// moe-ckpt: inspect, check, compare and convert Switchyard checkpoints.
//   moe-ckpt ls CKPT | info CKPT | loads CKPT | show CKPT NAME | verify CKPT | diff A B
//   moe-ckpt consolidate CKPT OUT.h5 | reshard CKPT OUT --dp N [--ep N] [--pp N] [--zero1]
//   moe-ckpt export CKPT OUTDIR --format mixtral|deepseek-v3
//   moe-ckpt import HFDIR OUT.h5
//   moe-ckpt upcycle DENSE OUT.h5 --experts E --top-k K [--granularity G] [--noise S] [--seed N] [--layers LIST]
//   moe-ckpt grow CKPT OUT.h5 --layer L[,L...]|all --add N [--init copy|noise|fresh] [--seed S] [--noise STD]
//            [--ep N] [--new-bias B]
// CKPT is a checkpoint directory, a consolidated file, or a run or
// checkpoints directory (the checkpoint its `latest` names). --json (before
// or after the subcommand): one JSON document on stdout, for every command.
// Exit codes: 0 ok (diff: identical), 1 a problem (verify: damage; diff:
// differences; an I/O failure), 2 bad input (usage, option values, paths).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/cli.h"

#include "ckpt/inspect.h"
#include "ckpt/reader.h"
#include "ckpt/repack.h"
#include "comm/grid.h"
#include "core/check.h"
#include "data/tokenizer.h"
#include "model/layout.h"
#include "config/run.h"
#include "estimate/pipeline_plan.h"
#include "train/export.h"
#include "train/import.h"
#include "train/upcycle.h"
#include "train/grow.h"

namespace {

using namespace sy;
using json = nlohmann::ordered_json;

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("({})", fmt::join(s, ", ")); }

// Text read from a file (tensor names, the config) may hold invalid UTF-8:
// it is printed with U+FFFD in its place rather than aborting.
void print_json(const json& j) {
  std::cout << j.dump(1, ' ', false, json::error_handler_t::replace) << "\n";
}

// A checkpoint that cannot be opened at all (not HDF5, no readable
// manifest) is bad input, as in moe-generate and moe-train; damage found
// while reading its tensors is a problem (exit 1).
std::unique_ptr<ckpt::Reader> open_checkpoint(const std::string& path) {
  try {
    return std::make_unique<ckpt::Reader>(path);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    SY_CONFIG_FAIL("{}", e.what());
  }
}

json layout_json(const ckpt::Manifest& m) {
  return {{"world", m.world}, {"pp", m.pp}, {"dp", m.dp}, {"ep", m.ep}, {"zero1", m.zero1 != 0}};
}

// "BEGIN:END" flat element indices (either may be empty: 0, n) within [0, n].
std::pair<int64_t, int64_t> parse_slice(const std::string& slice, int64_t n) {
  const size_t colon = slice.find(':');
  SY_CONFIG_CHECK(colon != std::string::npos, "--slice wants BEGIN:END (flat element indices), got '{}'", slice);
  auto number = [&](std::string_view part, int64_t empty) {
    if (part.empty()) return empty;
    int64_t v = 0;
    auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
    SY_CONFIG_CHECK(ec != std::errc::result_out_of_range, "--slice {}: '{}' is out of range (the tensor has {} "
                    "elements)", slice, part, n);
    SY_CONFIG_CHECK(ec == std::errc() && end == part.data() + part.size(), "--slice {}: '{}' is not an integer "
                    "(want BEGIN:END, flat element indices)", slice, part);
    return v;
  };
  const std::string_view all(slice);
  const int64_t b = number(all.substr(0, colon), 0), e = number(all.substr(colon + 1), n);
  SY_CONFIG_CHECK(0 <= b && b <= e && e <= n, "--slice {} is outside [0, {}] (or BEGIN > END)", slice, n);
  return {b, e};
}

int cmd_ls(const std::string& path, bool as_json) {
  const auto reader = open_checkpoint(path);
  ckpt::Reader& r = *reader;
  json rows = json::array();
  double total = 0;
  for (const ckpt::TensorEntry& t : r.manifest().tensors) {
    double mib = 3.0 * static_cast<double>(t.numel()) * 4 / (1 << 20);
    total += mib;
    rows.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", "f32"}, {"file", t.file}, {"numel", t.numel()},
                    {"bytes", 12 * t.numel()}});
  }
  if (as_json) {
    print_json(rows);
    return 0;
  }
  size_t w = 4;
  for (const auto& t : r.manifest().tensors) w = std::max(w, t.name.size());
  std::cout << fmt::format("{:<{}}  {:<16} {:<5} {:<16} {:>10}\n", "name", w, "shape", "dtype", "file", "MiB");
  for (const ckpt::TensorEntry& t : r.manifest().tensors)
    std::cout << fmt::format("{:<{}}  {:<16} {:<5} {:<16} {:>10.2f}\n", t.name, w, shape_str(t.shape), "f32", t.file,
                             3.0 * static_cast<double>(t.numel()) * 4 / (1 << 20));
  std::cout << fmt::format("{} tensors, {:.1f} MiB (weights + AdamW moments) in {} shard file{}\n",
                           r.manifest().tensors.size(), total, r.manifest().shards, r.manifest().shards == 1 ? "" : "s");
  return 0;
}

json load_stats(const ckpt::Manifest& m) {
  json layers = json::array();
  if (m.bias_shape.size() != 2) return layers;
  int64_t L = m.bias_shape[0], E = m.bias_shape[1];
  // Per-layer counts: each row is padded to the largest; a layer's own count from the config.
  ModelConfig model;
  model.n_layers = 0, model.dense_layers = 0;
  try {
    model = parse_config(m.config_toml, "the checkpoint's config").model;
  } catch (const ConfigError&) {
    // no readable config: every row whole
  }
  for (int64_t l = 0; l < L; ++l) {
    const int64_t El = model.moe_layers() == L ? std::min(E, model.experts_at(model.dense_layers + l)) : E;
    std::vector<int64_t> load(m.expert_load.begin() + l * E, m.expert_load.begin() + l * E + El);
    std::vector<float> bias(m.expert_bias.begin() + l * E, m.expert_bias.begin() + l * E + El);
    int64_t sum = 0, mx = 0;
    for (int64_t c : load) sum += c, mx = std::max(mx, c);
    layers.push_back({{"moe_layer", l},
                      {"load", load},
                      {"imbalance", sum > 0 ? static_cast<double>(mx) * static_cast<double>(El) / static_cast<double>(sum) : 1.0},
                      {"bias", bias}});
  }
  return layers;
}

int cmd_info(const std::string& path, bool as_json) {
  const auto reader = open_checkpoint(path);
  ckpt::Reader& r = *reader;
  const ckpt::Manifest& m = r.manifest();
  int64_t params = 0;
  for (const auto& t : m.tensors) params += t.numel();
  json j = {{"path", path},           {"step", m.step},
            {"tokens_seen", m.tokens_seen}, {"saved_at", m.saved_at},
            {"software_version", m.software_version}, {"format_version", m.format_version},
            {"run_id", m.run_id},     {"sealed", m.sealed},
            {"layout", layout_json(m)},
            {"shards", m.shards},     {"parameters", params},
            {"seed", m.seed},         {"metrics", m.metrics},
            {"expert_load", load_stats(m)}, {"config", m.config_toml}};
  if (!m.fp8_shape.empty())
    j["fp8_amax_history"] = {{"tensors", m.fp8_shape[0]}, {"steps", m.fp8_shape[2]}};
  std::string tokenizer_line;
  if (!m.tokenizer_model.empty()) {  // the SentencePiece model the run trained with (data.tokenizer)
    const Tokenizer tok = Tokenizer::from_bytes(m.tokenizer_model, path + ": its tokenizer_model");
    j["tokenizer"] = {{"kind", "sentencepiece"}, {"pieces", tok.pieces()}, {"byte_pieces", tok.byte_pieces()},
                      {"bytes", m.tokenizer_model.size()}};
    tokenizer_line = fmt::format("tokenizer   SentencePiece, {} pieces ({} byte tokens), {} bytes\n", tok.pieces(),
                                 tok.byte_pieces(), m.tokenizer_model.size());
  }
  if (as_json) {
    print_json(j);
    return 0;
  }
  std::cout << fmt::format(
      "checkpoint  {}\nrun         {}\nstep        {}\ntokens seen {}\nsaved at    {} by switchyard {} (format {}{})\n"
      "layout      world {} = pp {} x dp {}, ep {}, {}\nshards      {}\nparameters  {}\nseed        {}\n",
      path, m.run_id.empty() ? std::string("(none: format 1)") : m.run_id, m.step, m.tokens_seen, m.saved_at,
      m.software_version, m.format_version, m.sealed ? ", metadata sealed" : ", metadata without checksums", m.world,
      m.pp, m.dp, m.ep,
      m.zero1 ? "ZeRO-1" : "replicated optimizer", m.shards, params, m.seed);
  for (const auto& [k, v] : m.metrics) std::cout << fmt::format("{:<11} {:.6g}\n", k, v);
  for (const json& l : j["expert_load"])
    std::cout << fmt::format("moe layer {} load imbalance {:.2f} (max / mean)\n", l["moe_layer"].get<int64_t>(),
                             l["imbalance"].get<double>());
  if (!m.fp8_shape.empty())
    std::cout << fmt::format("fp8         delayed-scaling amax histories: {} tensors x 3 (act, weight, grad) x {} steps\n",
                             m.fp8_shape[0], m.fp8_shape[2]);
  std::cout << tokenizer_line << "config:\n" << m.config_toml;
  return 0;
}

int cmd_loads(const std::string& path, bool as_json) {
  const auto reader = open_checkpoint(path);
  ckpt::Reader& r = *reader;
  json layers = load_stats(r.manifest());
  if (as_json) {
    print_json(layers);
    return 0;
  }
  std::cout << fmt::format("expert loads recorded at step {} (picks per expert before dropping; bias = balancing "
                           "bias)\n", r.manifest().step);
  for (const json& l : layers) {
    auto load = l["load"].get<std::vector<int64_t>>();
    auto bias = l["bias"].get<std::vector<float>>();
    int64_t sum = 0;
    for (int64_t c : load) sum += c;
    std::cout << fmt::format("moe layer {}: imbalance {:.2f}\n", l["moe_layer"].get<int64_t>(), l["imbalance"].get<double>());
    for (size_t e = 0; e < load.size(); ++e) {
      double share = sum > 0 ? static_cast<double>(load[e]) / static_cast<double>(sum) : 0;
      std::cout << fmt::format("  expert {:>3} {:>8} {:>6.1f}% {:<30} bias {:+.4f}\n", e, load[e], 100 * share,
                               std::string(static_cast<size_t>(std::lround(share * 30 * static_cast<double>(load.size()) / 4)), '#'),
                               bias[e]);
    }
  }
  return 0;
}

int cmd_show(const std::string& path, const std::string& name, const std::string& group, const std::string& slice,
             int bins, bool as_json) {
  const auto reader = open_checkpoint(path);
  ckpt::Reader& r = *reader;
  SY_CONFIG_CHECK(r.manifest().find(name) != nullptr, "checkpoint '{}' has no tensor '{}' (`moe-ckpt ls {}` lists "
                  "them)", path, name, path);
  const ckpt::TensorEntry& t = r.tensor(name);
  std::vector<float> v = r.read_all(group, t);
  ckpt::TensorStats s = ckpt::tensor_stats(v, bins);
  const int64_t n = static_cast<int64_t>(v.size());
  auto [b, e] = slice.empty() ? std::pair<int64_t, int64_t>{0, std::min<int64_t>(n, 8)} : parse_slice(slice, n);
  std::vector<float> vals(v.begin() + b, v.begin() + e);
  json j = {{"name", name}, {"group", group}, {"shape", t.shape}, {"file", t.file}, {"count", s.count},
            {"min", s.min}, {"max", s.max}, {"mean", s.mean}, {"std", s.std}, {"norm", s.norm}, {"nan", s.nan},
            {"inf", s.inf}, {"histogram", s.histogram}, {"slice", {b, e}}, {"values", vals}};
  if (as_json) {
    print_json(j);
    return 0;
  }
  std::cout << fmt::format("{} [{}] {} in {}\n  min {:.6g}  max {:.6g}  mean {:.6g}  std {:.6g}  norm {:.6g}  NaN {}  Inf {}\n",
                           name, group, shape_str(t.shape), t.file, s.min, s.max, s.mean, s.std, s.norm, s.nan, s.inf);
  int64_t peak = 1;
  for (int64_t c : s.histogram) peak = std::max(peak, c);
  for (size_t i = 0; i < s.histogram.size(); ++i) {
    double lo = s.min + (s.max - s.min) * static_cast<double>(i) / static_cast<double>(s.histogram.size());
    std::cout << fmt::format("  {:>+12.5g} | {:<40} {}\n", lo, std::string(static_cast<size_t>(40 * s.histogram[i] / peak), '#'),
                             s.histogram[i]);
  }
  std::cout << fmt::format("  [{}:{}] {}\n", b, e, fmt::join(vals, " "));
  return 0;
}

int cmd_verify(const std::string& path, bool as_json) {
  std::vector<std::string> problems = ckpt::verify(path);
  size_t tensors = 0;
  bool sealed = true;
  if (problems.empty()) {
    ckpt::Reader r(path);
    tensors = r.manifest().tensors.size(), sealed = r.manifest().sealed;
  }
  if (as_json) {
    print_json({{"path", path}, {"ok", problems.empty()}, {"sealed", sealed}, {"problems", problems}});
  } else if (problems.empty()) {
    std::cout << fmt::format("{}: OK ({} tensors, {} datasets, every checksum matches{})\n", path, tensors, 3 * tensors,
                             sealed ? "; metadata sealed, every shard belongs to the manifest"
                                    : "; format 1: its metadata and shard identities carry no checksums");
  } else {
    std::cout << fmt::format("{}: {} problem{}\n", path, problems.size(), problems.size() == 1 ? "" : "s");
    for (const std::string& p : problems) std::cout << "  " << p << "\n";
  }
  return problems.empty() ? 0 : 1;
}

int cmd_diff(const std::string& a, const std::string& b, bool moments, bool as_json) {
  const auto ra = open_checkpoint(a), rb = open_checkpoint(b);
  ckpt::Diff d = ckpt::diff(*ra, *rb, moments);
  bool same = d.only_a.empty() && d.only_b.empty();
  for (const auto& row : d.rows) same = same && !row.shape_differs && row.max_abs == 0;
  if (as_json) {
    json rows = json::array();
    for (const auto& row : d.rows)
      rows.push_back({{"name", row.name}, {"group", row.group}, {"max_abs", row.max_abs}, {"max_rel", row.max_rel},
                      {"shape_differs", row.shape_differs}});
    print_json({{"a", a}, {"b", b}, {"identical", same}, {"only_in_a", d.only_a}, {"only_in_b", d.only_b},
                {"tensors", rows}});
    return same ? 0 : 1;
  }
  std::sort(d.rows.begin(), d.rows.end(), [](const auto& x, const auto& y) { return x.max_rel > y.max_rel; });
  size_t w = 4;
  for (const auto& row : d.rows) w = std::max(w, row.name.size());
  std::cout << fmt::format("{:<{}}  {:<7} {:>12} {:>12}\n", "name", w, "group", "max abs", "max rel");
  for (const auto& row : d.rows)
    std::cout << (row.shape_differs ? fmt::format("{:<{}}  {:<7} shapes differ\n", row.name, w, row.group)
                                    : fmt::format("{:<{}}  {:<7} {:>12.4g} {:>12.4g}\n", row.name, w, row.group,
                                                  row.max_abs, row.max_rel));
  for (const auto& n : d.only_a) std::cout << "only in " << a << ": " << n << "\n";
  for (const auto& n : d.only_b) std::cout << "only in " << b << ": " << n << "\n";
  std::cout << (same ? "identical\n" : "the checkpoints differ\n");
  return same ? 0 : 1;
}

int cmd_repack(const std::string& path, const std::string& out, bool single, GridShape shape, bool zero1,
               bool as_json) {
  const auto reader = open_checkpoint(path);
  ckpt::Reader& r = *reader;
  ckpt::Manifest m = r.manifest();
  std::vector<std::string> files(m.tensors.size(), ".");
  if (single) {
    m.world = m.pp = m.dp = m.ep = 1;
  } else {
    RunConfig cfg = parse_config(m.config_toml, path + " (its config)");
    const int64_t experts = cfg.model.experts_gcd();
    const int64_t world = shape.pp * shape.dp;
    GridShape s = resolve_layout(world, shape, experts, "--pp/--dp/--ep",
                                 cfg.model.uniform_experts() ? "" : cfg.model.experts_text());
    ParamLayout full(cfg.model);
    std::vector<ckpt::TensorHome> homes;
    RunConfig sized = cfg;
    sized.parallel.pp = s.pp;
    if (sized.parallel.microbatches > 0) sized.train.grad_accum = sized.parallel.microbatches;
    std::unique_ptr<PipelinePlan> plan;
    if (s.pp > 1) plan = std::make_unique<PipelinePlan>(plan_pipeline(sized, s.pp));
    for (const ParamInfo& p : full.params())
      homes.push_back({p.numel(), p.expert, plan ? plan->home_rank(p.layer, p.kind == ParamKind::embed) : -1,
                       p.expert >= 0 ? cfg.model.experts_at(p.layer) : 0});
    std::vector<int64_t> writers = ckpt::assign_writers(homes, world, s.dp, s.ep, cfg.model.moe.experts);
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      const int64_t index = m.tensors[i].index;
      SY_CONFIG_CHECK(index >= 0 && index < static_cast<int64_t>(writers.size()), "{}: tensor '{}' has index {}, "
                      "the model has {} tensors", path, m.tensors[i].name, index, writers.size());
      files[i] = ckpt::shard_file_name(writers[static_cast<size_t>(index)]);
    }
    m.world = world, m.pp = s.pp, m.dp = s.dp, m.ep = s.ep;
  }
  m.zero1 = zero1 ? 1 : 0;
  // Like reshard and export, consolidate creates the directories above its output.
  const std::filesystem::path parent = std::filesystem::absolute(out).parent_path();
  if (single && !std::filesystem::exists(parent)) std::filesystem::create_directories(parent);
  ckpt::repack(r, out, m, files);
  if (as_json) {
    print_json({{"source", path}, {"out", out}, {"kind", single ? "consolidated file" : "sharded directory"},
                {"step", m.step}, {"tensors", m.tensors.size()}, {"layout", layout_json(m)}});
    return 0;
  }
  std::cout << fmt::format("wrote {} ({})\n", out,
                           single ? "one file" : fmt::format("shards for pp {} x dp {}, ep {}", m.pp, m.dp, m.ep));
  return 0;
}

int cmd_export(const std::string& path, const std::string& out, const std::string& format, bool as_json) {
  const ExportFormat f = parse_export_format(format);
  const auto reader = open_checkpoint(path);
  ckpt::Reader& r = *reader;
  const ExportResult res = export_safetensors(r, out, f);
  if (as_json) {
    print_json({{"source", path}, {"out", res.dir}, {"format", res.format}, {"architecture", res.architecture},
                {"step", r.manifest().step}, {"tensors", res.tensors}, {"bytes", res.bytes},
                {"files", {"model.safetensors", "config.json"}}});
    return 0;
  }
  std::cout << fmt::format("wrote {0}/model.safetensors ({1} tensors, {2:.1f} MiB) and {0}/config.json ({3}, {4} "
                           "format)\n", out, res.tensors, static_cast<double>(res.bytes) / (1 << 20), res.architecture,
                           res.format);
  return 0;
}

// Like consolidate, import and upcycle create the directories above their output file.
// The directories made for `out`: removed (when still empty) unless keep() is called,
// so a refused import or upcycle leaves nothing behind, its new parents included.
class NewParents {
 public:
  explicit NewParents(const std::string& out) {
    namespace fs = std::filesystem;
    const fs::path parent = fs::absolute(out).parent_path();
    for (fs::path p = parent; !p.empty() && !fs::exists(fs::symlink_status(p)); p = p.parent_path()) {
      made_.push_back(p);  // deepest first
      if (p == p.parent_path()) break;
    }
    try {
      if (!made_.empty()) fs::create_directories(parent);
    } catch (...) {
      remove_made();  // the destructor does not run when the constructor throws
      throw;
    }
  }
  NewParents(const NewParents&) = delete;
  NewParents& operator=(const NewParents&) = delete;
  ~NewParents() { remove_made(); }
  void keep() { made_.clear(); }

 private:
  void remove_made() {
    std::error_code ec;
    for (const std::filesystem::path& p : made_) std::filesystem::remove(p, ec);  // only empty directories go
  }
  std::vector<std::filesystem::path> made_;
};

int cmd_import(const std::string& dir, const std::string& out, bool as_json) {
  NewParents parents(out);
  const ImportResult res = import_safetensors(dir, out);
  parents.keep();
  if (as_json) {
    print_json({{"source", dir}, {"out", res.out}, {"format", res.format}, {"tensors", res.tensors},
                {"files", res.files}, {"switchyard_config", res.metadata}, {"step", 0}});
    return 0;
  }
  std::cout << fmt::format("wrote {} ({} format, {} tensors from {} safetensors file{}; config {}; weights only, "
                           "step 0)\n", res.out, res.format, res.tensors, res.files, res.files == 1 ? "" : "s",
                           res.metadata ? "from the export's switchyard metadata and config.json"
                                        : "from config.json over the built-in defaults");
  return 0;
}

int cmd_upcycle(const std::string& path, const std::string& out, const UpcycleOptions& o, bool as_json) {
  const auto reader = open_checkpoint(path);
  NewParents parents(out);
  const UpcycleResult res = upcycle(*reader, out, o);
  parents.keep();
  if (as_json) {
    print_json({{"source", path}, {"out", res.out}, {"first_moe_layer", res.first_moe_layer},
                {"moe_layers", res.moe_layers}, {"experts", res.experts}, {"top_k", res.top_k},
                {"granularity", res.granularity}, {"dense_hidden", res.dense_hidden},
                {"expert_hidden", res.expert_hidden}, {"noise", o.noise}, {"exact", res.exact}});
    return 0;
  }
  std::cout << fmt::format("wrote {}: layers {}..{} upcycled to {} experts of width {} (dense {} / granularity {}), "
                           "top-{}; {}\n", res.out, res.first_moe_layer, res.first_moe_layer + res.moe_layers - 1,
                           res.experts, res.expert_hidden, res.dense_hidden, res.granularity, res.top_k,
                           res.exact ? "computes the dense model at step 0 (up to FP32 round-off)"
                                     : "NOT the dense model at step 0 (noise > 0, or top-k not a multiple of the "
                                       "granularity)");
  return 0;
}

int cmd_grow(const std::string& path, const std::string& out, const std::string& layers, GrowOptions o, bool as_json) {
  if (layers != "all") {
    size_t at = 0;
    while (at <= layers.size()) {
      const size_t comma = std::min(layers.find(',', at), layers.size());
      const std::string item = layers.substr(at, comma - at);
      int64_t l = -1;
      const auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), l);
      SY_CONFIG_CHECK(!item.empty() && ec == std::errc() && p == item.data() + item.size(),
                      "grow: --layer '{}': expected block numbers separated by commas (e.g. 1,3) or 'all'", layers);
      o.layers.push_back(l);
      at = comma + 1;
    }
  }
  const auto reader = open_checkpoint(path);
  const GrowResult res = grow_experts(*reader, out, o);
  if (as_json) {
    print_json({{"source", path}, {"out", out}, {"step", reader->manifest().step}, {"experts_before", res.before},
                {"experts_after", res.after}});
    return 0;
  }
  std::cout << fmt::format("wrote {} (step {}): experts per MoE layer {} -> {}; resume it with {} in the config\n",
                           out, reader->manifest().step, fmt::join(res.before, "/"), fmt::join(res.after, "/"),
                           res.config_experts);
  return 0;
}

// verify reports a damaged checkpoint as a problem (exit 1), even when it is
// too damaged to be recognised as one; a path that does not exist is bad input.
int cmd_verify_path(const std::string& path, bool as_json) {
  std::string resolved;
  try {
    resolved = ckpt::resolve_checkpoint(path);
  } catch (const ConfigError& e) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw;
    if (as_json)
      print_json({{"path", path}, {"ok", false}, {"problems", {e.what()}}});
    else
      std::cout << fmt::format("{}: 1 problem\n  {}\n", path, e.what());
    return 1;
  }
  return cmd_verify(resolved, as_json);
}

}  // namespace

// A whole number 0..2^63-1: CLI11's own conversion turns a larger one into 2^63-1 (strtoll saturates).
const CLI::Validator kSeed(
    [](std::string& s) -> std::string {
      int64_t v = 0;
      const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      return !s.empty() && ec == std::errc() && p == s.data() + s.size() && v >= 0
                 ? ""
                 : "'" + s + "' is not a whole number from 0 to 9223372036854775807";
    },
    "");

int main(int argc, char** argv) {
  CLI::App app{"moe-ckpt: inspect, check, compare and convert Switchyard checkpoints"};
  sy::cli::setup(app, "moe-ckpt");
  app.require_subcommand(1);
  app.fallthrough();  // --json after the subcommand too
  bool as_json = false;
  app.add_flag("--json", as_json, "machine-readable output (one JSON document), before or after the subcommand");
  std::string ckpt, other, name, out, group = "params", slice, format = "mixtral";
  int bins = 20;
  bool moments = false, zero1 = false;
  int64_t pp = 1, dp = 0, ep = 0;
  const char* ckpt_help = "checkpoint directory, consolidated file, or run / checkpoints directory (its latest)";
  auto* ls = app.add_subcommand("ls", "tensors: shape, dtype, shard file, bytes");
  auto* info = app.add_subcommand("info", "step, tokens, layout, config, version, timestamps, metrics");
  auto* loads = app.add_subcommand("loads", "expert-load statistics recorded at the checkpoint's step");
  auto* show = app.add_subcommand("show", "one tensor: min/max/mean/std/norm, NaN/Inf, histogram, a slice");
  auto* verify = app.add_subcommand("verify", "checksums, completeness, shapes (exit 1 naming what is wrong)");
  auto* diff = app.add_subcommand("diff", "per-tensor max abs / rel differences, missing and extra tensors");
  auto* consolidate = app.add_subcommand("consolidate", "write one unsharded file");
  auto* reshard = app.add_subcommand("reshard", "rewrite the shards for another layout");
  auto* exp = app.add_subcommand("export", "export the weights as safetensors + config.json (Mixtral or "
                                           "DeepSeek-V3 names)");
  auto* imp = app.add_subcommand("import", "import Hugging Face safetensors (the Mixtral or DeepSeek-V3 layout "
                                           "export writes) as a consolidated checkpoint (weights only, step 0)");
  auto* upc = app.add_subcommand("upcycle", "turn a dense model's SwiGLU FFNs into routed experts (a consolidated "
                                            "checkpoint, weights only, step 0)");
  sy::UpcycleOptions up;
  imp->add_option("dir", ckpt, "directory with config.json and model.safetensors (or its index and shards)")
      ->required();
  imp->add_option("out", out, "output checkpoint file (must not exist)")->required();
  upc->add_option("checkpoint", ckpt, ckpt_help)->required();
  upc->add_option("out", out, "output checkpoint file (must not exist)")->required();
  upc->add_option("--experts", up.experts, "routed experts per MoE layer (E)")
      ->required()
      ->default_str("")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  upc->add_option("--top-k", up.top_k, "experts per token (K)")->required()->default_str("")->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  upc->add_option("--granularity", up.granularity, "G: each expert is one of G segments of the dense FFN (width / G)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  upc->add_option("--noise", up.noise, "relative Gaussian noise on the expert weights: w * (1 + S n)")
      ->check(sy::cli::finite_range(0.0, 1e6));
  upc->add_option("--seed", up.seed, "seed of the router init and the noise (default: the checkpoint's train.seed)")
      ->default_str("")
      ->check(kSeed);
  upc->add_option("--layers", up.layers, "layers to upcycle, A-B or A,B,...: from one layer to the last (default "
                                         "all)");
  
  auto* grow = app.add_subcommand("grow", "add routed experts to MoE layers of a trained checkpoint (new "
                                           "consolidated checkpoint: weights, router rows, bias, zero moments)");
  std::string grow_layers, grow_init = "copy";
  GrowOptions gopt;
  double new_bias = 0;
  grow->add_option("--layer", grow_layers, "blocks to grow: L[,L...] (model.n_layers numbering) or all")->required();
  grow->add_option("--add", gopt.add, "experts added to each chosen layer")->required()->check(
      CLI::Range(int64_t{1}, int64_t{4096}));
  grow->add_option("--init", grow_init, "copy (the source expert), noise (copy + relative Gaussian noise), fresh "
                                        "(the model's init)")->check(CLI::IsMember({"copy", "noise", "fresh"}));
  grow->add_option("--seed", gopt.seed, "seed of the noise / fresh draws");
  grow->add_option("--noise", gopt.noise, "noise: standard deviation relative to each source tensor's")
      ->check(CLI::Range(0.0, 100.0));
  grow->add_option("--ep", gopt.ep, "check that every layer's new count splits over this many expert-parallel ranks")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  auto* nb = grow->add_option("--new-bias", new_bias, "balancing bias of the new experts (default: the source's; "
                                                      "fresh: 0); a large negative value keeps them unchosen");
  for (auto* c : {ls, info, loads, show, verify, diff, consolidate, reshard, exp, grow})
    c->add_option("checkpoint", ckpt, ckpt_help)->required();
  grow->add_option("out", out, "output file (must not exist)")->required();
  show->add_option("name", name, "tensor name (see ls)")->required();
  show->add_option("--group", group, "params, adam_m or adam_v")->check(CLI::IsMember({"params", "adam_m", "adam_v"}));
  show->add_option("--slice", slice, "BEGIN:END flat elements to print (default 0:8)");
  show->add_option("--bins", bins, "histogram bins")->check(CLI::Range(1, 10000));
  diff->add_option("other", other, "second checkpoint (the same forms)")->required();
  diff->add_flag("--moments", moments, "compare the AdamW moments too");
  consolidate->add_option("out", out, "output file (must not exist)")->required();
  reshard->add_option("out", out, "output directory (must not exist)")->required();
  reshard->add_option("--pp", pp, "pipeline stages")->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  reshard->add_option("--dp", dp, "data-parallel ranks")
      ->required()
      ->default_str("")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  reshard->add_option("--ep", ep, "expert-parallel ranks (0: gcd(dp, experts))")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  reshard->add_flag("--zero1", zero1, "record the layout as ZeRO-1");
  exp->add_option("out", out, "output directory (must not exist)")->required();
  exp->add_option("--format", format, "mixtral (alias safetensors) or deepseek-v3")
      ->check(CLI::IsMember({"mixtral", "safetensors", "deepseek-v3"}));
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;
  return sy::cli::guarded("moe-ckpt", [&]() -> int {
    using sy::ckpt::resolve_checkpoint;
    if (*verify) return cmd_verify_path(ckpt, as_json);
    if (*imp) {
      sy::cli::check_new_output(out, "the output file");
      return cmd_import(ckpt, out, as_json);
    }
    const std::string path = resolve_checkpoint(ckpt);
    if (*ls) return cmd_ls(path, as_json);
    if (*info) return cmd_info(path, as_json);
    if (*loads) return cmd_loads(path, as_json);
    if (*show) return cmd_show(path, name, group, slice, bins, as_json);
    if (*diff) return cmd_diff(path, resolve_checkpoint(other), moments, as_json);
    if (*consolidate || *reshard) {
      sy::cli::check_new_output(out, *consolidate ? "the output file" : "the output directory");
      return cmd_repack(path, out, bool(*consolidate), {pp, dp, ep}, zero1, as_json);
    }
    if (*exp) return cmd_export(path, out, format, as_json);
    if (*upc) {
      // "" is the default (every layer), but an explicit --layers '' (an unset shell variable?) names none
      SY_CONFIG_CHECK(upc->get_option("--layers")->count() == 0 || !up.layers.empty(),
                      "--layers '': an empty list names no layer (omit --layers to upcycle every layer)");
      sy::cli::check_new_output(out, "the output file");
      return cmd_upcycle(path, out, up, as_json);
    }
    if (*grow) {
      gopt.init = grow_init == "fresh" ? GrowInit::fresh : grow_init == "noise" ? GrowInit::noise : GrowInit::copy;
      if (nb->count() > 0) {
        SY_CONFIG_CHECK(std::isfinite(new_bias) && std::abs(new_bias) <= 1e30, "grow: --new-bias {} must be finite "
                        "(at most 1e30 in magnitude)", new_bias);
        gopt.new_bias = static_cast<float>(new_bias);
      }
      sy::cli::check_new_output(out, "the output file");
      return cmd_grow(path, out, grow_layers, gopt, as_json);
    }
    SY_CONFIG_FAIL("no subcommand (see --help)");
  });
}
