// Expert-parallel dispatch plan: where each kept pick's row goes and how it
// comes back.
//
// Experts are split over the ep group: rank j owns experts
// [j * E_local, (j + 1) * E_local). This rank's local tokens are cut into
// `chunks` contiguous token ranges. Rows of the send buffer are ordered
// (chunk, destination rank, local expert, token); the receive buffer of a
// chunk is ordered (source rank, local expert, source order). The experts run
// on each (source, local expert) segment where it lies, so the expert side
// never reorders rows. Counts travel in one all-to-all; each chunk's rows in
// its own (non-blocking) all-to-all-v, so chunk c's experts can run while
// later chunks are still in flight.
#pragma once

#include <cstdint>
#include <vector>

namespace sy {

class Comm;     // comm/comm.h
class Request;  // comm/comm.h

struct ExpertSegment {
  int64_t offset, rows;  // receive-buffer rows
  int64_t expert;        // local expert index
};

class EpDispatch {
 public:
  // idx (N, K) global expert ids, keep (N, K) 0/1. Collective over ep.
  // With `destinations`, also learns where each send row lands (rank and
  // row of the expert side's receive buffer), for direct shared-memory writes.
  void plan(const Comm& ep, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K, int64_t E, int chunks,
            bool destinations = false);

  int chunks() const { return chunks_; }
  int64_t send_rows() const { return static_cast<int64_t>(send_token_.size()); }
  int64_t recv_rows() const { return recv_rows_; }
  // Row of pick (t, k) in the send buffer, -1 if dropped.
  const std::vector<int32_t>& send_pos() const { return send_pos_; }
  // Local token of each send row.
  const std::vector<int32_t>& send_token() const { return send_token_; }
  // Receive-side segments of chunk c, in buffer order, and the chunk's row range.
  const std::vector<ExpertSegment>& segments(int c) const { return segments_[c]; }
  int64_t recv_begin(int c) const { return recv_begin_[c]; }
  int64_t recv_end(int c) const { return recv_begin_[c + 1]; }
  // Rows each local expert received in all chunks.
  const std::vector<int64_t>& expert_rows() const { return expert_rows_; }
  // Chunk c's rows in the send buffer: [send_begin(c), send_end(c)).
  int64_t send_begin(int c) const { return c == 0 ? 0 : send_end(c - 1); }
  int64_t send_end(int c) const { return sdispl_[c].back() + scount_[c].back(); }
  // Rows of chunk c sent to / received from ep rank r.
  int64_t send_count(int c, int r) const { return scount_[c][r]; }
  int64_t recv_count(int c, int r) const { return rcount_[c][r]; }
  // With destinations: the ep rank and receive-buffer row of each send row.
  const int32_t* dest_rank() const { return dest_rank_.data(); }
  const int32_t* dest_row() const { return dest_row_.data(); }

  // Chunk c's rows from senders to experts (send buffer -> receive buffer)
  // and back (receive buffer -> send buffer); `row` floats per row.
  Request to_experts(const Comm& ep, int c, const float* send, float* recv, int64_t row, const char* what) const;
  Request from_experts(const Comm& ep, int c, const float* recv, float* send, int64_t row, const char* what) const;

 private:
  int chunks_ = 1;
  int64_t recv_rows_ = 0;
  std::vector<int32_t> send_pos_, send_token_, dest_rank_, dest_row_;
  // Per chunk, per peer rank: rows and absolute row offsets.
  std::vector<std::vector<int64_t>> scount_, sdispl_, rcount_, rdispl_;
  std::vector<std::vector<ExpertSegment>> segments_;
  std::vector<int64_t> recv_begin_, expert_rows_;
};

}  // namespace sy
