// moe-eval: measure a checkpoint on held-out data without training.
//   moe-eval CHECKPOINT [--data FILE...] [--format text|bin] [--batches N] [--batch B]
//            [--capacity-factor F] [--threads N] [--json]
// CHECKPOINT is a checkpoint directory, a consolidated file, or a run /
// checkpoints directory (its `latest`), written by any layout. Prints the
// mean cross-entropy and perplexity, per MoE layer the share of routed picks
// each expert received and the share capacity dropped, tokens and timing: a
// table, or one JSON document with --json.
//
// Without --data it evaluates the run's validation set with the windows and
// batches validation uses (train.val_batches batches of dp x micro_batch
// sequences), so with moe.eval_capacity_factor = 0 (dropless, the default)
// its loss is the val_loss moe-train logged at that step. With --data, the
// files (format: --format, else the run's data.format) are evaluated whole:
// --batches x --batch windows of seq_len + 1 tokens spread evenly over them.
// One process; no mpirun needed.
// Exit codes: 0 success; 1 a failure; 2 bad input (flags, checkpoint, data).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>
#include <memory>
#include <new>
#include <unistd.h>

#include "apps/cli.h"
#include "apps/device.h"
#include "core/check.h"
#include "core/cpu.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "infer/decoder.h"
#include "infer/eval.h"
#include "kernels/cpu/blas.h"

