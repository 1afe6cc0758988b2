#include "train/grad_sync.h"

#include <algorithm>

#include "core/check.h"

namespace sy {

namespace {
// Cuts params[begin, end) at tensor boundaries.
void add_ranges(std::vector<OptRange>& out, const ParamLayout& layout, int64_t begin, int64_t end, int64_t state,
                bool skip_replicas = false) {
  const auto& ps = layout.params();
  for (size_t i = 0; i < ps.size(); ++i) {
    if (skip_replicas && ps[i].replica) continue;
    int64_t b = std::max(begin, ps[i].offset), e = std::min(end, ps[i].offset + ps[i].numel());
    if (b < e) out.push_back({b, e, state + (b - begin), ps[i].decay, static_cast<int64_t>(i)});
  }
}
}  // namespace

GradSync::GradSync(const ParamLayout& layout, const Grid& grid, bool zero1, Allocator& mem)
    : layout_(layout), zero1_(zero1), shard_(mem) {
  for (const Bucket& b : layout.buckets()) {
    Part p;
    p.bucket = &b;
    p.group = b.expert ? &grid.edp() : &grid.dp();
    const int64_t G = p.group->size(), n = b.end - b.begin;
    for (int64_t r = 0; r < G; ++r) {
      p.displs.push_back(n * r / G);
      p.counts.push_back(n * (r + 1) / G - n * r / G);
    }
    const int64_t me = p.group->rank();
    p.state = state_size_;
    state_size_ += p.counts[me];
    // This rank's part: what it owns for the norm, and with ZeRO-1 all it updates.
    int64_t pb = b.begin + p.displs[me], pe = pb + p.counts[me];
    add_ranges(owned_, layout, pb, pe, zero1 ? p.state : pb, true);  // a replica counts on its home stage
    if (zero1) add_ranges(ranges_, layout, pb, pe, p.state);
    parts_.push_back(std::move(p));
  }
  if (zero1)
    shard_.ensure(static_cast<size_t>(std::max<int64_t>(state_size_, 1)));
  else
    add_ranges(ranges_, layout, 0, layout.total(), 0), state_size_ = layout.total();
}

void GradSync::ready(int64_t key, float* grads) {
  for (Part& p : parts_) {
    if (p.bucket->ready != key) continue;
    float* g = grads + p.bucket->begin;
    const char* what = p.bucket->expert ? "expert gradient reduction" : "gradient reduction";
    if (zero1_)
      pending_.push_back(p.group->ireduce_scatter_sum(g, shard_.data() + p.state, p.counts, what));
    else
      pending_.push_back(p.group->iallreduce_sum(g, p.bucket->end - p.bucket->begin, what));
  }
  for (Request& r : pending_) r.test();  // progress the earlier buckets
}

void GradSync::finish() { wait_all(pending_); }

void GradSync::gather_params(float* params) {
  if (!zero1_) return;
  std::vector<Request> reqs;
  for (Part& p : parts_) reqs.push_back(p.group->iallgatherv(params + p.bucket->begin, p.counts, p.displs, "parameter all-gather"));
  wait_all(reqs);
}

}  // namespace sy
