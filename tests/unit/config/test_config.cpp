// The config schema: a resolved config printed as TOML parses back to itself.
#include <string>
#include <vector>

#include "config/layout.h"
#include "core/check.h"
#include "config/run.h"
#include "testing.h"

namespace sy {
namespace {

TEST(Config, ResolvedTomlParsesBackToTheSameConfig) {
  RunConfig a = parse_config(default_config_text(), "t", {"moe.score=sigmoid", "train.lr=0.5", "data.val=[\"x\", \"y\"]"});
  std::string text = to_toml(a);
  RunConfig b = parse_config(text, "t2");
  EXPECT_EQ(to_toml(b), text);
  EXPECT_EQ(b.model.moe.score, ScoreFn::sigmoid);
  EXPECT_EQ(b.data.val, (std::vector<std::string>{"x", "y"}));
  EXPECT_DOUBLE_EQ(b.train.lr, 0.5);
}

// Options are enums once read; the TOML spelling round-trips through the
// one name table of each.
template <class E>
void expect_round_trip(const std::vector<std::string>& names) {
  EXPECT_EQ(option_names<E>(), names);
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(parse_option<E>(names[i]), static_cast<E>(i));
    EXPECT_EQ(option_name(static_cast<E>(i)), names[i]);
  }
  EXPECT_FALSE(parse_option<E>("nonsense").has_value());
}

TEST(Config, OptionsAreEnumsWithOneNameTable) {
  expect_round_trip<Recipe>({"fp32", "fp8-tensor-current", "fp8-tensor-delayed", "fp8-block", "bf16"});
  expect_round_trip<GradFormat>({"e5m2", "e4m3"});
  expect_round_trip<Moments>({"fp32", "bf16"});
  expect_round_trip<Recompute>({"none", "full"});
  expect_round_trip<Transport>({"auto", "shm", "mpi", "hierarchical"});
  expect_round_trip<DataFormat>({"text", "bin"});
  expect_round_trip<pipe::ScheduleKind>({"gpipe", "1f1b", "interleaved", "zb"});
  EXPECT_EQ(pipe::schedule_name(pipe::ScheduleKind::zb), "zb");

  RunConfig a = parse_config(default_config_text(), "t",
                             {"precision.recipe=fp8-tensor-delayed", "precision.moments=bf16", "parallel.schedule=zb",
                              "parallel.transport=mpi", "parallel.recompute=full", "checkpoint.resume=runs/x/step_1"});
  EXPECT_EQ(a.precision.recipe, Recipe::fp8_tensor_delayed);
  EXPECT_EQ(a.precision.moments, Moments::bf16);
  EXPECT_EQ(a.parallel.schedule, pipe::ScheduleKind::zb);
  EXPECT_EQ(a.parallel.transport, Transport::mpi);
  EXPECT_EQ(a.parallel.recompute, Recompute::full);
  EXPECT_EQ(a.checkpoint.resume, ResumeMode::dir);
  EXPECT_EQ(a.checkpoint.resume_dir, "runs/x/step_1");
  RunConfig b = parse_config(to_toml(a), "t2");
  EXPECT_EQ(to_toml(b), to_toml(a));
  EXPECT_EQ(b.checkpoint.resume_dir, "runs/x/step_1");
  RunConfig h = parse_config(default_config_text(), "t", {"parallel.transport=hierarchical", "parallel.node_size=2"});
  EXPECT_EQ(h.parallel.transport, Transport::hierarchical);
  EXPECT_EQ(h.parallel.node_size, 2);
  EXPECT_EQ(to_toml(parse_config(to_toml(h), "t3")), to_toml(h));
  RunConfig c = parse_config(default_config_text(), "t", {"checkpoint.resume=none"});
  EXPECT_EQ(c.checkpoint.resume, ResumeMode::none);
  EXPECT_EQ(c.checkpoint.resume_dir, "");
}


// moe.experts per MoE layer: a list, or the allocation formula
// N_m = min + (max - min) (m / (M - 1))^gamma rounded to a multiple of experts_round.
TEST(Config, AllocationFormulaRoundsAsDocumented) {
  // M = 4, min 4, max 16, gamma 1: 4, 8, 12, 16 exactly.
  EXPECT_EQ(allocate_experts(4, 16, 1.0, 1, 4), (std::vector<int64_t>{4, 8, 12, 16}));
  // gamma 2: 4 + 12 * (0, 1/9, 4/9, 1) = 4, 5.33, 9.33, 16 -> nearest: 4, 5, 9, 16.
  EXPECT_EQ(allocate_experts(4, 16, 2.0, 1, 4), (std::vector<int64_t>{4, 5, 9, 16}));
  // ... to multiples of 4: 4, 5.33 -> 4, 9.33 -> 8, 16.
  EXPECT_EQ(allocate_experts(4, 16, 2.0, 4, 4), (std::vector<int64_t>{4, 4, 8, 16}));
  // A half rounds up: 2 + 3 * 0.5 = 3.5 -> 4.
  EXPECT_EQ(allocate_experts(2, 5, 1.0, 1, 3), (std::vector<int64_t>{2, 4, 5}));
  // One MoE layer gets experts_max.
  EXPECT_EQ(allocate_experts(4, 16, 1.0, 1, 1), (std::vector<int64_t>{16}));
}

TEST(Config, PerLayerExpertsResolveAndRoundTrip) {
  const std::vector<std::string> four = {"model.n_layers=4", "model.dense_layers=1"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), four.begin(), four.end());
    return parse_config(default_config_text(), "t", more);
  };
  RunConfig a = with({"moe.experts=[4, 8, 8]"});
  EXPECT_EQ(a.model.moe.experts, 8);
  EXPECT_EQ(a.model.experts_at(0), 0);
  EXPECT_EQ(a.model.experts_at(1), 4);
  EXPECT_EQ(a.model.experts_at(3), 8);
  EXPECT_EQ(a.model.experts_gcd(), 4);
  EXPECT_EQ(a.model.total_experts(), 20);
  RunConfig b = parse_config(to_toml(a), "t2");
  EXPECT_EQ(b.model.moe.layer_experts, (std::vector<int64_t>{4, 8, 8}));
  EXPECT_EQ(to_toml(b), to_toml(a));
  // Equal counts are the integer: the config (and checkpoints) of a uniform model.
  RunConfig u = with({"moe.experts=[8, 8, 8]"});
  EXPECT_TRUE(u.model.uniform_experts());
  EXPECT_EQ(to_toml(u), to_toml(with({"moe.experts=8"})));
  // The formula resolves into the list and is cleared (the list says it).
  RunConfig f = with({"moe.experts_min=4", "moe.experts_max=16", "moe.experts_gamma=2", "moe.experts_round=4"});
  EXPECT_EQ(f.model.moe.layer_experts, (std::vector<int64_t>{4, 8, 16}));
  EXPECT_EQ(f.model.moe.experts_max, 0);
  EXPECT_EQ(to_toml(parse_config(to_toml(f), "t3")), to_toml(f));
  // FLOPs: the router of each layer its own width.
  EXPECT_LT(layer_flops(a.model, 1), layer_flops(a.model, 2));
  EXPECT_EQ(layer_flops(a.model, 2), layer_flops(u.model, 2));
}

