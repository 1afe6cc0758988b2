// train.lr_groups' name patterns (config/name_glob.h) against a naive
// reference: the pattern rewritten as a std::regex (* -> [^.]*, ** -> .*,
// [a-b] -> an alternation of the integers a..b), over every pattern built
// from a small alphabet and a set of parameter-like names.
#include <regex>
#include <string>
#include <vector>

#include "config/name_glob.h"
#include "config/run.h"
#include "core/check.h"
#include "testing.h"

namespace sy {
namespace {

std::string reference_regex(const std::string& p) {
  std::string r;
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, 2, "**") == 0) {
      r += ".*", i += 2;
    } else if (p[i] == '*') {
      r += "[^.]*", ++i;
    } else if (p[i] == '[') {
      const size_t close = p.find(']', i), dash = p.find('-', i);
      const int lo = std::stoi(p.substr(i + 1)), hi = dash < close ? std::stoi(p.substr(dash + 1)) : lo;
      r += "(";
      for (int v = lo; v <= hi; ++v) r += (v > lo ? "|" : "") + std::to_string(v);
      r += ")";
      i = close + 1;
    } else {
      if (p[i] == '.') r += '\\';
      r += p[i++];
    }
  }
  return r;
}

TEST(NameGlob, MatchesTheRegexReference) {
  const std::vector<std::string> names = {
      "embed.weight", "lm_head.weight", "final_norm.weight", "layers.0.attn.wqkv", "layers.1.moe.router",
      "layers.12.moe.experts.3.w13", "layers.1.moe.experts.10.w2", "layers.1.moe.experts.07.w2",
      "layers.2.moe.shared.w13", "layers.2.mlp.w2", "a", "a.b", "a..b", ".a", "ab.c.d", "x.1", "x.11"};
  // Every pattern of up to 4 pieces from this alphabet, kept when well formed.
  const std::vector<std::string> pieces = {"*", "**", ".", "a", "b", "layers", "[0-3]", "[1]", "[10-12]",
                                           "w2", "moe", "experts", "1", "x"};
  std::vector<std::string> patterns = {"layers.*.moe.experts.[0-7].*", "**.w2", "**", "*", "layers.[1-12].**",
                                       "*.[0-3].*", "layers.*.moe.*.[0-9].w*", "**weight"};
  for (const std::string& a : pieces)
    for (const std::string& b : pieces)
      for (const std::string& c : pieces)
        for (const std::string& d : {std::string(), std::string("."), std::string("*"), std::string("w2")})
          patterns.push_back(a + b + c + d);
  int64_t checked = 0, matched = 0;
  for (const std::string& p : patterns) {
    if (!name_glob_problem(p).empty()) continue;
    if (p.find("***") != std::string::npos) continue;
    const std::regex re(reference_regex(p));
    for (const std::string& n : names) {
      const bool want = std::regex_match(n, re);
      ASSERT_EQ(name_glob_match(p, n), want) << "pattern " << p << " name " << n << " regex " << reference_regex(p);
      ++checked, matched += want;
    }
  }
  EXPECT_GT(checked, 20000);
  EXPECT_GT(matched, 400);  // the comparison sees both answers (479 of them match)
}

TEST(NameGlob, TheDocumentedCases) {
  const std::string experts = "layers.*.moe.experts.[0-7].*";
  EXPECT_TRUE(name_glob_match(experts, "layers.3.moe.experts.7.w13"));
  EXPECT_FALSE(name_glob_match(experts, "layers.3.moe.experts.8.w13"));
  EXPECT_FALSE(name_glob_match(experts, "layers.3.moe.experts.07.w13"));  // no leading zeros
  EXPECT_FALSE(name_glob_match(experts, "layers.3.moe.router"));
  EXPECT_FALSE(name_glob_match("layers.*.w2", "layers.1.mlp.w2"));  // * stays inside one component
  EXPECT_TRUE(name_glob_match("layers.**.w2", "layers.1.mlp.w2"));
  EXPECT_TRUE(name_glob_match("layers.[10-12].*.*", "layers.11.attn.wo"));
  EXPECT_FALSE(name_glob_match("layers.[10-12].*.*", "layers.1.attn.wo"));
  EXPECT_FALSE(name_glob_match("*norm*", "final_norm.weight"));  // the whole name must match
  EXPECT_TRUE(name_glob_match("*norm.*", "final_norm.weight"));
}

TEST(NameGlob, MalformedPatternsSayWhy) {
  EXPECT_NE(name_glob_problem(""), "");
  EXPECT_NE(name_glob_problem("layers.[3-1].w2").find("empty range"), std::string::npos);
  EXPECT_NE(name_glob_problem("layers.x[0-1].w2").find("whole component"), std::string::npos);
  EXPECT_NE(name_glob_problem("layers.[0-1]x.w2").find("whole component"), std::string::npos);
  EXPECT_NE(name_glob_problem("layers.[a-b].w2").find("integer"), std::string::npos);
  EXPECT_NE(name_glob_problem("layers.[01].w2").find("integer"), std::string::npos);
  EXPECT_NE(name_glob_problem("layers.[0-1.w2").find("without its ']'"), std::string::npos);
  EXPECT_NE(name_glob_problem("layers.0].w2").find("without its '['"), std::string::npos);
  EXPECT_NE(name_glob_problem("***.w2").find("'***'"), std::string::npos);
}

TEST(NameGlob, LrGroupsRoundTripThroughToml) {
  RunConfig a = parse_config(default_config_text(), "t",
                             {"train.lr_groups=[{ match = \"layers.*.moe.experts.[0-3].*\", scale = 0.1 }, "
                              "{ match = \"**\", scale = 2 }]",
                              "checkpoint.init_from=runs/base"});
  ASSERT_EQ(a.train.lr_groups.size(), 2u);
  EXPECT_EQ(a.train.lr_groups[0].match, "layers.*.moe.experts.[0-3].*");
  EXPECT_EQ(a.train.lr_groups[1].scale, 2.0);
  EXPECT_EQ(a.checkpoint.init_from, "runs/base");
  RunConfig b = parse_config(to_toml(a), "t2");
  EXPECT_EQ(to_toml(b), to_toml(a));
  EXPECT_THROW(parse_config(default_config_text(), "t", {"train.lr_groups=[{ match = \"a[\", scale = 1 }]"}),
               ConfigError);
}

}  // namespace
}  // namespace sy
