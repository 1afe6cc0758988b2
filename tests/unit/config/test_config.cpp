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

}  // namespace
}  // namespace sy
