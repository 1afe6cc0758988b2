#include "moe/ep_dispatch.h"

#include "comm/comm.h"
#include "core/check.h"

namespace sy {

void EpDispatch::plan(const Comm& ep, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K, int64_t E,
                      int chunks, bool destinations) {
  const int64_t P = ep.size(), El = E / P, picks = N * K;
  chunks_ = chunks;
  // counts[(c * P + dst) * El + le]: kept picks of chunk c for expert le of rank dst.
  std::vector<int64_t> counts(chunks * P * El, 0);
  auto chunk_of = [&](int64_t t) { return t * chunks / N; };
  for (int64_t i = 0; i < picks; ++i)
    if (keep[i]) ++counts[chunk_of(i / K) * P * El + idx[i]];  // (dst * El + le) == global expert id

  // Send offsets in (chunk, dst, le) order; rows within a block by token.
  std::vector<int64_t> cursor(counts.size());
  int64_t rows = 0;
  for (size_t b = 0; b < counts.size(); ++b) cursor[b] = rows, rows += counts[b];
  scount_.assign(chunks, std::vector<int64_t>(P, 0));
  sdispl_.assign(chunks, std::vector<int64_t>(P, 0));
  for (int c = 0; c < chunks; ++c)
    for (int64_t d = 0; d < P; ++d) {
      sdispl_[c][d] = cursor[(c * P + d) * El];
      for (int64_t le = 0; le < El; ++le) scount_[c][d] += counts[(c * P + d) * El + le];
    }
  send_pos_.assign(picks, -1);
  send_token_.resize(rows);
  for (int64_t i = 0; i < picks; ++i) {
    if (!keep[i]) continue;
    int64_t r = cursor[chunk_of(i / K) * P * El + idx[i]]++;
    send_pos_[i] = static_cast<int32_t>(r);
    send_token_[r] = static_cast<int32_t>(i / K);
  }

  // Exchange counts: to each destination, its (chunk, local expert) counts.
  std::vector<int64_t> out(P * chunks * El), in(P * chunks * El);
  for (int64_t d = 0; d < P; ++d)
    for (int c = 0; c < chunks; ++c)
      for (int64_t le = 0; le < El; ++le) out[(d * chunks + c) * El + le] = counts[(c * P + d) * El + le];
  ep.alltoall(out.data(), static_cast<size_t>(chunks * El), in.data());

  // Receive layout: (chunk, src, le).
  rcount_.assign(chunks, std::vector<int64_t>(P, 0));
  rdispl_.assign(chunks, std::vector<int64_t>(P, 0));
  segments_.assign(chunks, {});
  recv_begin_.assign(chunks + 1, 0);
  expert_rows_.assign(El, 0);
  int64_t off = 0;
  for (int c = 0; c < chunks; ++c) {
    recv_begin_[c] = off;
    for (int64_t s = 0; s < P; ++s) {
      rdispl_[c][s] = off;
      for (int64_t le = 0; le < El; ++le) {
        int64_t n = in[(s * chunks + c) * El + le];
        segments_[c].push_back({off, n, le});
        expert_rows_[le] += n;
        rcount_[c][s] += n;
        off += n;
      }
    }
  }
  recv_begin_[chunks] = off;
  recv_rows_ = off;
  if (!destinations) return;

  // Tell every source where its blocks start in this rank's receive buffer.
  std::vector<int64_t> offs(P * chunks * El), theirs(P * chunks * El);
  for (int c = 0; c < chunks; ++c)
    for (int64_t s = 0; s < P; ++s)
      for (int64_t le = 0; le < El; ++le) offs[(s * chunks + c) * El + le] = segments_[c][s * El + le].offset;
  ep.alltoall(offs.data(), static_cast<size_t>(chunks * El), theirs.data());
  dest_rank_.resize(rows);
  dest_row_.resize(rows);
  int64_t r = 0;
  for (int c = 0; c < chunks; ++c)
    for (int64_t d = 0; d < P; ++d)
      for (int64_t le = 0; le < El; ++le)
        for (int64_t j = 0, n = counts[(c * P + d) * El + le], at = theirs[(d * chunks + c) * El + le]; j < n; ++j, ++r) {
          dest_rank_[r] = static_cast<int32_t>(d);
          dest_row_[r] = static_cast<int32_t>(at + j);
        }
}

Request EpDispatch::to_experts(const Comm& ep, int c, const float* send, float* recv, int64_t row,
                               const char* what) const {
  return ep.ialltoallv_rows(send, scount_[c], sdispl_[c], recv, rcount_[c], rdispl_[c], row, what);
}

Request EpDispatch::from_experts(const Comm& ep, int c, const float* recv, float* send, int64_t row,
                                 const char* what) const {
  return ep.ialltoallv_rows(recv, rcount_[c], rdispl_[c], send, scount_[c], sdispl_[c], row, what);
}

}  // namespace sy
