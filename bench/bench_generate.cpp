// sy-bench-generate [CONFIG] [--set k=v ...] [--lengths 64,128,...] [--json FILE]
// Generation speed with and without the KV cache on one process, and cache
// memory per token for MHA / GQA / MQA variants of the model:
//  - cached: time per new token at sequence length n (prefill n - 1 tokens,
//    then single-token steps), which should stay flat as n grows apart from
//    the attention over the cache;
//  - uncached: the whole sequence recomputed for each new token, growing
//    with n (the baseline, measured in the same run); the ratio is the
//    cache's speed-up.
// Random weights (the config's init): cost does not depend on training.
// Never pass/fail.
#include <CLI/CLI.hpp>
#include <omp.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/cpu.h"
#include "core/timer.h"
#include "infer/decoder.h"
#include "kernels/cpu/blas.h"
#include "config/run.h"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<float> init_weights(const sy::ModelConfig& m, uint64_t seed) {
  sy::ParamLayout layout(m);
  std::vector<float> p(static_cast<size_t>(layout.total()));
  sy::init_params(p.data(), layout, seed);
  return p;
}

std::vector<int32_t> tokens(int64_t n, int64_t V) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13) % V);
  return t;
}

// Seconds per new token at length n, with the cache (mean of `steps` single-token steps).
double cached_per_token(sy::Decoder& dec, int64_t n, int64_t steps, int64_t V) {
  auto ids = tokens(n + steps, V);
  dec.reset();
  dec.extend(ids.data(), n - 1);
  auto t0 = Clock::now();
  for (int64_t i = 0; i < steps; ++i) dec.extend(ids.data() + n - 1 + i, 1);
  return since(t0) / static_cast<double>(steps);
}

// Seconds per new token at length n, recomputing the sequence.
double uncached_per_token(sy::Decoder& dec, int64_t n, int64_t steps, int64_t V) {
  auto ids = tokens(n + steps, V);
  auto t0 = Clock::now();
  for (int64_t i = 0; i < steps; ++i) {
    dec.reset();
    dec.extend(ids.data(), n + i);
  }
  return since(t0) / static_cast<double>(steps);
}

}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"Generation with and without the KV cache"};
  std::string config_path, json_path;
  std::vector<std::string> overrides;
  std::vector<int64_t> lengths = {64, 128, 256, 512, 1024};
  int64_t steps = 8, uncached_steps = 2;
  app.add_option("config", config_path, "TOML config (default: the built-in tiny)");
  app.add_option("--set", overrides, "override a key");
  app.add_option("--lengths", lengths, "sequence lengths")->delimiter(',');
  app.add_option("--steps", steps, "cached steps timed per length");
  app.add_option("--uncached-steps", uncached_steps, "uncached steps timed per length");
  app.add_option("--json", json_path, "also write the results here");
  CLI11_PARSE(app, argc, argv);
  try {
    sy::RunConfig cfg = config_path.empty()
                            ? sy::parse_config(sy::default_config_text(), "tiny (built in)", overrides)
                            : sy::load_config(config_path, overrides);
    const sy::ModelConfig& m = cfg.model;
    const int64_t max_len = *std::max_element(lengths.begin(), lengths.end());
    const sy::BlasInfo blas = sy::blas_info();
    std::cout << fmt::format("model {}: L={} C={} H={}/{} D={} E={} K={} | OpenBLAS {} kernels | {} threads\n",
                             cfg.run.name, m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_size(),
                             m.moe.experts, m.moe.top_k, blas.core, omp_get_max_threads());
    nlohmann::json out = {{"config", cfg.run.name}, {"blas_core", blas.core}, {"threads", omp_get_max_threads()}};
    {
      sy::Decoder dec(m, init_weights(m, 1), {}, max_len + std::max(steps, uncached_steps));
      std::cout << "\nms per generated token at sequence length n (uncached = recompute the sequence each token)\n";
      std::cout << fmt::format("{:>6} {:>10} {:>10} {:>9} {:>12} {:>12}\n", "n", "cached", "uncached", "speed-up",
                               "cached tok/s", "uncached tok/s");
      dec.extend(tokens(8, m.vocab_size).data(), 8);  // warm-up: thread pool, BLAS buffers
      for (int64_t n : lengths) {
        double c = cached_per_token(dec, n, steps, m.vocab_size);
        double u = uncached_per_token(dec, n, uncached_steps, m.vocab_size);
        std::cout << fmt::format("{:>6} {:>10.3f} {:>10.3f} {:>8.1f}x {:>12.1f} {:>12.1f}\n", n, 1e3 * c, 1e3 * u,
                                 u / c, 1 / c, 1 / u);
        out["lengths"].push_back({{"n", n}, {"cached_s", c}, {"uncached_s", u}, {"speedup", u / c}});
      }
    }
    // Cache memory per token and decode speed at the longest length for
    // kv-head counts from MHA down to MQA.
    std::cout << fmt::format("\nKV cache per token, and ms per token at n = {} (kv heads from MHA to MQA)\n", max_len);
    std::cout << fmt::format("{:>9} {:>8} {:>14} {:>12} {:>10}\n", "kv heads", "kind", "cache B/token",
                             "vs MHA", "ms/token");
    int64_t mha_bytes = 0;
    for (int64_t kv = m.n_heads; kv >= 1; kv /= 2) {
      if (m.n_heads % kv) continue;
      sy::ModelConfig v = m;
      v.n_kv_heads = kv;
      sy::Decoder dec(v, init_weights(v, 1), {}, max_len + steps);
      double c = cached_per_token(dec, max_len, steps, v.vocab_size);
      if (kv == m.n_heads) mha_bytes = dec.cache_bytes_per_token();
      std::string kind = kv == m.n_heads ? "MHA" : kv == 1 ? "MQA" : "GQA";
      std::cout << fmt::format("{:>9} {:>8} {:>14} {:>11.2f}x {:>10.3f}\n", kv, kind, dec.cache_bytes_per_token(),
                               static_cast<double>(dec.cache_bytes_per_token()) / static_cast<double>(mha_bytes),
                               1e3 * c);
      out["kv_heads"].push_back({{"kv_heads", kv}, {"cache_bytes_per_token", dec.cache_bytes_per_token()},
                                 {"cached_s", c}});
    }
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
    return 0;
  } catch (const sy::Error& e) {
    std::cerr << "sy-bench-generate: " << e.what() << "\n";
    return dynamic_cast<const sy::ConfigError*>(&e) ? 2 : 1;
  }
}
