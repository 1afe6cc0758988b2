#include "pipeline/schedule.h"

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <stdexcept>
#include <tuple>

#include <fmt/format.h>

namespace sy::pipe {

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::forward: return "F";
    case OpKind::backward: return "BW";
    case OpKind::backward_input: return "B";
    case OpKind::backward_weight: return "W";
    case OpKind::send_act: return "send-act";
    case OpKind::recv_act: return "recv-act";
    case OpKind::send_grad: return "send-grad";
    case OpKind::recv_grad: return "recv-grad";
  }
  return "?";
}

bool is_compute(OpKind k) {
  return k == OpKind::forward || k == OpKind::backward || k == OpKind::backward_input ||
         k == OpKind::backward_weight;
}

const std::vector<std::pair<std::string, std::string>>& schedule_names() {
  static const std::vector<std::pair<std::string, std::string>> names = {
      {"gpipe", "all forwards, then all backwards (holds m micro-batches)"},
      {"1f1b", "one forward one backward after a warm-up of p - rank - 1 forwards (holds <= p)"},
      {"interleaved", "1F1B over v virtual chunks per rank (Megatron); bubble / v; needs m % p == 0"},
      {"zb", "zero-bubble ZB-H1: backward split into input (B) and weight (W) gradients, W fills the "
             "bubbles; holds <= p like 1F1B"},
  };
  return names;
}

const std::string& schedule_name(ScheduleKind k) { return schedule_names().at(static_cast<size_t>(k)).first; }

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

Op F(int mb, int c) { return {OpKind::forward, mb, c, -1}; }
Op BW(int mb, int c) { return {OpKind::backward, mb, c, -1}; }

// Adds the sends and receives around each rank's compute ops: the receive
// an op needs is posted before the compute op ahead of it (so the transfer
// overlaps that compute), the send of its output right after it.
void add_comm(Schedule& s, const std::vector<std::vector<Op>>& compute) {
  const int S = s.stages();
  s.ranks.assign(static_cast<size_t>(s.p), {});
  for (int r = 0; r < s.p; ++r) {
    const std::vector<Op>& c = compute[static_cast<size_t>(r)];
    std::vector<Op>& out = s.ranks[static_cast<size_t>(r)];
    auto recv_of = [&](const Op& op) {
      int st = s.stage(r, op.chunk);
      if (op.kind == OpKind::forward && st > 0) out.push_back({OpKind::recv_act, op.mb, op.chunk, s.rank_of(st - 1)});
      if ((op.kind == OpKind::backward || op.kind == OpKind::backward_input) && st < S - 1 && !s.forward_only)
        out.push_back({OpKind::recv_grad, op.mb, op.chunk, s.rank_of(st + 1)});
    };
    if (!c.empty()) recv_of(c[0]);
    for (size_t k = 0; k < c.size(); ++k) {
      if (k + 1 < c.size()) recv_of(c[k + 1]);
      const Op& op = c[k];
      out.push_back(op);
      int st = s.stage(r, op.chunk);
      if (op.kind == OpKind::forward && st < S - 1) out.push_back({OpKind::send_act, op.mb, op.chunk, s.rank_of(st + 1)});
      if ((op.kind == OpKind::backward || op.kind == OpKind::backward_input) && st > 0)
        out.push_back({OpKind::send_grad, op.mb, op.chunk, s.rank_of(st - 1)});
    }
  }
}

std::vector<std::vector<Op>> gpipe(int p, int m) {
  std::vector<std::vector<Op>> c(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) {
    for (int i = 0; i < m; ++i) c[static_cast<size_t>(r)].push_back(F(i, 0));
    for (int i = 0; i < m; ++i) c[static_cast<size_t>(r)].push_back(BW(i, 0));
  }
  return c;
}

