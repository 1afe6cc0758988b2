// sy-bench-dispatch: expert-parallel dispatch + combine, nccl-tests style.
//   mpirun -np P sy-bench-dispatch [--tokens 4096] [--iters 10] [--warmup 2] [--top-k 2]
//                                  [--experts 8,16] [--dims 512,1024] [--node-size 0] [--no-layer]
// For each shape (C in --dims, E in --experts, K = --top-k, tokens per rank):
//  - raw: MPI_Alltoallv of the same rows there and back (the baseline);
//  - ours: plan (counts all-to-all) + gather + all-to-all-v + back + combine,
//    the data path of an MoE layer without its GEMMs;
//  - shm: the same path through the shared-memory transport (only when the
//    ep group is on one node: "-" otherwise);
//  - hier: the same path through the hierarchical transport (nodes as the
//    machine says, or every --node-size consecutive ranks declared a node),
//    with the bytes it sent between nodes as a share of the flat transport's
//    (xnode: below 100% where a token's row goes once to a node holding
//    several of its experts);
//  - hier+fp8: the hierarchical path with parallel.dispatch_dtype = fp8
//    (rows to the experts in FP8 with 1x128 scales, back in BF16; every row
//    packed and unpacked, the node's too); its ratio is against raw of the
//    same FP32 rows, xnode its packed bytes between nodes / the flat FP32
//    transport's;
//  - the MoE layer (F = C, one shared expert) forward + backward, plain and
//    overlapped (4 chunks), with the share of permute/unpermute in it, and
//    the layer per payload over the MPI transport (--no-layer: "-" and no
//    payload table; the routing forward runs with tiny experts, which routes
//    the same: the router reads only h and its own weights).
// Bytes are the rows each rank sends, both directions; algbw = bytes / time,
// busbw = algbw * (P - 1) / P (nccl-tests' all-to-all factor). Times are
// medians over the iterations of the slowest rank. Never pass/fail, except
// that every rank checks its rows came back intact (the #wrong column).
#include <CLI/CLI.hpp>
#include <omp.h>

#include <algorithm>
#include <iostream>
#include <vector>

#include "comm/comm.h"
#include "comm/grid.h"
#include "comm/shm.h"
#include "core/cpu.h"
#include "core/rng.h"
#include "core/timer.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/permute.h"
#include "model/layout.h"
#include "model/moe_block.h"
#include "moe/transport/hier.h"
#include "moe/payload.h"

extern "C" void openblas_set_num_threads(int);

namespace {

using namespace sy;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times f over iterations (after warm-up), slowest rank per iteration.
template <class F>
double time_it(const Comm& world, int warmup, int iters, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < warmup + iters; ++i) {
    world.barrier();
    double t0 = now_seconds();
    f();
    double dt = now_seconds() - t0;
    world.allreduce_max(&dt, 1);
    if (i >= warmup) t.push_back(dt);
  }
  return median(t);
}

}  // namespace

