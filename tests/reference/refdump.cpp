// sy-refdump CONFIG OUTDIR [--set k=v ...] [--steps S]
// Writes what the PyTorch reference (check_reference.py) needs to recompute
// and compare: the resolved config, initial weights, every batch, the
// step-0 logits, losses and gradients (before clipping), and S training
// steps' losses, gradient norms, expert loads and the final weights.
// Format: OUTDIR/meta.json (config, scalars, tensor index) + OUTDIR/tensors.bin.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "comm/comm.h"
#include "core/check.h"
#include "core/cpu.h"
#include "kernels/cpu/blas.h"
#include "model/transformer.h"
#include "config/run.h"
#include "train/trainer.h"

namespace {

class Dump {
 public:
  explicit Dump(const std::filesystem::path& dir) : bin_(dir / "tensors.bin", std::ios::binary | std::ios::trunc) {}
  template <class T>
  void add(const std::string& name, const T* data, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    index_.push_back({{"name", name}, {"shape", shape}, {"dtype", sizeof(T) == 4 && std::is_floating_point_v<T> ? "f32" : "i32"},
                      {"offset", offset_}});
    bin_.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * 4));
    offset_ += n * 4;
  }
  nlohmann::json index() const { return index_; }

 private:
  std::ofstream bin_;
  nlohmann::json index_ = nlohmann::json::array();
  int64_t offset_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"dump a Switchyard model and training run for the PyTorch reference"};
  std::string config, out;
  std::vector<std::string> overrides;
  int64_t steps = 10;
  app.add_option("config", config)->required();
  app.add_option("outdir", out)->required();
  app.add_option("--set", overrides);
  app.add_option("--steps", steps);
  CLI11_PARSE(app, argc, argv);
  sy::MpiEnv mpi(&argc, &argv);
  try {
    sy::RunConfig cfg = sy::load_config(config, overrides);
    cfg.train.steps = steps;
    std::filesystem::create_directories(out);
    sy::Trainer trainer(cfg, sy::Comm::world());
    const sy::ParamLayout& layout = trainer.model().layout();
    const sy::Dims& d = trainer.model().dims();
    const int64_t A = trainer.config().train.grad_accum;
    Dump dump(out);
    nlohmann::json meta;
    meta["config_toml"] = sy::to_toml(cfg);

    std::vector<float> params0(trainer.params(), trainer.params() + layout.total());
    for (const sy::ParamInfo& p : layout.params())
      dump.add("param0." + p.name, params0.data() + p.offset, p.shape.dims);

    // Batches of every step.
    std::vector<int32_t> in(d.N), tg(d.N);
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t a = 0; a < A; ++a) {
        trainer.batcher().train_batch(s, a, 0, in.data(), tg.data());
        dump.add(fmt::format("batch.{}.{}.inputs", s, a), in.data(), {d.B, d.T});
        dump.add(fmt::format("batch.{}.{}.targets", s, a), tg.data(), {d.B, d.T});
      }

    // Step 0 on a separate model instance: logits and raw gradients.
    sy::Transformer model(cfg.model, trainer.config().train.micro_batch);
    std::vector<float> grads(layout.total(), 0.f);
    std::vector<float> zero_bias(trainer.expert_bias().size(), 0.f);
    nlohmann::json mb_meta = nlohmann::json::array();
    for (int64_t a = 0; a < A; ++a) {
      trainer.batcher().train_batch(0, a, 0, in.data(), tg.data());
      sy::MicroBatchStats st = model.forward(params0.data(), zero_bias.data(), in.data(), tg.data(), false);
      if (a == 0) dump.add("step0.logits", model.logits(), {d.B, d.T, d.V});
      nlohmann::json m;
      m["loss"] = st.loss_sum / static_cast<double>(st.tokens);
      m["load"] = st.load;
      std::vector<double> aux, z, ent;
      for (const auto& r : st.router) aux.push_back(r.aux), z.push_back(r.z), ent.push_back(r.entropy);
      m["aux"] = aux;
      m["z"] = z;
      m["entropy"] = ent;
      m["dropped"] = st.dropped;
      m["router_margin"] = st.margin;
      mb_meta.push_back(m);
      model.forward(params0.data(), zero_bias.data(), in.data(), tg.data(), true, 1.0 / static_cast<double>(A));
      model.backward(params0.data(), grads.data());
    }
    meta["step0_micro_batches"] = mb_meta;
    for (const sy::ParamInfo& p : layout.params()) dump.add("grad0." + p.name, grads.data() + p.offset, p.shape.dims);

    // The training run itself.
    nlohmann::json run = nlohmann::json::array();
    for (int64_t s = 0; s < steps; ++s) {
      sy::StepStats st = trainer.step(s);
      run.push_back({{"loss", st.loss}, {"grad_norm", st.grad_norm}, {"lr", st.lr}, {"load", st.load},
                     {"router_margin", st.router_margin}});
    }
    meta["steps"] = run;
    for (const sy::ParamInfo& p : layout.params())
      dump.add("param_final." + p.name, trainer.params() + p.offset, p.shape.dims);
    dump.add("expert_bias_final", trainer.expert_bias().data(),
             {cfg.model.moe_layers(), cfg.model.moe.experts});
    meta["tensors"] = dump.index();
    std::ofstream(std::filesystem::path(out) / "meta.json") << meta.dump(1);
    return 0;
  } catch (const sy::Error& e) {
    std::cerr << "sy-refdump: " << e.what() << " (" << e.where() << ")\n";
    return 1;
  }
}