std::vector<std::vector<Op>> one_f_one_b(int p, int m) {
  std::vector<std::vector<Op>> c(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) {
    auto& o = c[static_cast<size_t>(r)];
    int warm = std::min(p - r - 1, m);
    for (int i = 0; i < warm; ++i) o.push_back(F(i, 0));
    for (int i = 0; i < m - warm; ++i) o.push_back(F(warm + i, 0)), o.push_back(BW(i, 0));
    for (int i = m - warm; i < m; ++i) o.push_back(BW(i, 0));
  }
  return c;
}

// Megatron-LM's interleaved 1F1B: the k-th forward of a rank is micro-batch
// (k / pv) p + k % p on chunk (k / p) % v, backwards walk the chunks in
// reverse; a warm-up of 2 (p - rank - 1) + (v - 1) p forwards.
std::vector<std::vector<Op>> interleaved(int p, int m, int v) {
  std::vector<std::vector<Op>> c(static_cast<size_t>(p));
  const int total = m * v;
  auto mb_of = [&](int k) { return (k / (p * v)) * p + k % p; };
  auto chunk_of = [&](int k, bool fwd) {
    int ch = (k % (p * v)) / p;
    return fwd ? ch : v - 1 - ch;
  };
  for (int r = 0; r < p; ++r) {
    auto& o = c[static_cast<size_t>(r)];
    int warm = std::min((p - r - 1) * 2 + (v - 1) * p, total);
    int steady = total - warm;
    for (int k = 0; k < warm; ++k) o.push_back(F(mb_of(k), chunk_of(k, true)));
    for (int i = 0; i < steady; ++i) {
      o.push_back(F(mb_of(warm + i), chunk_of(warm + i, true)));
      o.push_back(BW(mb_of(i), chunk_of(i, false)));
    }
    for (int k = steady; k < total; ++k) o.push_back(BW(mb_of(k), chunk_of(k, false)));
  }
  return c;
}

// Zero bubble in the manner of ZB-H1 (Qi et al., "Zero Bubble Pipeline
// Parallelism", 2023): list scheduling in unit time (F = B = W = 1). A rank
// runs a ready B first, else the next F if it holds fewer than p
// micro-batches (1F1B's peak, that of its stage 0), else the oldest pending
// W; the W passes fill what 1F1B leaves idle. With a per-stage bound of
// p - rank (1F1B's memory on every stage) the last stage must run F B W
// back to back and no order beats 3m + 2(p-1); with p everywhere this greedy
// comes within 2 slots of ZB-H1's 3m + (p-1) (tests/unit/pipeline).
std::vector<std::vector<Op>> zb_h1(int p, int m) {
  std::vector<std::vector<Op>> c(static_cast<size_t>(p));
  const int inf = 1 << 30;
  std::vector<std::vector<int>> f_end(static_cast<size_t>(p), std::vector<int>(static_cast<size_t>(m), inf));
  std::vector<std::vector<int>> b_end = f_end;
  std::vector<int> busy(static_cast<size_t>(p), 0), next_f(static_cast<size_t>(p), 0), held(static_cast<size_t>(p), 0);
  std::vector<std::deque<int>> pend_b(static_cast<size_t>(p)), pend_w(static_cast<size_t>(p));
  int left = 3 * m * p;
  for (int t = 0; left > 0; ++t) {
    if (t > 100 * (3 * m + p)) fail("zb: the list scheduler made no progress (a bug)");
    for (int r = 0; r < p; ++r) {
      size_t R = static_cast<size_t>(r);
      if (busy[R] > t) continue;
      auto& o = c[R];
      // B: the oldest micro-batch whose output gradient is here.
      int b = -1;
      for (int mb : pend_b[R])
        if (f_end[R][static_cast<size_t>(mb)] <= t && (r == p - 1 || b_end[R + 1][static_cast<size_t>(mb)] <= t)) {
          b = mb;
          break;
        }
      if (b >= 0) {
        pend_b[R].erase(std::find(pend_b[R].begin(), pend_b[R].end(), b));
        o.push_back({OpKind::backward_input, b, 0, -1});
        b_end[R][static_cast<size_t>(b)] = t + 1;
        pend_w[R].push_back(b);
      } else if (next_f[R] < m && held[R] < p &&
                 (r == 0 || f_end[R - 1][static_cast<size_t>(next_f[R])] <= t)) {
        int f = next_f[R]++;
        o.push_back(F(f, 0));
        f_end[R][static_cast<size_t>(f)] = t + 1;
        pend_b[R].push_back(f);
        ++held[R];
      } else if (!pend_w[R].empty()) {
        o.push_back({OpKind::backward_weight, pend_w[R].front(), 0, -1});
        pend_w[R].pop_front();
        --held[R];
      } else {
        continue;
      }
      busy[R] = t + 1;
      --left;
    }
  }
  return c;
}

}  // namespace

