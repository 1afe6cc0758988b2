// Wiring a run from its config: grid, threads, memory check, data, model
// chunks (or the pipeline), parameters, gradient sync, optimizer,
// checkpointer and FP8 recipe; and the banner that describes it.
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "comm/shm.h"
#include "core/check.h"
#include "data/tokenizer.h"
#include "estimate/memory.h"
#include "estimate/model_size.h"
#include "moe/dispatcher.h"
#include "moe/dp_group.h"
#include "train/device_comm.h"
#include "train/pipeline_state.h"
#include "train/metrics.h"


namespace sy {

namespace {

GridShape shape_of(const ParallelSection& p) { return {p.pp, p.dp, p.ep}; }

std::vector<int64_t> local_counts(const ModelConfig& m, int64_t ep) {
  std::vector<int64_t> out;
  for (int64_t l = m.dense_layers; l < m.n_layers; ++l) out.push_back(m.experts_at(l) / ep);
  return out;
}

// Whether each expert group (moe.expert_groups) lives on one node of this
// layout: the hosts of the expert-parallel ranks (gathered over `ep`) that
// hold each group's experts, layer by layer. Collective over `ep` and `world`.
std::string describe_group_nodes(const ModelConfig& m, const Comm& ep, const Comm& world) {
  const int64_t G = m.moe.expert_groups, P = ep.size();
  if (G <= 1 || m.moe_layers() == 0) return {};
  constexpr size_t kHost = 64;
  std::vector<char> mine(kHost, '\0'), hosts(kHost * static_cast<size_t>(P));
  const std::string h = host_name();
  std::copy_n(h.begin(), std::min(h.size(), kHost - 1), mine.begin());
  ep.allgather(mine.data(), kHost, hosts.data());
  auto host = [&](int64_t r) { return std::string(hosts.data() + static_cast<size_t>(r) * kHost); };
  std::vector<std::string> names;
  for (int64_t r = 0; r < P; ++r)
    if (std::find(names.begin(), names.end(), host(r)) == names.end()) names.push_back(host(r));
  std::string split;  // the first group found on several nodes
  for (int64_t l = m.dense_layers; l < m.n_layers && split.empty(); ++l) {
    const int64_t E = m.experts_at(l), Eg = E / G, per_rank = E / P;
    for (int64_t g = 0; g < G && split.empty(); ++g) {
      const int64_t r0 = g * Eg / per_rank, r1 = ((g + 1) * Eg - 1) / per_rank;
      for (int64_t r = r0 + 1; r <= r1; ++r)
        if (host(r) != host(r0)) {
          split = fmt::format("group {} of layer {} (experts {}-{}) is on ep ranks {}-{}, hosts {} and {}", g, l,
                              g * Eg, (g + 1) * Eg - 1, r0, r1, host(r0), host(r));
          break;
        }
    }
  }
  int aligned = split.empty() ? 1 : 0;
  world.allreduce_min(&aligned, 1);  // every expert-parallel group's
  const std::string limit = m.moe.router_groups().on()
                                ? fmt::format("a token's experts from at most {} of {} groups", m.moe.max_nodes_per_token, G)
                                : fmt::format("{} groups, no limit (moe.max_nodes_per_token = 0)", G);
  if (names.size() == 1)
    return fmt::format("groups : {}; the expert-parallel group is on one node ({}): the limit saves no network bytes",
                       limit, names[0]);
  if (!split.empty() || !aligned)
    return fmt::format("groups : {}; the groups do NOT align with the {} nodes of the expert-parallel group ({}): the "
                       "limit saves no network bytes (training goes on; make each node hold whole groups: ep ranks per "
                       "node a multiple of ep / moe.expert_groups)", limit, names.size(),
                       split.empty() ? std::string("another expert-parallel group's do not") : split);
  return fmt::format("groups : {}; each group's experts live on one node ({} nodes: {}): a token's rows cross to at "
                     "most that many nodes", limit, names.size(), fmt::join(names, ", "));
}

// What the MoE rows travel as: to the experts (parallel.dispatch_dtype) and
// back (parallel.combine_dtype; "auto": BF16 with a bf16 or fp8 dispatch).
struct RowPayloads {
  Payload out, back;
  bool any() const { return out != Payload::fp32 || back != Payload::fp32; }
};
RowPayloads row_payloads(const ParallelSection& p) {
  const Payload out = p.dispatch_dtype == DispatchDtype::fp8    ? Payload::fp8
                      : p.dispatch_dtype == DispatchDtype::bf16 ? Payload::bf16
                                                                : Payload::fp32;
  const bool back16 = p.combine_dtype == CombineDtype::bf16 ||
                      (p.combine_dtype == CombineDtype::automatic && out != Payload::fp32);
  return {out, back16 ? Payload::bf16 : Payload::fp32};
}

std::string payload_note(const RowPayloads& r, int ep, const char* fp32_transport) {
  if (r.out == Payload::fp32 && r.back == Payload::fp32) return "";
  const std::string dt = fmt::format("{} / {}", to_string(r.out), to_string(r.back));
  if (ep == 1) return fmt::format(" (parallel.dispatch_dtype / combine_dtype = {}: no effect, nothing crosses ranks)", dt);
  if (fp32_transport != nullptr)
    return fmt::format(" with fp32 rows (parallel.dispatch_dtype / combine_dtype = {} are not applied by the {} "
                       "transport)", dt, fp32_transport);
  return fmt::format(", rows {} to the experts, {} back", to_string(r.out), to_string(r.back));
}
}  // namespace

Tokenizer Trainer::load_tokenizer() const {
  const std::string& path = cfg_.data.tokenizer;
  std::error_code ec;
  SY_CONFIG_CHECK(std::filesystem::is_regular_file(path, ec), "{}: data.tokenizer = \"{}\": no such file (a "
                  "SentencePiece .model, as moe-data writes)", cfg_.source, path);
  Tokenizer tok = Tokenizer::load(path);
  SY_CONFIG_CHECK(cfg_.model.vocab_size >= tok.pieces(), "{}: model.vocab_size = {} is smaller than the {} pieces of "
                  "data.tokenizer '{}': set model.vocab_size >= {}", cfg_.source, cfg_.model.vocab_size, tok.pieces(),
                  path, tok.pieces());
  return tok;
}

Trainer::Trainer(RunConfig cfg, const Comm& world)
    : cfg_(std::move(cfg)),
      grid_(world, shape_of(cfg_.parallel), cfg_.model.experts_gcd(), cfg_.source,
            cfg_.model.uniform_experts() ? "" : cfg_.model.experts_text()) {
  rank0_ = world.rank() == 0;
  // run.device: the backend every op runs on (the CUDA module loaded at run
  // time, or the emulated device under SY_EMULATE_CUDA=guarded in tests).
  ops_.be = &open_backend(*parse_device(cfg_.run.device));
  cfg_.parallel.dp = grid_.dp_size();
  cfg_.parallel.ep = grid_.ep_size();
  cfg_.resolve_batch(grid_.dp_size());
  set_threads(world);

  // Before anything that grows with the model: does this rank's share fit
  // the memory its node has left? Every rank of the node measures before
  // any of them allocates (the barrier), so none counts another's buffers.
  // On a device, activations and expert rows are its memory, and the rest is
  // there and on the host (the host copies); each rank of the node has its
  // device, or shares one when there are more ranks than devices.
  const MemoryEstimate need = estimate_memory(cfg_, {grid_.pp_size(), grid_.dp_size(), grid_.ep_size()});
  const int64_t on_node = node_ranks(world);
  check_memory(cfg_, on_device() ? on_device_host(need) : need, available_memory(), on_node);
  int64_t sharing = 1;  // ranks of this node on this rank's device
  if (const auto dev = ops_.b().device_memory()) {
    // Ranks that share this device: the same host and device id (each rank
    // may see every GPU of the node, or only its own).
    constexpr size_t kId = 192;
    std::vector<char> mine(kId, '\0'), all(kId * static_cast<size_t>(world.size()));
    const std::string key = host_name() + "/" + dev->id;
    std::copy_n(key.begin(), std::min(key.size(), kId - 1), mine.begin());
    world.allgather(mine.data(), kId, all.data());
    sharing = 0;
    for (int r = 0; r < world.size(); ++r) sharing += std::equal(mine.begin(), mine.end(), all.begin() + r * static_cast<std::ptrdiff_t>(kId));
    check_device_memory(cfg_, need, dev->free, dev->total, sharing);
  }
  world.barrier();
  // Every layout runs on a device: the float traffic of data, expert and pipeline
  // parallelism and ZeRO-1 moves device buffers over the groups' device twins.
  dgrid_ = on_device() ? grid_.over(device_comms(ops_.b(), ops_.stream, world, sharing, &device_comm_)) : grid_;

  // The tokenizer's vocabulary fits the model: checked before the data is read.
  std::string tokenizer_model = cfg_.data.tokenizer.empty() ? std::string() : load_tokenizer().serialized();
  try {  // the data's errors name the key and file; the config that set them is named too
    data_ = std::make_unique<DataFiles>(option_name(cfg_.data.format), cfg_.data.train, cfg_.data.val,
                                        cfg_.data.val_fraction, cfg_.model.vocab_size);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: {}", cfg_.source, e.what()), e.where());
  }
  const int64_t len = cfg_.model.seq_len + 1;
  SY_CONFIG_CHECK(data_->train().windows(len) > 0,
                  "{}: the training data ({}) has no file with at least model.seq_len + 1 = {} tokens",
                  cfg_.source, data_->train().describe(), len);
  if (cfg_.train.val_every > 0)
    SY_CONFIG_CHECK(data_->val().windows(len) > 0,
                    "{}: validation is on (train.val_every = {}) but the validation data ({}) has no "
                    "window of {} tokens; raise data.val_fraction, name data.val, or set train.val_every = 0",
                    cfg_.source, cfg_.train.val_every, data_->val().describe(), len);
  batcher_ = std::make_unique<Batcher>(data_->train(), data_->val(), cfg_.model.seq_len, cfg_.train.micro_batch,
                                       grid_.dp_size(), cfg_.train.val_batches,
                                       static_cast<uint64_t>(cfg_.train.seed), cfg_.model.vocab_size);

  const Transport transport = cfg_.parallel.transport;
  bool one_node = grid_.ep_size() > 1 && same_node(grid_.ep());
  SY_CONFIG_CHECK(transport != Transport::shm || one_node || grid_.ep_size() == 1,
                  "{}: parallel.transport = \"shm\" needs every expert-parallel group on one node, and {} spans "
                  "several; use \"mpi\", \"hierarchical\" or \"auto\"", cfg_.source, grid_.ep().describe());
  // The nodes the MoE dispatch sees: the machine's, or those parallel.node_size
  // declares (each must lie within a real node: the ranks share memory).
  NodeLayout nodes;
  if (grid_.ep_size() > 1) {
    if (cfg_.parallel.node_size > 0) {
      nodes = NodeLayout::consecutive(grid_.ep(), static_cast<int>(cfg_.parallel.node_size));
      Comm declared = grid_.ep().split(nodes.node[static_cast<size_t>(grid_.ep_rank())],
                                       static_cast<int>(grid_.ep_rank()), "declared-node");
      int shares = same_node(declared);
      world.allreduce_min(&shares, 1);
      SY_CONFIG_CHECK(shares != 0,
                      "{}: parallel.node_size = {} declares nodes (every {} consecutive world ranks) whose ranks do "
                      "not all share memory on this machine; use a size that divides the real nodes' rank counts, "
                      "or 0 for the machine's nodes",
                      cfg_.source, cfg_.parallel.node_size, cfg_.parallel.node_size);
    } else {
      nodes = NodeLayout::of(grid_.ep());
    }
  }
  // The MoE dispatch transport, chosen here once.
  DispatchKind dispatch = cfg_.parallel.overlap ? DispatchKind::mpi_overlapped : DispatchKind::mpi;
  if (grid_.ep_size() > 1) {
    if (transport == Transport::shm || (transport == Transport::automatic && one_node && nodes.nodes() == 1))
      dispatch = DispatchKind::shm;
    else if (transport == Transport::hierarchical ||
             (transport == Transport::automatic && nodes.hierarchical_pays()))
      dispatch = DispatchKind::hierarchical;
  }
  if (on_device() && grid_.ep_size() > 1) {
    SY_CONFIG_CHECK(transport == Transport::automatic || transport == Transport::mpi,
                    "{}: run.device = \"{}\" with parallel.transport = \"{}\": on a device the MoE rows cross ranks "
                    "by the flat transport over the device communicator for now; set parallel.transport = \"auto\" "
                    "or \"mpi\"",
                    cfg_.source, cfg_.run.device, option_name(transport));
    dispatch = cfg_.parallel.overlap ? DispatchKind::mpi_overlapped : DispatchKind::mpi;
  }
  dispatch_note_ = grid_.ep_size() == 1                       ? std::string(", no dispatch")
                   : on_device()                              ? fmt::format(", MPI dispatch of device rows ({}{})",
                                                                            device_comm_.starts_with("NCCL") ? "NCCL" : "staged through host memory",
                                                                            dispatch == DispatchKind::mpi_overlapped
                                                                                ? fmt::format(", overlapped in {} chunks", cfg_.parallel.dispatch_chunks)
                                                                                : std::string())
                   : dispatch == DispatchKind::shm            ? std::string(", shared-memory dispatch")
                   : dispatch == DispatchKind::mpi_overlapped ? fmt::format(", MPI dispatch overlapped ({} chunks)",
                                                                            cfg_.parallel.dispatch_chunks)
                   : dispatch == DispatchKind::mpi            ? std::string(", MPI dispatch")
                                                              : fmt::format(", hierarchical dispatch ({}{})", nodes.describe(),
                                                                            cfg_.parallel.node_size > 0 ? " by parallel.node_size" : "");
  // What the MPI and hierarchical transports' rows travel as, FP8 rows
  // quantized as the FP8 recipe's expert GEMM would (its gradient format,
  // power-of-two scales, saturation), by the backend that runs it.
  const RowPayloads rows = row_payloads(cfg_.parallel);
  dispatch_note_ += payload_note(rows, grid_.ep_size(), dispatch == DispatchKind::shm ? "shm" : nullptr);
  const bool fp8_recipe = is_fp8(cfg_.precision.recipe);
  // Packed where the rows are: on a device run, on the device.
  const PayloadCodec codec = make_payload_codec(
      rows.out, rows.back, *ops_.be,
      fp8_recipe && cfg_.precision.grad_format == GradFormat::e5m2 ? Fp8Format::e5m2 : Fp8Format::e4m3,
      fp8_recipe && cfg_.precision.pow2_scales, !fp8_recipe || cfg_.precision.saturate);
  // On a device: rows in the device's memory, packed there, crossing ranks over the ep group's
  // device twin (moe/dispatcher.h).
  MoeContext ctx{DpGroup(grid_.dp()),
                 on_device() ? make_device_dispatcher(grid_.ep(), dgrid_.ep(), ops_.b(), codec, ops_.stream,
                                                      dispatch == DispatchKind::mpi_overlapped
                                                          ? static_cast<int>(cfg_.parallel.dispatch_chunks)
                                                          : 0)
                             : make_dispatcher(dispatch, grid_.ep(), static_cast<int>(cfg_.parallel.dispatch_chunks),
                                               nodes, codec),
                 grid_.dp_rank() * cfg_.train.micro_batch * cfg_.model.seq_len};
  ctx.timers = &moe_timers_;
  // The FP8 recipe state, made before the model: the model's Ops carry it.
  if (is_fp8(cfg_.precision.recipe)) {
    Fp8Recipe r;
    const Recipe recipe = cfg_.precision.recipe;
    r.scaling = recipe == Recipe::fp8_block ? Fp8Scaling::block
                : recipe == Recipe::fp8_tensor_delayed ? Fp8Scaling::tensor_delayed : Fp8Scaling::tensor_current;
    r.grad_format = cfg_.precision.grad_format == GradFormat::e4m3 ? Fp8Format::e4m3 : Fp8Format::e5m2;
    r.amax_history = cfg_.precision.amax_history;
    r.pow2_scales = cfg_.precision.pow2_scales;
    r.saturate = cfg_.precision.saturate;
    fp8_ = std::make_unique<Fp8Linear>(r, *ops_.be, ops_.stream);
  }
  ops_.fp8 = fp8_.get();
  ops_.bf16 = cfg_.precision.recipe == Recipe::bf16;
  const bool fp8_acts = is_fp8(cfg_.precision.recipe) && cfg_.precision.fp8_activations;
  if (pipelined()) {
    setup_pipeline(ctx, fp8_acts);
  } else {
    SY_CONFIG_CHECK(cfg_.parallel.recompute == Recompute::none, "{}: parallel.recompute = \"{}\" recomputes pipeline stages; "
                    "it needs parallel.pp > 1", cfg_.source, option_name(cfg_.parallel.recompute));
    SY_CONFIG_CHECK(cfg_.parallel.virtual_stages == 1 && cfg_.parallel.split.empty(),
                    "{}: parallel.virtual and parallel.split need parallel.pp > 1", cfg_.source);
    chunks_.push_back(
        std::make_unique<Transformer>(cfg_.model, cfg_.train.micro_batch, ctx, fp8_acts, StageRun{}, ops_));
  }
  model_ = chunks_[0].get();
  full_layout_ = std::make_unique<ParamLayout>(cfg_.model);
  const ParamLayout& layout = model_->layout();
  params_.resize(static_cast<size_t>(layout.total()));
  grads_.resize(static_cast<size_t>(layout.total()));
  if (on_device()) {  // the host copies the device copies to and from: page-locked where the device allows
    const size_t bytes = params_.size() * sizeof(float);
    pinned_ = ops_.b().pin(params_.data(), bytes) && ops_.b().pin(grads_.data(), bytes);
    if (!pinned_ && rank0_)
      std::cerr << "note: the host copies of the weights and gradients could not be page-locked; copies to and "
                   "from the device run from pageable memory (slower)\n";
  }
  init_params(params_.data(), layout, static_cast<uint64_t>(cfg_.train.seed));
  sync_ = std::make_unique<GradSync>(layout, dgrid_, cfg_.parallel.zero1, ops_.b().allocator());
  opt_ = std::make_unique<AdamW>(sync_->ranges(), sync_->state_size(), cfg_.train,
                                 cfg_.precision.moments == Moments::bf16, *ops_.be, ops_.stream);
  if (!cfg_.train.lr_groups.empty()) {
    const std::vector<double> scale = resolve_lr_groups(cfg_.train.lr_groups, *full_layout_, cfg_.source, &lr_use_);
    std::vector<double> local(layout.params().size());
    for (size_t i = 0; i < local.size(); ++i) local[i] = scale[static_cast<size_t>(layout.params()[i].index)];
    opt_->set_lr_scales(std::move(local));
  }
  ckpt_ = std::make_unique<Checkpointer>(cfg_, grid_, layout, *full_layout_, *sync_);
  ckpt_->set_tokenizer(std::move(tokenizer_model));  // it travels with the model, for moe-generate --prompt
  expert_bias_.assign(static_cast<size_t>(cfg_.model.moe_layers() * cfg_.model.moe.experts), 0.f);
  if (fp8_) {
    if (fp8_->recipe().scaling == Fp8Scaling::tensor_delayed) {  // histories by global tensor index: reduced, checkpointed
      // Named by the weights' addresses where the ops read them: on a device, its copy (allocated here,
      // filled by state_to_device), else the histories would be kept by pointer and not checkpointed.
      const float* base = on_device() ? dparams_.ensure(params_.size(), ops_.b().allocator()) : params_.data();
      std::vector<std::pair<const float*, int64_t>> ids;
      for (const ParamInfo& p : layout.params()) ids.emplace_back(base + p.offset, p.index);
      fp8_->name_weights(ids, static_cast<int64_t>(full_layout_->params().size()));
    }
  }
  group_nodes_ = describe_group_nodes(cfg_.model, grid_.ep(), grid_.world());
  const int64_t N = cfg_.train.micro_batch * cfg_.model.seq_len;
  inputs_.resize(static_cast<size_t>(N));
  targets_.resize(static_cast<size_t>(N));
  state_to_device();  // the initial parameters, zero moments and bias (train() does it again after a resume)
}

void Trainer::params_to_host() {
  if (!on_device()) return;
  ckpt_->wait_staged();  // a background save may still be reading the host copy
  ops_.b().copy(params_.data(), dparams_.data(), params_.size() * sizeof(float), ops_.stream);
  ops_.b().synchronize(ops_.stream);
}

void Trainer::bias_to_device() {
  if (!on_device() || expert_bias_.empty()) return;
  ops_.b().copy(dbias_.ensure(expert_bias_.size(), ops_.b().allocator()), expert_bias_.data(),
                expert_bias_.size() * sizeof(float), ops_.stream);
  ops_.b().synchronize(ops_.stream);
}

void Trainer::state_to_device() {
  if (!on_device()) return;
  Allocator& mem = ops_.b().allocator();
  ops_.b().copy(dparams_.ensure(params_.size(), mem), params_.data(), params_.size() * sizeof(float), ops_.stream);
  dgrads_.ensure(grads_.size(), mem);
  ops_.b().zero(dgrads_.data(), grads_.size() * sizeof(float), ops_.stream);
  opt_->to_device();
  bias_to_device();
  ops_.b().synchronize(ops_.stream);
}


void Trainer::set_threads(const Comm& world) {
  ThreadCount tc = default_thread_count(world);  // collective (counts the node's ranks): every rank calls it
  std::string key = tc.source;
  if (cfg_.train.threads > 0) tc = {static_cast<int>(cfg_.train.threads), "train.threads"}, key = "train.threads";
  // More threads than CPUs only makes OpenMP and OpenBLAS threads spin
  // against each other: the fault campaign saw train.threads = 4096 hang
  // inside OpenBLAS on a Zen 3; on 2 cores of an EPYC 64 threads ran at
  // half the speed of 2. Beyond what OpenBLAS was built for (MAX_THREADS,
  // 64 in Debian's build) openblas_set_num_threads silently cuts to its
  // limit and resets OpenMP's team with it, so 128 or 4096 ran as 64: the
  // run would not be what the config says.
  const int cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const int blas_max = ops_.b().info().max_threads;
  const int limit = blas_max > 0 ? std::min(std::max(cpus, 1), blas_max) : std::max(cpus, 1);
  SY_CONFIG_CHECK(tc.threads <= limit, "{}{} = {} threads per rank is more than this machine can use: {} CPUs{}; "
                  "use at most {}{}", key == "train.threads" ? cfg_.source + ": " : "", key, tc.threads, cpus,
                  blas_max > 0 ? fmt::format(", OpenBLAS built for at most {} threads", blas_max) : "", limit,
                  key == "train.threads" ? " (0 = OMP_NUM_THREADS, else the CPUs shared among the node's ranks)" : "");
  threads_source_ = tc.source;
  ops_.b().set_threads(tc.threads);
}

std::string Trainer::describe() const {
  const ModelConfig& m = cfg_.model;
  const ParamLayout& full = *full_layout_;
  ParamCount counted;
  counted.total = full.total();
  for (const ParamInfo& p : full.params())
    if (p.expert >= 0) counted.expert += p.numel();
  const int64_t active = active_params_per_token(m, counted);
  const BackendInfo blas = ops_.b().info();
  std::string moe = m.moe_layers() == 0
                        ? "no MoE layers"
                        : fmt::format("{} MoE layer{}: E={} K={} F={} shared={} {} {}{}", m.moe_layers(),
                                      m.moe_layers() == 1 ? "" : "s",
                                      m.uniform_experts() ? fmt::format("{}", m.moe.experts)
                                                          : fmt::format("[{}]", fmt::join(m.moe.layer_experts, ",")),
                                      m.moe.top_k,
                                      m.moe.expert_hidden, m.moe.shared_experts,
                                      score_name(m.moe.score),
                                      m.moe.capacity_factor > 0 ? fmt::format("capacity {}", m.moe.capacity_factor)
                                                                : std::string("dropless"),
                                      m.moe.capacity_factor > 0 || m.moe.eval_capacity_factor > 0
                                          ? fmt::format(", validation {}", m.moe.eval_capacity_factor > 0
                                                                               ? fmt::format("capacity {}", m.moe.eval_capacity_factor)
                                                                               : std::string("dropless"))
                                          : std::string());
  const ParallelSection& p = cfg_.parallel;
  std::string pipe;
  if (const PipelinePlan* pl = pipeline())
    pipe = fmt::format("\npipe   : {} schedule, pp {} x {} chunk{}, {} micro-batches, recompute {}, split {} {}\n{}",
                       pipe::schedule_name(p.schedule), pl->pp, pl->v, pl->v == 1 ? "" : "s", pl->m, option_name(p.recompute),
                       pl->balanced ? "balanced by FLOPs" : "from parallel.split", fmt::join(pl->counts, "/"),
                       pl->describe());
  if (!pipe.empty() && pipe.back() == '\n') pipe.pop_back();
  if (!group_nodes_.empty()) pipe += "\n" + group_nodes_;
  if (on_device()) pipe += fmt::format("\ndevice : {} (run.device): parameters, gradients, moments, activations{}", ops_.b().name(),
                                       device_comm_.empty() ? std::string() : "; between ranks " + device_comm_);
  for (size_t g = 0; g < lr_use_.size(); ++g)
    pipe += fmt::format("\nlr     : \"{}\" x {}: {} tensor{}, {} params", cfg_.train.lr_groups[g].match,
                        cfg_.train.lr_groups[g].scale, lr_use_[g].tensors, lr_use_[g].tensors == 1 ? "" : "s",
                        human_count(static_cast<double>(lr_use_[g].elements)));
  return fmt::format(
      "model  : L={} C={} H={}/{} D={} T={} V={} | {} | {} params, {} active per token\n"
      "layout : {} | {}{} | {} params on rank 0\n"
      "data   : train {}, val {}\n"
      "batch  : {} seq x {} accum x {} dp = {} tokens/step\n"
      "cpu    : {} thread{} per rank ({}) | OpenBLAS {} kernels ({}), activations {:.1f} MiB per rank{}",
      m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_size(), m.seq_len, m.vocab_size, moe,
      human_count(static_cast<double>(full.total())), human_count(static_cast<double>(active)),
      m.uniform_experts() ? grid_.describe(m.moe.experts)
                          : fmt::format("{} (experts per rank by MoE layer: {})", grid_.describe(0),
                                        fmt::join(local_counts(m, grid_.ep_size()), "/")),
      p.zero1 ? "ZeRO-1" : "replicated optimizer",
      dispatch_note_,
      human_count(static_cast<double>(model_->layout().total())), data_->train().describe(),
      data_->val().describe(), cfg_.train.micro_batch, cfg_.train.grad_accum, grid_.dp_size(),
      cfg_.train.global_batch * m.seq_len, omp_get_max_threads(), omp_get_max_threads() == 1 ? "" : "s", threads_source_, blas.kernels, blas.threading,
      static_cast<double>(model_->activation_bytes()) / (1 << 20), pipe);
}
}  // namespace sy
