// The config schema: a resolved config printed as TOML parses back to itself.
#include <string>
#include <vector>

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
  expect_round_trip<Transport>({"auto", "shm", "mpi"});
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
  RunConfig c = parse_config(default_config_text(), "t", {"checkpoint.resume=none"});
  EXPECT_EQ(c.checkpoint.resume, ResumeMode::none);
  EXPECT_EQ(c.checkpoint.resume_dir, "");
}

}  // namespace
}  // namespace sy
