#include "train/lr_groups.h"

#include "config/name_glob.h"
#include "core/check.h"

namespace sy {

std::vector<double> resolve_lr_groups(const std::vector<LrGroup>& groups, const ParamLayout& full,
                                      const std::string& source, std::vector<LrGroupUse>* use) {
  const std::vector<ParamInfo>& ps = full.params();
  std::vector<double> scale(ps.size(), 1.0);
  std::vector<int> taken(ps.size(), -1);  // group index, -1 = none
  std::vector<LrGroupUse> u(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    int64_t matched = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      if (!name_glob_match(groups[g].match, ps[i].name)) continue;
      ++matched;
      if (taken[i] >= 0) continue;
      taken[i] = static_cast<int>(g);
      scale[static_cast<size_t>(ps[i].index)] = groups[g].scale;
      u[g].tensors += 1;
      u[g].elements += ps[i].numel();
    }
    SY_CONFIG_CHECK(matched > 0, "{}: train.lr_groups[{}].match = \"{}\" matches no parameter of this model (names "
                    "look like '{}'; `moe-ckpt ls CHECKPOINT` lists them all)", source, g, groups[g].match,
                    ps.size() > 1 ? ps[1].name : ps[0].name);
    SY_CONFIG_CHECK(u[g].tensors > 0, "{}: train.lr_groups[{}].match = \"{}\" matches only parameters that earlier "
                    "groups take (the first matching group wins), so it changes nothing", source, g,
                    groups[g].match);
  }
  if (use) *use = std::move(u);
  return scale;
}

}  // namespace sy
