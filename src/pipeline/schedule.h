// Pipeline schedules as data: for (pp ranks p, micro-batches m, virtual
// chunks v) a list of operations per rank, which a validator proves
// complete and deadlock-free, a simulator times, and one executor runs.
//
// Virtual stage s = chunk * p + rank holds a contiguous run of layers;
// stage 0 has the embedding, stage p*v - 1 the head and the loss. A
// micro-batch's activation goes from stage s to s + 1 (rank + 1, or rank 0
// of the next chunk), its gradient back.
//
// Operations on one rank run in list order. A receive only posts a
// non-blocking receive; a compute op waits until the data it needs has
// arrived; a send starts a non-blocking send of the op's output. So a rank
// blocks only in a compute op whose input is not there yet.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy::pipe {

enum class OpKind : uint8_t {
  forward,          // F: forward of micro-batch mb on chunk
  backward,         // B+W: input and weight gradients together
  backward_input,   // B: input gradient only (zero-bubble schedules)
  backward_weight,  // W: the weight gradient B left for later
  send_act,         // activation of (mb, chunk) to the next stage
  recv_act,         // activation for (mb, chunk) from the previous stage
  send_grad,        // input gradient of (mb, chunk) to the previous stage
  recv_grad,        // output gradient for (mb, chunk) from the next stage
};
const char* op_name(OpKind k);  // "F", "B", ...
bool is_compute(OpKind k);

struct Op {
  OpKind kind;
  int32_t mb = 0;
  int32_t chunk = 0;  // this rank's chunk the op belongs to
  int32_t peer = -1;  // send / receive: the other pipeline rank
};

struct Schedule {
  std::string name;  // "gpipe", "1f1b", "interleaved", "zb"
  int p = 1, m = 1, v = 1;
  bool split_backward = false;     // B and W are separate ops
  bool forward_only = false;       // no backward: activations die with their F
  std::vector<std::vector<Op>> ranks;  // per pipeline rank

  int stages() const { return p * v; }
  int stage(int rank, int chunk) const { return chunk * p + rank; }
  int rank_of(int stage) const { return stage % p; }
  int chunk_of(int stage) const { return stage / p; }
  bool first(int rank, int chunk) const { return stage(rank, chunk) == 0; }
  bool last(int rank, int chunk) const { return stage(rank, chunk) == stages() - 1; }
};

// The schedule names make_schedule knows, and a line describing each. The
// order is ScheduleKind's: schedule_names()[k] names kind k.
const std::vector<std::pair<std::string, std::string>>& schedule_names();

// The schedules as a value (parallel.schedule, parsed once by config/).
enum class ScheduleKind : uint8_t { gpipe, one_f_one_b, interleaved, zb };
const std::string& schedule_name(ScheduleKind k);  // "gpipe", "1f1b", ...

// Builds the named schedule. Throws (naming the argument) when the
// combination is not supported: p, m >= 1; v = 1 except for "interleaved",
// which needs m a multiple of p.
Schedule make_schedule(const std::string& name, int p, int m, int v = 1);
inline Schedule make_schedule(ScheduleKind k, int p, int m, int v = 1) { return make_schedule(schedule_name(k), p, m, v); }

// A forward-only schedule (validation): every micro-batch through every stage.
Schedule make_forward_only(int p, int m, int v = 1);

struct Validation {
  bool ok = true;
  std::string error;  // the first problem, naming rank, op and micro-batch
  // Peak micro-batches whose activations a rank holds at once: from the
  // start of F until the op that last reads them (B+W, or W), per rank and
  // per rank-and-chunk.
  std::vector<int> peak_in_flight;
  std::vector<std::vector<int>> peak_in_flight_chunk;
};

// Checks that every (mb, chunk) has exactly one F and one backward (B+W, or
// B then W) on its rank, in dependency order; every receive has its send and
// comes before the op that reads it; and that running all ranks with the
// blocking rules above finishes (no deadlock). `max_in_flight` > 0: also
// fails if a rank ever holds more micro-batches than that.
Validation validate(const Schedule& s, int max_in_flight = 0);

// Counts of ops by kind on a rank (for tests and printing).
int count(const Schedule& s, int rank, OpKind k);

}  // namespace sy::pipe