int main(int argc, char** argv) {
  prefer_fast_blas_kernels(argv);
  flush_denormals();
  CLI::App app{"expert-parallel dispatch + combine against MPI_Alltoallv"};
  int64_t tokens = 4096;
  int iters = 10, warmup = 2, node_size = 0;
  int64_t K = 2;
  std::vector<int64_t> dims{512, 1024}, experts{8, 16};
  app.add_option("--tokens", tokens, "tokens per rank");
  app.add_option("--top-k", K, "experts per token")->check(CLI::Range(1, 64));
  app.add_option("--dims", dims, "model widths C")->delimiter(',');
  app.add_option("--experts", experts, "expert counts E")->delimiter(',');
  app.add_option("--node-size", node_size,
                 "ranks per node for the hierarchical transport (0: the machine's nodes; n: every n consecutive "
                 "ranks declared a node)")->check(CLI::NonNegativeNumber);
  bool no_layer = false;
  app.add_flag("--no-layer", no_layer, "only the data path (no MoE layer forward + backward columns)");
  app.add_option("--iters", iters);
  app.add_option("--warmup", warmup);
  CLI11_PARSE(app, argc, argv);
  MpiEnv mpi(&argc, &argv);
  Comm world = Comm::world();
  const int P = world.size();
  const bool root = world.rank() == 0;
  const int threads = default_threads(world);  // collective: every rank
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  try {
    // The machine's nodes decide whether shared memory can serve the whole
    // group (a window across nodes cannot be allocated); the declared ones
    // (--node-size) what the hierarchical transport treats as a node.
    const bool one_node = same_node(world);
    const NodeLayout nodes = node_size > 0 ? NodeLayout::consecutive(world, node_size) : NodeLayout::of(world);
    if (root)
      std::cout << fmt::format(
          "# sy-bench-dispatch: {} ranks ({}{}), {} tokens per rank, K = {}, {} threads per rank, times in ms "
          "(median of {}, slowest rank)\n"
          "#{:>5} {:>4} {:>8} | {:>7} {:>6} {:>6} | {:>7} {:>5} | {:>7} {:>6} {:>6} {:>5} | {:>7} {:>6} {:>6} {:>5} "
          "{:>6} | {:>8} {:>6} {:>6} {:>5} {:>6} | {:>6} | {:>8} {:>8} {:>5} {:>8} {:>5} {:>8} {:>5} | {:>7}\n",
          P, nodes.describe(), node_size > 0 ? " declared by --node-size" : "", tokens, K, threads, iters, "C", "E",
          "MB/rank", "raw", "algbw", "busbw", "mpi", "ratio", "shm", "algbw", "busbw", "ratio", "hier", "algbw",
          "busbw", "ratio", "xnode", "hier+fp8", "algbw", "busbw", "ratio", "xnode", "#wrong", "layer", "overlap", "speed", "shm", "speed", "hier", "speed",
          "permute")
                << std::flush;
    std::vector<std::string> payload_lines;
    double payload_base = 0;
    for (int64_t C : dims)
      for (int64_t E : experts) {
        if (E % P || K > E) continue;
        Grid grid(world, {1, 0, P}, E, "bench");
        ModelConfig m;
        m.d_model = C, m.n_layers = 1, m.dense_layers = 0, m.n_heads = 8, m.n_kv_heads = 8, m.seq_len = tokens;
        m.moe.experts = E, m.moe.top_k = K, m.moe.expert_hidden = no_layer ? 8 : C, m.moe.shared_experts = no_layer ? 0 : 1;
        m.moe.aux_loss_coef = 0.01;
        const int64_t N = tokens;
        Dims d(m, 1);
        ParamLayout layout(m, {grid.ep_rank() * (E / P), E / P});
        std::vector<float> params(layout.total()), grads(layout.total(), 0.f);
        init_params(params.data(), layout, 1);
        std::vector<float> h(N * C);
        uint64_t key = stream_key(world.rank(), "bench.h");
        for (int64_t i = 0; i < N * C; ++i) h[i] = normal_at(key, i);

        // Routing for the data-path measurements: the layer's own router.
        MoeContext plain{DpGroup(grid.dp()), make_dispatcher(DispatchKind::mpi, grid.ep()), grid.dp_rank() * N};
        MoeScratch scratch;
        MoeActs acts;
        Arena arena;
        {
          ArenaPlan ap;
          acts.bind(ap, d);
          arena.reserve(ap.bytes());
          acts.bind(arena, d);
        }
        std::vector<float> out(N * C), dh(N * C);
        moe_block_forward(Ops{}, acts, out.data(), h.data(), params.data(), nullptr, layout.block(0), d, m.moe, plain, scratch);
        const EpDispatch& plan = acts.plan;
        const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
        std::vector<float> send(Ms * C), recv(Mr * C), back(Ms * C), combined(N * C);
        double bytes = 2.0 * static_cast<double>(Ms * C) * sizeof(float);
        world.allreduce_max(&bytes, 1);

        // Raw MPI_Alltoallv of the same rows, there and back.
        std::vector<int64_t> sc(P), sd(P), rc(P), rd(P);
        {
          std::vector<int64_t> counts(P, 0), in(P);
          for (int64_t i = 0; i < N * K; ++i)
            if (acts.keep[i]) ++counts[acts.idx[i] / (E / P)];
          world.alltoall(counts.data(), 1, in.data());
          for (int p = 0, so = 0, ro = 0; p < P; ++p) sc[p] = counts[p], sd[p] = so, so += counts[p], rc[p] = in[p], rd[p] = ro, ro += in[p];
        }
        double raw = time_it(world, warmup, iters, [&] {
          grid.ep().alltoallv_rows(send.data(), sc, sd, recv.data(), rc, rd, C, "raw");
          grid.ep().alltoallv_rows(recv.data(), rc, rd, back.data(), sc, sd, C, "raw back");
        });

        // MPI transport: plan + gather + all-to-all-v + back + combine (identity experts).
        EpDispatch p2;
        int64_t wrong = 0;
        double mpi_path = time_it(world, warmup, iters, [&] {
          p2.plan(grid.ep(), acts.idx, acts.keep, N, K, E, 1);
          moe_gather(RowMap::contiguous(send.data()), h.data(), p2.send_token().data(), p2.send_rows(), C);
          p2.to_experts(grid.ep(), 0, send.data(), recv.data(), C, "dispatch").wait();
          p2.from_experts(grid.ep(), 0, recv.data(), back.data(), C, "combine").wait();
          std::fill(combined.begin(), combined.end(), 0.f);
          moe_combine(combined.data(), RowMap::contiguous(back.data()), nullptr, acts.gates, p2.send_pos().data(), N,
                      K, C);
        });
        for (int64_t r = 0; r < Ms; ++r)
          for (int64_t c = 0; c < C; ++c) wrong += back[r * C + c] != h[p2.send_token()[r] * C + c];

        // Shared-memory transport: plan + rows written into the expert's
        // segment + fence + combine reading them there (identity experts).
        SharedWindow win;
        std::vector<float> combined_shm(N * C), copy(Ms * C);
        double shm_path = 0;
        if (one_node) shm_path = time_it(world, warmup, iters, [&] {
          p2.plan(grid.ep(), acts.idx, acts.keep, N, K, E, 1, true);
          win.ensure(grid.ep(), p2.recv_rows() * C);
          RowMap at = RowMap::scattered(win.peers(), p2.dest_rank(), p2.dest_row());
          moe_gather(at, h.data(), p2.send_token().data(), p2.send_rows(), C);
          win.fence(grid.ep(), "dispatch");
          std::fill(combined_shm.begin(), combined_shm.end(), 0.f);
          moe_combine(combined_shm.data(), at, nullptr, acts.gates, p2.send_pos().data(), N, K, C);
          win.fence(grid.ep(), "combine");
        });
        if (one_node) {  // the rows as the combine saw them (outside the timing)
          std::vector<float> scratch_out(N * C, 0.f);
          moe_combine(scratch_out.data(), RowMap::scattered(win.peers(), p2.dest_rank(), p2.dest_row()), copy.data(),
                      acts.gates, p2.send_pos().data(), N, K, C);
          for (int64_t r = 0; r < Ms; ++r)
            for (int64_t c = 0; c < C; ++c) wrong += copy[r * C + c] != h[p2.send_token()[r] * C + c];
          for (int64_t i = 0; i < N * C; ++i) wrong += combined_shm[i] != combined[i];
        }

        // Hierarchical transport: the same path through its Dispatcher
        // (plan, routes, gather, both levels there and back, combine), with
        // FP32 rows and with the FP8 payload (rows back in BF16).
        auto hier_path_of = [&](const std::shared_ptr<const Dispatcher>& D, std::vector<float>& combined_out,
                                HierTraffic& traffic) {
          const auto& H = dynamic_cast<const HierDispatcher&>(*D);
          auto h_layer = D->make_layer();
          auto h_scratch = D->make_scratch();
          EpDispatch p3;
          combined_out.assign(N * C, 0.f);
          H.reset_traffic();
          double t = time_it(world, warmup, iters, [&] {
            D->plan(p3, acts.idx, acts.keep, N, K, E);
            Rows r = D->forward_rows(p3, *h_layer, *h_scratch, C, false);
            moe_gather(r.send, h.data(), p3.send_token().data(), p3.send_rows(), C);
            ExpertSteps steps;
            steps.meanwhile = [] {};
            steps.experts = [&](int) { std::copy_n(r.recv, p3.recv_rows() * C, r.reply); };
            D->exchange(Pass::forward, p3, r, *h_layer, *h_scratch, C, steps, nullptr);
            std::fill(combined_out.begin(), combined_out.end(), 0.f);
            moe_combine(combined_out.data(), r.back, nullptr, acts.gates, p3.send_pos().data(), N, K, C);
          });
          traffic = H.traffic();  // the forward passes above, warm-up included
          world.allreduce_sum(&traffic.network_bytes, 1);
          world.allreduce_sum(&traffic.flat_bytes, 1);
          return t;
        };
        auto hier = make_dispatcher(DispatchKind::hierarchical, grid.ep(), 1, nodes);
        std::vector<float> combined_hier;
        HierTraffic traffic, traffic8;
        double hier_path = hier_path_of(hier, combined_hier, traffic);
        for (int64_t i = 0; i < N * C; ++i) wrong += combined_hier[i] != combined[i];
        // FP8 rows are not the FP32 ones (tests/mpi/test_dispatch.cpp checks
        // them bit for bit against the mpi transport's): not in #wrong.
        double hier8_path = hier_path_of(
            make_dispatcher(DispatchKind::hierarchical, grid.ep(), 1, nodes,
                            make_payload_codec(Payload::fp8, Payload::bf16, backend(Device::cpu))),
            combined_hier, traffic8);
        traffic8.flat_bytes = traffic.flat_bytes;  // against the flat transport's FP32 rows
        world.allreduce_sum(&wrong, 1);

        // The whole MoE layer, forward + backward, plain and overlapped.
        auto layer = [&](MoeContext& ctx) {
          moe_block_forward(Ops{}, acts, out.data(), h.data(), params.data(), nullptr, layout.block(0), d, m.moe, ctx, scratch);
          Scratch s;
          ArenaPlan sp;
          s.bind(sp, d);
          static Arena sa;
          if (sa.capacity() < sp.bytes()) sa.reserve(sp.bytes());
          sa.clear();
          s.bind(sa, d);
          moe_block_backward(Ops{}, dh.data(), grads.data(), acts, out.data(), h.data(), params.data(), layout.block(0), d,
                             m.moe, 1.0, ctx, scratch, s);
        };
        MoeTimers tp;
        plain.timers = &tp;
        double t_plain = 0, t_over = 0, t_shm = 0, t_hier = 0, permute_share = 0;
        if (!no_layer) {
        t_plain = time_it(world, warmup, iters, [&] { layer(plain); });
        MoeContext over{DpGroup(grid.dp()), make_dispatcher(DispatchKind::mpi_overlapped, grid.ep(), 4),
                        grid.dp_rank() * N};
        t_over = time_it(world, warmup, iters, [&] { layer(over); });
        if (one_node) {
          MoeContext shm{DpGroup(grid.dp()), make_dispatcher(DispatchKind::shm, grid.ep()), grid.dp_rank() * N};
          acts.rows.reset();  // the transport's buffers are its own: shm makes its windows
          scratch.rows.reset();
          t_shm = time_it(world, warmup, iters, [&] { layer(shm); });
        }
        MoeContext hier_ctx{DpGroup(grid.dp()), hier, grid.dp_rank() * N};
        acts.rows.reset();
        scratch.rows.reset();
        t_hier = time_it(world, warmup, iters, [&] { layer(hier_ctx); });
        acts.rows.reset();
        scratch.rows.reset();
        permute_share = tp.permute / tp.total();
        world.allreduce_max(&permute_share, 1);
        // Payloads (parallel.dispatch_dtype) over the MPI transport: bytes per
        // row this rank sent to other ranks (rows to the experts, rows back)
        // and the layer's time against FP32 rows.
        acts.rows.reset();
        scratch.rows.reset();
        for (Payload p : {Payload::fp32, Payload::bf16, Payload::fp8}) {
          MoeContext pc{DpGroup(grid.dp()),
                        make_dispatcher(DispatchKind::mpi, grid.ep(), 1, {},
                                        make_payload_codec(p, p == Payload::fp32 ? Payload::fp32 : Payload::bf16,
                                                           backend(Device::cpu))),
                        grid.dp_rank() * N};
          MoeTimers pt;
          pc.timers = &pt;
          double t = time_it(world, warmup, iters, [&] { layer(pc); });
          double per_row[2] = {pt.out_rows ? static_cast<double>(pt.out_bytes) / pt.out_rows : 0,
                               pt.back_rows ? static_cast<double>(pt.back_bytes) / pt.back_rows : 0};
          world.allreduce_max(per_row, 2);
          if (p == Payload::fp32) payload_base = t;
          payload_lines.push_back(fmt::format(" {:>5} {:>4} {:>7} | {:>8.0f} {:>8.0f} | {:>8.1f} {:>5.2f}x {:>6.1f}%", C, E,
                                              to_string(p), per_row[0], per_row[1], t * 1e3, payload_base / t,
                                              100 * pt.codec / pt.total()));
        }
        }  // !no_layer
        acts.rows.reset();
        scratch.rows.reset();

        auto bw = [&](double t) { return bytes / t / 1e9; };
        double bus = static_cast<double>(P - 1) / P;
        auto shm_cols = [&] {
          if (!one_node) return fmt::format("{:>7} {:>6} {:>6} {:>5}", "-", "-", "-", "-");
          return fmt::format("{:>7.2f} {:>6.2f} {:>6.2f} {:>5.2f}", shm_path * 1e3, bw(shm_path), bw(shm_path) * bus,
                             raw / shm_path);
        };
        auto xnode_of = [](const HierTraffic& t) {
          return t.flat_bytes > 0 ? fmt::format("{:.0f}%", 100.0 * static_cast<double>(t.network_bytes) / t.flat_bytes)
                                  : std::string("-");
        };
        // A column left out (across nodes, --no-layer) prints "-" in its width.
        auto cell = [](bool on, int width, const std::string& text) {
          return fmt::format("{:>{}}", on ? text : "-", width);
        };
        if (root)
          std::cout << fmt::format(
                           " {:>5} {:>4} {:>8.2f} | {:>7.2f} {:>6.2f} {:>6.2f} | {:>7.2f} {:>5.2f} | {} | {:>7.2f} "
                           "{:>6.2f} {:>6.2f} {:>5.2f} {:>6} | {:>8.2f} {:>6.2f} {:>6.2f} {:>5.2f} {:>6} | {:>6} | "
                           "{} {} {} {} {} {} {} | {}\n",
                           C, E, bytes / 2 / 1e6, raw * 1e3, bw(raw), bw(raw) * bus, mpi_path * 1e3, raw / mpi_path,
                           shm_cols(), hier_path * 1e3, bw(hier_path), bw(hier_path) * bus, raw / hier_path,
                           xnode_of(traffic), hier8_path * 1e3, bw(hier8_path), bw(hier8_path) * bus,
                           raw / hier8_path, xnode_of(traffic8), wrong,
                           cell(!no_layer, 8, fmt::format("{:.1f}", t_plain * 1e3)),
                           cell(!no_layer, 8, fmt::format("{:.1f}", t_over * 1e3)),
                           cell(!no_layer, 5, fmt::format("{:.2f}x", t_plain / t_over)),
                           cell(!no_layer && one_node, 8, fmt::format("{:.1f}", t_shm * 1e3)),
                           cell(!no_layer && one_node, 5, fmt::format("{:.2f}x", t_plain / t_shm)),
                           cell(!no_layer, 8, fmt::format("{:.1f}", t_hier * 1e3)),
                           cell(!no_layer, 5, fmt::format("{:.2f}x", t_plain / t_hier)),
                           cell(!no_layer, 7, fmt::format("{:.1f}%", 100 * permute_share)))
                    << std::flush;
      }
    if (root)
      std::cout << "# raw = MPI_Alltoallv of the same rows there and back; mpi / shm / hier = the whole dispatch +\n"
                   "# combine path (plan with its count exchange, gather, transfer, return, gate-weighted combine) over\n"
                   "# the MPI all-to-all-v / shared-memory / hierarchical transport; ratio = raw / path. shm is \"-\"\n"
                   "# when the ranks span nodes (a shared-memory window cannot cross them). xnode = bytes the\n"
                   "# hierarchical path sent between nodes (dispatch + combine, all ranks) / the flat transport's for the\n"
                   "# same rows. hier+fp8 = the hierarchical path with FP8 rows out, BF16 back (algbw, busbw and ratio\n"
                   "# count the FP32 rows' bytes and raw time; its xnode = packed bytes / the flat transport's FP32\n"
                   "# bytes). layer = MoE forward + backward (F = C, one shared expert) with the plain MPI dispatch;\n"
                   "# overlap = 4-chunk overlapped MPI dispatch; shm / hier = those transports; speed = layer / that;\n"
                   "# permute = gather + combine and their backward, share of the plain layer's time. \"-\": not\n"
                   "# measured (shm across nodes, layer with --no-layer).\n";
    if (root && !no_layer) {
      std::cout << "\n# payloads (parallel.dispatch_dtype) over the MPI transport: bytes per row sent to other ranks\n"
                   "#    C    E payload | out B/row back B/row | layer ms speed  codec\n";
      for (const std::string& l : payload_lines) std::cout << l << "\n";
      std::cout << "# out = rows to the experts, back = rows back (both passes); speed = FP32 layer / this;\n"
                   "# codec = packing and unpacking, share of this layer's MoE time. On one node the MPI\n"
                   "# all-to-all-v moves memory, so a smaller payload shows its bytes, not a network's time.\n";
    }
    return 0;
  } catch (const Error& e) {
    std::cerr << "sy-bench-dispatch: " << e.what() << "\n";
    world.abort(1);
  }
}
