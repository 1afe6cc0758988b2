#include "moe/capacity.h"

#include "comm/comm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace sy {

namespace {
struct Key {
  float score;
  int32_t pad = 0;
  int64_t token;  // global token index
};
static_assert(sizeof(Key) == 16);
bool better(const Key& a, const Key& b) { return a.score > b.score || (a.score == b.score && a.token < b.token); }
}  // namespace

void decide_keep(uint8_t* keep, const int32_t* idx, const float* scores, int64_t N, int64_t E, int64_t K,
                 int64_t capacity, const std::vector<double>& global_load, const Comm& dp, int64_t token_offset) {
  std::memset(keep, 1, static_cast<size_t>(N * K));
  if (capacity < 0) return;
  // Over-full experts, numbered 0..n_over-1.
  std::vector<int64_t> slot(E, -1);
  int64_t n_over = 0;
  for (int64_t e = 0; e < E; ++e)
    if (global_load[e] > static_cast<double>(capacity)) slot[e] = n_over++;
  if (n_over == 0) return;

  // This rank's picks of over-full experts, grouped by expert.
  std::vector<std::vector<Key>> mine(n_over);
  for (int64_t i = 0; i < N * K; ++i) {
    int64_t e = idx[i], o = slot[e];
    if (o >= 0) mine[o].push_back({scores[(i / K) * E + e], 0, token_offset + i / K});
  }
  // Everyone's picks: counts per (rank, expert), then the keys themselves.
  const int64_t P = dp.size();
  std::vector<int64_t> my_counts(n_over), counts(P * n_over);
  for (int64_t o = 0; o < n_over; ++o) my_counts[o] = static_cast<int64_t>(mine[o].size());
  dp.allgather(my_counts.data(), static_cast<size_t>(n_over), counts.data());
  std::vector<Key> flat;
  for (auto& v : mine) flat.insert(flat.end(), v.begin(), v.end());
  // Start of (rank r, expert o) in the gathered keys.
  std::vector<int64_t> start(P * n_over + 1, 0);
  for (int64_t i = 0; i < P * n_over; ++i) start[i + 1] = start[i] + counts[i];
  std::vector<int64_t> bytes(P), displ(P);
  for (int64_t r = 0; r < P; ++r) {
    displ[r] = start[r * n_over] * static_cast<int64_t>(sizeof(Key));
    bytes[r] = (start[(r + 1) * n_over] - start[r * n_over]) * static_cast<int64_t>(sizeof(Key));
  }
  std::vector<Key> all(static_cast<size_t>(start.back()));
  dp.allgatherv(reinterpret_cast<const uint8_t*>(flat.data()), static_cast<int64_t>(flat.size() * sizeof(Key)),
                reinterpret_cast<uint8_t*>(all.data()), bytes, displ);

  // Per over-full expert: the capacity-th best key over all ranks.
  std::vector<Key> threshold(n_over), keys;
  for (int64_t o = 0; o < n_over; ++o) {
    keys.clear();
    for (int64_t r = 0; r < P; ++r)
      keys.insert(keys.end(), all.begin() + start[r * n_over + o], all.begin() + start[r * n_over + o + 1]);
    std::nth_element(keys.begin(), keys.begin() + (capacity - 1), keys.end(), better);
    threshold[o] = keys[static_cast<size_t>(capacity - 1)];
  }
  for (int64_t i = 0; i < N * K; ++i) {
    int64_t e = idx[i], o = slot[e];
    if (o < 0) continue;
    Key k{scores[(i / K) * E + e], 0, token_offset + i / K};
    keep[i] = !better(threshold[o], k);  // k is the threshold or better
  }
}

}  // namespace sy
