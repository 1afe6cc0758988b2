#include "train/weights_file.h"

#include "ckpt/format.h"
#include "core/version.h"
#include "model/layout.h"
#include "train/metrics.h"

namespace sy {

ckpt::Manifest new_weights_manifest(const RunConfig& cfg) {
  ckpt::Manifest man;
  man.config_toml = to_toml(cfg);
  man.run_id = ckpt::new_run_id();
  man.seed = cfg.train.seed;
  man.software_version = version();
  man.saved_at = now_iso();
  const ParamLayout layout(cfg.model);
  for (const ParamInfo& p : layout.params()) man.tensors.push_back({p.name, p.shape.dims, ".", p.index});
  return man;
}

}  // namespace sy
