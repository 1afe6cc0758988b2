// Memory per rank of a run, from its configuration alone, and the check
// moe-train and moe-launch make before anything big is allocated: one
// estimate (weights, gradients, AdamW moments, activations, expert rows,
// checkpoint staging) against the memory this node makes available
// (MemAvailable and the cgroup limit, whichever is smaller, shared by the
// node's ranks). A run that cannot fit is a ConfigError naming the largest
// part and the keys that drive it, not a std::bad_alloc halfway through.
#pragma once

#include <cstdint>
#include <string>

#include "config/layout.h"
#include "config/run.h"

namespace sy {

struct MemoryEstimate {  // bytes on the busiest rank
  double params = 0, grads = 0, optimizer = 0, activations = 0, expert_rows = 0, staging = 0;
  double total() const { return params + grads + optimizer + activations + expert_rows + staging; }
  int64_t pp_rank = 0;        // the busiest pipeline rank (its stage's share of the model)
  int64_t params_rank = 0;    // parameter elements it holds
  // Shares of params_rank, for naming the keys that drive weights.
  int64_t embed_head = 0, expert_params = 0;
  double logits = 0;          // activation bytes of the logits (N, V) alone
};

// For a resolved shape (dp, ep set) and a config whose batch is resolved
// (RunConfig::resolve_batch). Allocates nothing that grows with the model.
MemoryEstimate estimate_memory(const RunConfig& cfg, const GridShape& shape);

// Memory this node lets processes use now, in bytes (< 0: unknown), and
// what bounded it ("MemAvailable", "cgroup memory.max", ...). `root`
// prefixes /proc and /sys (tests pass a fake tree).
struct MemoryAvailable {
  double bytes = -1;
  std::string source;
};
MemoryAvailable available_memory(const std::string& root = "");

// The escape hatch: SY_SKIP_MEMORY_CHECK=1 in the environment turns the
// check into a note (the estimate assumes a balanced expert load and
// MemAvailable does not count swap, so an operator may know better).
bool memory_check_skipped();

// Throws ConfigError when `need` exceeds `avail` shared by `ranks_on_node`
// ranks: "activations need 412.0 GiB per rank (model.seq_len = 1048576,
// train.micro_batch = 8) ...; this node has 22.1 GiB available".
void check_memory(const RunConfig& cfg, const MemoryEstimate& need, const MemoryAvailable& avail,
                  int64_t ranks_on_node);

// A device run (run.device): the device holds weights, gradients, AdamW
// moments, activations and expert rows; the host keeps copies of the first
// three and the checkpoint staging (checked by check_memory with what
// on_device_host() leaves). Throws ConfigError, naming the largest part, its
// keys and the device's free memory, when `need` exceeds the free memory of
// one device shared by `ranks_per_device` ranks.
void check_device_memory(const RunConfig& cfg, const MemoryEstimate& need, double device_free, double device_total,
                         int64_t ranks_per_device);
// What the host holds of a device run: the estimate without activations and expert rows.
MemoryEstimate on_device_host(MemoryEstimate need);

// "1.5 GiB"
std::string format_bytes(double b);

}  // namespace sy