Schedule make_schedule(const std::string& name, int p, int m, int v) {
  if (p < 1) fail(fmt::format("parallel.pp = {}: must be at least 1", p));
  if (m < 1) fail(fmt::format("parallel.microbatches = {}: must be at least 1", m));
  if (v < 1) fail(fmt::format("parallel.virtual = {}: must be at least 1", v));
  if (name != "interleaved" && v != 1)
    fail(fmt::format("parallel.virtual = {} needs parallel.schedule = \"interleaved\" (\"{}\" runs one chunk per rank)",
                     v, name));
  Schedule s;
  s.name = name, s.p = p, s.m = m, s.v = v;
  std::vector<std::vector<Op>> c;
  if (name == "gpipe") {
    c = gpipe(p, m);
  } else if (name == "1f1b") {
    c = one_f_one_b(p, m);
  } else if (name == "interleaved") {
    if (m % p != 0)
      fail(fmt::format("parallel.schedule = \"interleaved\" needs parallel.microbatches ({}) to be a multiple of "
                       "parallel.pp ({}); try {}", m, p, (m + p - 1) / p * p));
    c = v == 1 ? one_f_one_b(p, m) : interleaved(p, m, v);
  } else if (name == "zb") {
    s.split_backward = true;
    c = zb_h1(p, m);
  } else {
    std::string known;
    for (const auto& [n, _] : schedule_names()) known += (known.empty() ? "" : ", ") + n;
    fail(fmt::format("parallel.schedule = \"{}\" is not a schedule; choose one of {}", name, known));
  }
  add_comm(s, c);
  return s;
}

Schedule make_forward_only(int p, int m, int v) {
  Schedule s;
  s.name = "forward", s.p = p, s.m = m, s.v = v, s.forward_only = true;
  std::vector<std::vector<Op>> c(static_cast<size_t>(p));
  for (int mb = 0; mb < m; ++mb)
    for (int st = 0; st < p * v; ++st) c[static_cast<size_t>(s.rank_of(st))].push_back(F(mb, s.chunk_of(st)));
  add_comm(s, c);
  return s;
}

int count(const Schedule& s, int rank, OpKind k) {
  const auto& ops = s.ranks[static_cast<size_t>(rank)];
  return static_cast<int>(std::count_if(ops.begin(), ops.end(), [&](const Op& o) { return o.kind == k; }));
}

namespace {
std::string where(int r, size_t i, const Op& o) {
  return fmt::format("rank {} op {} ({} mb {} chunk {})", r, i, op_name(o.kind), o.mb, o.chunk);
}
}  // namespace