// A 4-layer model (layers 1-3 MoE) with `sets` is refused, the message holding `want`.
void fails(std::vector<std::string> sets, const std::string& want) {
  sets.insert(sets.begin(), {"model.n_layers=4", "model.dense_layers=1"});
  try {
    parse_config(default_config_text(), "t", sets);
    ADD_FAILURE() << "no error for " << want;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

TEST(Config, ExpertGroupErrorsNameTheKeyAndLayer) {
  // Each layer's experts split into whole groups: the layer is named.
  fails({"moe.experts=[8, 6, 8]", "moe.expert_groups=4"}, "moe.expert_groups = 4 does not divide the 6 experts of layer 2");
  fails({"moe.experts=8", "moe.expert_groups=3"}, "moe.expert_groups = 3 does not divide the 8 experts of layer 1");
  fails({"moe.experts=8", "moe.expert_groups=4", "moe.max_nodes_per_token=5"},
        "moe.max_nodes_per_token = 5 exceeds moe.expert_groups = 4");
  fails({"moe.experts=8", "moe.max_nodes_per_token=2"}, "moe.max_nodes_per_token = 2 exceeds moe.expert_groups = 1");
  // K experts must exist in M groups: 1 group of 2 experts cannot give 3.
  fails({"moe.experts=8", "moe.top_k=3", "moe.expert_groups=4", "moe.max_nodes_per_token=1"},
        "moe.max_nodes_per_token = 1 leaves 1 x 2 experts of layer 1");
  fails({"moe.expert_groups=65"}, "moe.expert_groups = 65 is out of range");
  // Valid: the limit binds with K = M x E / G exactly, and a limit of every group.
  RunConfig ok = parse_config(default_config_text(), "t", {"model.n_layers=4", "model.dense_layers=1", "moe.experts=8",
                              "moe.top_k=2", "moe.expert_groups=4", "moe.max_nodes_per_token=1"});
  EXPECT_TRUE(ok.model.moe.router_groups().on());
  EXPECT_FALSE(parse_config(default_config_text(), "t", {"moe.experts=8", "moe.expert_groups=4",
                            "moe.max_nodes_per_token=4"}).model.moe.router_groups().on());
  // The keys travel in the resolved TOML (checkpoints store it).
  EXPECT_NE(to_toml(ok).find("max_nodes_per_token = 1"), std::string::npos);
  EXPECT_EQ(to_toml(parse_config(to_toml(ok), "t2")), to_toml(ok));
}

TEST(Config, DispatchPayloadKeys) {
  RunConfig a = parse_config(default_config_text(), "t", {"parallel.dispatch_dtype=fp8", "precision.recipe=fp8-block"});
  EXPECT_EQ(a.parallel.dispatch_dtype, DispatchDtype::fp8);
  EXPECT_EQ(a.parallel.combine_dtype, CombineDtype::automatic);
  EXPECT_EQ(to_toml(parse_config(to_toml(a), "t2")), to_toml(a));
  auto fails = [](std::vector<std::string> sets, std::vector<std::string> want) {
    try {
      parse_config(default_config_text(), "t", sets);
      ADD_FAILURE() << "no error for " << sets[0];
    } catch (const ConfigError& e) {
      for (const std::string& w : want) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  fails({"parallel.dispatch_dtype=fp16"}, {"parallel.dispatch_dtype", "fp16"});
  fails({"parallel.combine_dtype=fp8"}, {"parallel.combine_dtype", "fp8"});
  for (const char* r : {"fp8-tensor-current", "fp8-tensor-delayed"})
    fails({"parallel.dispatch_dtype=fp8", std::string("precision.recipe=") + r},
          {"parallel.dispatch_dtype", "precision.recipe", r, "scale"});
  // bf16 rows are fine with every recipe.
  parse_config(default_config_text(), "t", {"parallel.dispatch_dtype=bf16", "precision.recipe=fp8-tensor-delayed"});
}

TEST(Config, PerLayerExpertErrorsNameTheKey) {
  fails({"moe.experts=[4, 8]"}, "moe.experts = [4, 8] has 2 entries, the model has 3 MoE layers");
  fails({"moe.experts=[4, 8, 0]"}, "moe.experts[2] = 0");
  fails({"moe.experts=[1, 8, 8]", "moe.top_k=2"}, "moe.top_k");
  fails({"moe.experts=[4, 8, 8]", "moe.experts_max=8", "moe.experts_min=4"}, "set one of them");
  fails({"moe.experts_min=4"}, "moe.experts_min = 4 without moe.experts_max");
  fails({"moe.experts_min=9", "moe.experts_max=8"}, "moe.experts_min = 9");
  fails({"moe.experts=[\"a\"]"}, "moe.experts must be an integer or an array of integers");
  // ep must divide every layer's count (the layout check names the list).
  RunConfig a = parse_config(default_config_text(), "t", {"model.n_layers=4", "model.dense_layers=1", "moe.experts=[4, 6, 8]"});
  try {
    resolve_layout(4, {1, 4, 4}, a.model.experts_gcd(), "t", a.model.experts_text());
    ADD_FAILURE() << "ep = 4 does not divide 6";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("moe.experts = [4, 6, 8] cannot be split evenly over parallel.ep = 4"),
              std::string::npos) << e.what();
  }
  EXPECT_EQ(resolve_layout(4, {1, 4, 0}, a.model.experts_gcd(), "t").ep, 2);  // auto: gcd(dp, 4, 6, 8)
}

}  // namespace
}  // namespace sy
