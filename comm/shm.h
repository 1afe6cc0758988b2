// Shared-memory windows for ranks on one node (MPI-3 MPI_Win_allocate_shared):
// every member owns a segment the others can read and write directly.
// The expert-parallel dispatch uses them so that a token row is copied once,
// straight into the expert rank's receive buffer, and expert outputs are
// read straight from the expert rank's memory when combining.
//
// The segments come from the group's backend (comm/backend.h:
// allocate_shared; MPI-3 MPI_Win_allocate_shared with the MPI backend).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"

namespace sy {

class SharedSegmentsImpl;

// All members of `comm` can share memory (one node).
bool same_node(const Comm& comm);

class SharedWindow {
 public:
  SharedWindow();
  ~SharedWindow();
  SharedWindow(const SharedWindow&) = delete;
  SharedWindow& operator=(const SharedWindow&) = delete;
  SharedWindow(SharedWindow&& o) noexcept;
  SharedWindow& operator=(SharedWindow&& o) noexcept;

  // Collective over comm: every member's segment holds at least `floats`
  // of its own (each member passes its own need). Grows by half again when
  // any member needs more; contents are not kept when it grows.
  void ensure(const Comm& comm, int64_t floats);
  float* local() const;
  // Segment bases of all members, by rank in comm.
  float* const* peers() const;
  size_t bytes() const { return static_cast<size_t>(capacity_) * sizeof(float); }  // this rank's segment
  // Memory barrier + group barrier: every member's writes before it are
  // visible to every member after it.
  void fence(const Comm& comm, const char* what) const;

 private:
  void release();
  std::unique_ptr<SharedSegmentsImpl> segments_;
  int64_t capacity_ = 0;  // floats in this rank's segment
  int me_ = 0;
};

}  // namespace sy