Validation validate(const Schedule& s, int max_in_flight) {
  Validation v;
  auto bad = [&](std::string msg) {
    if (v.ok) v.ok = false, v.error = std::move(msg);
  };
  const int S = s.stages();
  if (static_cast<int>(s.ranks.size()) != s.p) {
    bad(fmt::format("{} rank lists for p = {}", s.ranks.size(), s.p));
    return v;
  }
  using Key = std::tuple<int, int, int>;  // kind, mb, chunk
  // 1. Each rank: every compute op once, in dependency order; receives before their readers.
  for (int r = 0; r < s.p; ++r) {
    std::map<Key, size_t> at;  // first position of (kind, mb, chunk)
    const auto& ops = s.ranks[static_cast<size_t>(r)];
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& o = ops[i];
      if (o.mb < 0 || o.mb >= s.m || o.chunk < 0 || o.chunk >= s.v) {
        bad(fmt::format("{}: micro-batch or chunk out of range (m = {}, v = {})", where(r, i, o), s.m, s.v));
        continue;
      }
      Key k{static_cast<int>(o.kind), o.mb, o.chunk};
      if (at.count(k)) bad(fmt::format("{}: appears twice (first at op {})", where(r, i, o), at[k]));
      at[k] = i;
      const int st = s.stage(r, o.chunk);
      auto need = [&](OpKind before, const char* what) {
        auto it = at.find(Key{static_cast<int>(before), o.mb, o.chunk});
        if (it == at.end() || it->second >= i) bad(fmt::format("{}: runs before its {}", where(r, i, o), what));
      };
      switch (o.kind) {
        case OpKind::forward:
          if (st > 0) need(OpKind::recv_act, "receive of the activation");
          break;
        case OpKind::backward:
        case OpKind::backward_input:
          if (s.forward_only) bad(fmt::format("{}: a backward op in a forward-only schedule", where(r, i, o)));
          if ((o.kind == OpKind::backward) == s.split_backward)
            bad(fmt::format("{}: {} in a schedule that {} the backward", where(r, i, o), op_name(o.kind),
                            s.split_backward ? "splits" : "does not split"));
          need(OpKind::forward, "forward");
          if (st < S - 1) need(OpKind::recv_grad, "receive of the output gradient");
          break;
        case OpKind::backward_weight:
          if (!s.split_backward) bad(fmt::format("{}: W in a schedule without split backward", where(r, i, o)));
          need(OpKind::backward_input, "input-gradient pass B");
          break;
        case OpKind::send_act:
          need(OpKind::forward, "forward");
          if (st == S - 1 || o.peer != s.rank_of(st + 1))
            bad(fmt::format("{}: sends to rank {}, the next stage is on rank {}", where(r, i, o), o.peer,
                            st == S - 1 ? -1 : s.rank_of(st + 1)));
          break;
        case OpKind::send_grad:
          need(s.split_backward ? OpKind::backward_input : OpKind::backward, "backward");
          if (st == 0 || o.peer != s.rank_of(st - 1))
            bad(fmt::format("{}: sends to rank {}, the previous stage is on rank {}", where(r, i, o), o.peer,
                            st == 0 ? -1 : s.rank_of(st - 1)));
          break;
        case OpKind::recv_act:
          if (st == 0 || o.peer != s.rank_of(st - 1))
            bad(fmt::format("{}: receives from rank {}, the previous stage is on rank {}", where(r, i, o), o.peer,
                            st == 0 ? -1 : s.rank_of(st - 1)));
          break;
        case OpKind::recv_grad:
          if (st == S - 1 || o.peer != s.rank_of(st + 1))
            bad(fmt::format("{}: receives from rank {}, the next stage is on rank {}", where(r, i, o), o.peer,
                            st == S - 1 ? -1 : s.rank_of(st + 1)));
          break;
      }
    }
    // Completeness: every (mb, chunk) has its ops and messages.
    for (int c = 0; c < s.v; ++c)
      for (int mb = 0; mb < s.m; ++mb) {
        const int st = s.stage(r, c);
        std::vector<std::pair<OpKind, bool>> want = {{OpKind::forward, true},
                                                     {OpKind::recv_act, st > 0},
                                                     {OpKind::send_act, st < S - 1}};
        if (!s.forward_only) {
          want.push_back({s.split_backward ? OpKind::backward_input : OpKind::backward, true});
          if (s.split_backward) want.push_back({OpKind::backward_weight, true});
          want.push_back({OpKind::recv_grad, st < S - 1});
          want.push_back({OpKind::send_grad, st > 0});
        }
        for (auto [k, needed] : want) {
          bool has = at.count(Key{static_cast<int>(k), mb, c}) > 0;
          if (has != needed)
            bad(fmt::format("rank {}: {} of micro-batch {} chunk {} (stage {}) is {}", r, op_name(k), mb, c, st,
                            needed ? "missing" : "not expected"));
        }
      }
  }
  if (!v.ok) return v;

  // 2. Run all ranks: sends and receives never block, a compute op waits for
  //    its message. No progress before the end is a deadlock.
  std::set<std::tuple<int, int, int>> sent;  // (is_grad, mb, destination stage)
  std::vector<size_t> pc(static_cast<size_t>(s.p), 0);
  std::vector<int> held(static_cast<size_t>(s.p), 0);
  std::vector<std::vector<int>> held_c(static_cast<size_t>(s.p), std::vector<int>(static_cast<size_t>(s.v), 0));
  v.peak_in_flight.assign(static_cast<size_t>(s.p), 0);
  v.peak_in_flight_chunk.assign(static_cast<size_t>(s.p), std::vector<int>(static_cast<size_t>(s.v), 0));
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < s.p; ++r) {
      const auto& ops = s.ranks[static_cast<size_t>(r)];
      size_t& i = pc[static_cast<size_t>(r)];
      for (; i < ops.size(); ++i, progress = true) {
        const Op& o = ops[i];
        const int st = s.stage(r, o.chunk);
        if (o.kind == OpKind::forward && st > 0 && !sent.count({0, o.mb, st})) break;
        if ((o.kind == OpKind::backward || o.kind == OpKind::backward_input) && st < S - 1 &&
            !sent.count({1, o.mb, st}))
          break;
        if (o.kind == OpKind::send_act) sent.insert({0, o.mb, st + 1});
        if (o.kind == OpKind::send_grad) sent.insert({1, o.mb, st - 1});
        int delta = o.kind == OpKind::forward ? 1
                    : (o.kind == OpKind::backward || o.kind == OpKind::backward_weight) ? -1
                                                                                        : 0;
        int& h = held[static_cast<size_t>(r)];
        int& hc = held_c[static_cast<size_t>(r)][static_cast<size_t>(o.chunk)];
        h += delta, hc += delta;
        v.peak_in_flight[static_cast<size_t>(r)] = std::max(v.peak_in_flight[static_cast<size_t>(r)], h);
        auto& pcc = v.peak_in_flight_chunk[static_cast<size_t>(r)][static_cast<size_t>(o.chunk)];
        pcc = std::max(pcc, hc);
        if (s.forward_only && o.kind == OpKind::forward) --h, --hc;
      }
    }
  }
  std::string stuck;
  for (int r = 0; r < s.p; ++r) {
    const auto& ops = s.ranks[static_cast<size_t>(r)];
    size_t i = pc[static_cast<size_t>(r)];
    if (i < ops.size())
      stuck += fmt::format("{}{} waits for the {} of stage {}", stuck.empty() ? "" : "; ", where(r, i, ops[i]),
                           ops[i].kind == OpKind::forward ? "activation" : "gradient",
                           ops[i].kind == OpKind::forward ? s.stage(r, ops[i].chunk) - 1 : s.stage(r, ops[i].chunk) + 1);
  }
  if (!stuck.empty()) bad("deadlock: " + stuck);
  if (max_in_flight > 0)
    for (int r = 0; r < s.p; ++r)
      if (v.peak_in_flight[static_cast<size_t>(r)] > max_in_flight)
        bad(fmt::format("rank {} holds {} micro-batches of activations at once, more than the bound {}", r,
                        v.peak_in_flight[static_cast<size_t>(r)], max_in_flight));
  return v;
}

}  // namespace sy::pipe