namespace {

std::string capacity_text(double f) { return f > 0 ? fmt::format("{:g}", f) : "0 (dropless)"; }

}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"Switchyard: loss, perplexity and expert loads of a checkpoint on held-out data"};
  sy::cli::setup(app, "moe-eval");
  std::string checkpoint, format;
  std::vector<std::string> data;
  int64_t batches = 0, batch = 0, threads = 0;
  double capacity = -1;
  bool as_json = false;
  app.add_option("checkpoint", checkpoint, "checkpoint directory, consolidated file, or run directory (its latest)")
      ->required();
  app.add_option("--data", data, "token files or glob patterns to evaluate (default: the run's validation set)")
      ->expected(1, -1);
  app.add_option("--format", format, "format of the --data files: text (bytes) or bin (llm.c uint16 shards); "
                 "default: the run's data.format")
      ->check(CLI::IsMember({"text", "bin"}));
  app.add_option("--batches", batches, "batches to evaluate (default: train.val_batches, or as many as make the "
                 "validation windows at --batch)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--batch", batch, "sequences per batch (default: the run's validation batch, dp x micro_batch); "
                 "capacity is decided over one batch")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--capacity-factor", capacity, "expert capacity factor of the evaluation (default: the run's "
                 "moe.eval_capacity_factor; 0 = dropless)")
      ->check(sy::cli::finite_range(0.0, 1e6));
  app.add_option("--threads", threads, "CPU threads; 0 = OMP_NUM_THREADS, else OpenMP's default")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  std::string device = "cpu";
  app.add_option("--device", device, "where the model runs: cpu, or cuda (a GPU; this tool must be built with "
                 "CUDA)")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--json", as_json, "print one JSON document instead of the table");
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;
  return sy::cli::guarded("moe-eval", [&]() -> int {
    SY_CONFIG_CHECK(format.empty() || !data.empty(), "--format describes --data files; give --data too");
    sy::LoadedModel m = sy::load_model(checkpoint);
    const sy::RunConfig& rc = m.config;
    const sy::ModelConfig& mc = rc.model;
    const int64_t T = mc.seq_len;
    if (capacity < 0) capacity = mc.moe.eval_capacity_factor;

    sy::Ops ops;
    ops.be = &sy::cli::open_device(device);
    ops.bf16 = rc.precision.recipe == sy::Recipe::bf16;  // as validation computes it; FP8 recipes run in FP32 here
    if (threads > 0) {
      const int cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
      const int blas_max = ops.b().info().max_threads;
      const int limit = blas_max > 0 ? std::min(std::max(cpus, 1), blas_max) : std::max(cpus, 1);
      SY_CONFIG_CHECK(threads <= limit, "--threads {} is more than this machine can use: {} CPUs{}; use at most {}",
                      threads, cpus, blas_max > 0 ? fmt::format(", OpenBLAS built for at most {} threads", blas_max) : "",
                      limit);
      ops.b().set_threads(static_cast<int>(threads));
    }

    // The data: the run's validation set, or the given files whole.
    const bool own = data.empty();
    const std::string fmt_name = own || format.empty() ? option_name(rc.data.format) : format;
    // --data checked under its own name first (DataFiles names its train patterns "data.train")
    if (!own) sy::expand_patterns(data, "--data");
    std::unique_ptr<sy::DataFiles> files;
    try {
      files = own ? std::make_unique<sy::DataFiles>(fmt_name, rc.data.train, rc.data.val, rc.data.val_fraction,
                                                    mc.vocab_size)
                  : std::make_unique<sy::DataFiles>(fmt_name, data, std::vector<std::string>{}, 0.0, mc.vocab_size);
    } catch (const sy::ConfigError& e) {
      SY_CONFIG_FAIL("{}{}", e.what(), own ? fmt::format(" (the validation data of {}'s configuration; name other "
                                                         "files with --data)", m.path) : "");
    }
    const sy::TokenDataset& set = own ? files->val() : files->train();
    SY_CONFIG_CHECK(set.windows(T + 1) > 0, "{}: {} has no window of seq_len + 1 = {} tokens to evaluate",
                    own ? "the run's validation data" : fmt::format("--data {}", fmt::join(data, " ")), set.describe(),
                    T + 1);

    // Windows and batches: by default those of the run's validation.
    // (A configuration saved unresolved holds micro_batch 0: its share of the global batch then.)
    const int64_t micro = rc.train.micro_batch > 0
                              ? rc.train.micro_batch
                              : std::max<int64_t>(1, rc.train.global_batch / std::max<int64_t>(1, m.dp * rc.train.grad_accum));
    const int64_t val_batch = m.dp * micro;
    const int64_t val_windows = rc.train.val_batches * val_batch;
    const bool batch_given = batch > 0;
    if (batch == 0) batch = val_batch;
    if (batches == 0) {
      SY_CONFIG_CHECK(val_windows % batch == 0, "--batch {} does not divide the {} validation windows (train.val_batches "
                      "{} x dp {} x micro_batch {}); give --batches too", batch, val_windows, rc.train.val_batches,
                      m.dp, micro);
      batches = val_windows / batch;
    }
    const int64_t windows = batches * batch;

    // One batch's activations must fit: its logits alone are batch x seq_len x vocab floats (a lower bound). A
    // batch past the machine's memory, or one whose buffers cannot be had, is a --batch too large (exit 2), not a
    // crash or an anonymous "out of memory".
    const auto too_big = [&](const std::string& why) {
      return fmt::format("{}batches of {} sequences x {} tokens do not fit in memory ({}); use a smaller --batch "
                         "(and more --batches)", batch_given ? fmt::format("--batch {}: ", batch) : "", batch,
                         T, why);
    };
    const double logit_bytes = 4.0 * static_cast<double>(batch) * static_cast<double>(T) *
                               static_cast<double>(mc.vocab_size);
    const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    SY_CONFIG_CHECK(ram <= 0 || logit_bytes < ram, "{}",
                    too_big(fmt::format("their logits alone take {:.1f} GiB, the machine has {:.1f} GiB",
                                        logit_bytes / (1 << 30), ram / (1 << 30))));
    std::unique_ptr<sy::Evaluator> evp;
    try {
      std::vector<float> params = std::move(m.params), bias = std::move(m.bias);
      evp = std::make_unique<sy::Evaluator>(mc, std::move(params), std::move(bias), batch, capacity, ops);
      sy::Batcher batcher(set, set, T, batch, 1, batches, static_cast<uint64_t>(rc.train.seed), mc.vocab_size);
      std::vector<int32_t> in(static_cast<size_t>(batch * T)), tg(in.size());
      for (int64_t b = 0; b < batches; ++b) {
        batcher.val_batch(b, 0, in.data(), tg.data());
        evp->add(in.data(), tg.data());
      }
    } catch (const std::bad_alloc&) {
      SY_CONFIG_FAIL("{}", too_big("an allocation failed"));
    }
    const sy::Evaluator& ev = *evp;
    const sy::EvalStats& s = ev.stats();
    const double tok_s = s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0;
    std::vector<std::string> names;
    for (const sy::Segment& seg : set.segments()) names.push_back(seg.file);

    if (as_json) {
      nlohmann::json layers = nlohmann::json::array();
      for (size_t l = 0; l < s.load.size(); ++l)
        layers.push_back({{"layer", s.moe_layer[l]},
                          {"load", s.load_fraction(l)},
                          {"picks", s.picks[l]},
                          {"dropped", s.dropped[l]},
                          {"drop_fraction", s.drop_fraction(l)}});
      nlohmann::json j = {{"checkpoint", m.path},
                          {"step", m.step},
                          {"data", own ? "validation" : "files"},
                          {"files", names},
                          {"format", fmt_name},
                          {"batches", batches},
                          {"batch", batch},
                          {"seq_len", T},
                          {"windows", windows},
                          {"capacity_factor", capacity},
                          {"precision", ops.bf16 ? "bf16" : "fp32"},
                          {"device", ops.b().name()},
                          {"loss", s.loss()},
                          {"perplexity", s.perplexity()},
                          {"tokens", s.tokens},
                          {"seconds", s.seconds},
                          {"tokens_per_second", tok_s},
                          {"moe_layers", layers}};
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return 0;
    }
    std::string out = fmt::format(
        "moe-eval: {} (step {})\n"
        "data    : {} ({}), {} batches x {} sequences of {} tokens\n"
        "capacity: {}   precision: {}\n"
        "loss {:.6f} | perplexity {:.4f} | {} tokens in {:.3f} s | {:.0f} tokens/s\n",
        m.path, m.step, own ? "the run's validation set" : "--data", set.describe(), batches, batch, T,
        capacity_text(capacity), ops.bf16 ? "bf16 GEMM operands" : "fp32", s.loss(), s.perplexity(), s.tokens,
        s.seconds, tok_s);
    if (!s.load.empty()) {
      out += fmt::format("{:>5} {:>7}  {}\n", "layer", "drop %", "load per expert (% of routed picks)");
      for (size_t l = 0; l < s.load.size(); ++l) {
        std::string loads;
        for (double f : s.load_fraction(l)) loads += fmt::format(" {:5.1f}", 100.0 * f);
        out += fmt::format("{:>5} {:>7.2f} {}\n", s.moe_layer[l], 100.0 * s.drop_fraction(l), loads);
      }
    }
    std::cout << out;
    return 0;
  });
}
