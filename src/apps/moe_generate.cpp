// moe-generate: sample text from a checkpoint, with a KV cache.
//   moe-generate CHECKPOINT --prompt TEXT [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
// CHECKPOINT is a checkpoint directory, a consolidated file, or a run /
// checkpoints directory (its `latest`), written by any layout. --prompt is
// encoded with the checkpoint's tokenizer (a run with data.tokenizer stores
// its SentencePiece model) or, without one, as bytes (byte-level models). The text goes
// to stdout as it is generated; a statistics line goes to stderr.
// --json --logits adds the logits of every prompt position (to compare an
// exported model against Switchyard; --max-new 0 computes only those).
// --device cuda decodes on a GPU (weights, KV cache and activations in its
// memory; apps/device.h); the default is the CPU.
// Exit codes: 0 success; 1 a failure; 2 bad input (flags, checkpoint, prompt, device).
#include <nlohmann/json.hpp>

#include <chrono>
#include <climits>
#include <iostream>
#include <optional>
#include <sstream>

#include "apps/cli.h"
#include "apps/device.h"
#include "core/check.h"
#include "core/cpu.h"
#include "data/tokenizer.h"
#include "infer/decoder.h"
#include "kernels/cpu/blas.h"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      long long v = std::stoll(item, &used);
      SY_CONFIG_CHECK(used == item.size(), "--prompt-ids: '{}' is not an integer", item);
      SY_CONFIG_CHECK(v >= 0 && v <= INT32_MAX, "--prompt-ids: token {} is negative or too large", item);
      ids.push_back(static_cast<int32_t>(v));
    } catch (const std::logic_error&) {
      SY_CONFIG_FAIL("--prompt-ids: '{}' is not an integer (want comma-separated token ids)", item);
    }
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"Switchyard: generate text from a checkpoint with a KV cache"};
  sy::cli::setup(app, "moe-generate");
  std::string checkpoint, prompt, prompt_ids;
  int64_t max_new = 200, context = 0;
  sy::SamplingOptions opt;
  bool no_cache = false, as_json = false, quiet = false, logits = false;
  std::string device = "cpu";
  app.add_option("checkpoint", checkpoint, "checkpoint directory, consolidated file, or run directory (its latest)")
      ->required();
  app.add_option("--prompt", prompt, "prompt text (the checkpoint's tokenizer, or bytes for byte-level models)");
  app.add_option("--prompt-ids", prompt_ids, "prompt as comma-separated token ids (any vocabulary)");
  auto* max_new_opt = app.add_option("--max-new", max_new, "tokens to generate (default: 200, or fewer if the context "
                                     "has less room after the prompt)")
                          ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app.add_option("--temperature", opt.temperature, "softmax temperature; 0 = greedy")
      ->check(sy::cli::finite_range(0.0, 1e6));
  app.add_option("--top-k", opt.top_k, "sample among the K most likely tokens; 0 = all")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app.add_option("--top-p", opt.top_p, "sample among the most likely tokens reaching probability P")
      ->check(sy::cli::finite_range(0.0, 1.0));
  app.add_option("--seed", opt.seed, "sampling seed: the same seed gives the same text")->check(sy::cli::kUint64);
  app.add_option("--context", context, "positions the KV cache holds; 0 = the model's seq_len")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  app.add_option("--device", device, "where the model runs: cpu, or cuda (a GPU; this tool must be built with "
                 "CUDA)")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--no-cache", no_cache, "recompute the whole sequence for every token (reference, benchmarks)");
  app.add_flag("--json", as_json, "print one JSON object (ids, text, statistics) instead of streaming text");
  app.add_flag("--logits", logits, "with --json: also the logits of every prompt position (\"prompt_logits\")");
  app.add_flag("--quiet", quiet, "no statistics line on stderr");
  if (auto rc = sy::cli::parse(app, argc, argv)) return *rc;
  return sy::cli::guarded("moe-generate", [&]() -> int {
    SY_CONFIG_CHECK(!logits || as_json, "--logits needs --json");
    SY_CONFIG_CHECK(opt.top_p > 0, "--top-p must be in (0, 1], got {}", opt.top_p);
    sy::LoadedModel m = sy::load_model(checkpoint);
    const sy::ModelConfig& mc = m.config.model;
    SY_CONFIG_CHECK(prompt.empty() || prompt_ids.empty(), "give --prompt or --prompt-ids, not both");
    std::vector<int32_t> ids;
    std::optional<sy::Tokenizer> tok;
    if (!m.tokenizer_model.empty()) {
      tok = sy::Tokenizer::from_bytes(m.tokenizer_model, m.path + ": its tokenizer_model");
      SY_CONFIG_CHECK(tok->pieces() <= mc.vocab_size, "{}: its tokenizer has {} pieces, more than model.vocab_size = "
                      "{}", m.path, tok->pieces(), mc.vocab_size);
    }
    const bool bytes = !tok && sy::byte_level(m.config);
    const bool text = tok || bytes;
    // The text of one id: a tokenizer's bytes (none for control pieces and for ids past its pieces, which a
    // model with a larger vocabulary can still sample), a byte, or the number.
    auto text_of = [&](int32_t id) -> std::string {
      if (tok) return id < tok->pieces() ? tok->bytes_of(id) : std::string();
      return bytes ? std::string(1, static_cast<char>(static_cast<uint8_t>(id))) : fmt::format(" {}", id);
    };
    auto decode = [&](const std::vector<int32_t>& v) {
      std::string s;
      for (int32_t id : v) s += text_of(id);
      return s;
    };
    if (!prompt_ids.empty()) {
      ids = parse_ids(prompt_ids);
    } else {
      SY_CONFIG_CHECK(!prompt.empty(), "an empty prompt: give --prompt TEXT (or --prompt-ids)");
      SY_CONFIG_CHECK(text, "{}: the model's vocabulary is {} tokens (data.format = \"{}\") and the checkpoint holds "
                      "no tokenizer (a run stores one when data.tokenizer names its SentencePiece model); give the "
                      "prompt as --prompt-ids", m.path, mc.vocab_size, option_name(m.config.data.format));
      ids = tok ? tok->encode(prompt) : sy::encode_bytes(prompt);
    }
    SY_CONFIG_CHECK(!ids.empty(), "an empty prompt");
    for (size_t i = 0; i < ids.size(); ++i)
      SY_CONFIG_CHECK(ids[i] >= 0 && ids[i] < mc.vocab_size, "prompt token {} (position {}) is outside the "
                      "vocabulary of {}", ids[i], i, mc.vocab_size);
    if (context == 0) context = mc.seq_len;
    if (max_new_opt->count() == 0)
      max_new = std::max<int64_t>(0, std::min<int64_t>(max_new, context - static_cast<int64_t>(ids.size())));
    const int64_t need = static_cast<int64_t>(ids.size()) + max_new;
    SY_CONFIG_CHECK(need <= context, "the prompt ({} tokens) plus --max-new {} needs {} positions, more than the "
                    "context of {} (the model was trained on seq_len {}); shorten them or raise --context",
                    ids.size(), max_new, need, context, mc.seq_len);

    sy::Ops ops;
    ops.be = &sy::cli::open_device(device);
    sy::Decoder dec(mc, std::move(m.params), std::move(m.bias), context, ops);
    const int64_t V = mc.vocab_size, prompt_len = static_cast<int64_t>(ids.size());
    const bool stream = !as_json;
    if (stream) {
      std::cout << (text ? decode(ids) : fmt::format("{}", fmt::join(ids, " "))) << std::flush;
    }
    auto t0 = Clock::now();
    const float* prefill = dec.extend(ids.data(), prompt_len);
    const double prefill_s = since(t0);
    std::vector<std::vector<float>> prompt_logits;
    if (logits)
      for (int64_t t = 0; t < prompt_len; ++t) prompt_logits.emplace_back(prefill + t * V, prefill + (t + 1) * V);
    const float* last = prefill + (prompt_len - 1) * V;
    auto t1 = Clock::now();
    for (int64_t i = 0; i < max_new; ++i) {
      const int64_t pos = static_cast<int64_t>(ids.size());
      int32_t next = sy::sample_token(last, V, opt, pos);
      ids.push_back(next);
      if (stream) std::cout << text_of(next) << std::flush;
      if (i + 1 == max_new) break;
      if (no_cache) {
        dec.reset();
        last = dec.extend(ids.data(), pos + 1) + pos * V;
      } else {
        last = dec.extend(&ids.back(), 1);
      }
    }
    const double decode_s = since(t1);
    const double tok_s = max_new > 0 ? static_cast<double>(max_new) / std::max(decode_s, 1e-9) : 0;
    const std::vector<int32_t> generated(ids.begin() + prompt_len, ids.end());
    if (as_json) {
      nlohmann::json j = {{"checkpoint", m.path},
                          {"step", m.step},
                          {"prompt_tokens", prompt_len},
                          {"new_tokens", max_new},
                          {"ids", generated},
                          {"prefill_seconds", prefill_s},
                          {"decode_seconds", decode_s},
                          {"tokens_per_second", tok_s},
                          {"cache", !no_cache},
                          {"device", dec.backend().name()},
                          {"cache_bytes_per_token", dec.cache_bytes_per_token()},
                          {"cache_bytes", dec.cache_bytes()},
                          {"forward_flops", dec.flops()}};
      if (text) j["text"] = decode(generated);
      // A byte-level or byte-fallback model's text need not be valid UTF-8 (any byte can be sampled): invalid bytes become
      // U+FFFD in "text" ("ids" holds the exact tokens) instead of failing the whole command.
      if (logits) j["prompt_logits"] = prompt_logits;
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else {
      std::cout << "\n";
    }
    if (!quiet)
      std::cerr << fmt::format("moe-generate: {} (step {}) on {}: {} prompt + {} new tokens; prefill {:.3f} s, {:.1f} "
                               "tokens/s {}; KV cache {} B/token (2 x {} layers x {} kv heads x {} x 4 B), {:.2f} MiB "
                               "for {} positions\n",
                               m.path, m.step, dec.backend().name(), prompt_len, max_new, prefill_s, tok_s,
                               no_cache ? "recomputing the sequence (no cache)" : "with the KV cache",
                               dec.cache_bytes_per_token(), mc.n_layers, mc.n_kv_heads, mc.head_size(),
                               static_cast<double>(dec.cache_bytes()) / (1 << 20), context);
    return 0;
  });
}
