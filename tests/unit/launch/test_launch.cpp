// moe-launch's pure parts: hostfiles, argv building, the plan's layout
// checks and estimates, restart bookkeeping, output demultiplexing.
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "launch/command.h"
#include "launch/plan.h"
#include "launch/supervisor.h"
#include "testing.h"

namespace sy::launch {
namespace {

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

TEST(Hostfile, ParsesSlotsCommentsAndBlankLines) {
  auto h = parse_hostfile("# cluster\nnode1 slots=4\n\n  node2   slots=2 max_slots=8 # fat node\nnode3\n", "hf");
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].name, "node1");
  EXPECT_EQ(h[0].slots, 4);
  EXPECT_EQ(h[1].slots, 2);
  EXPECT_EQ(h[2].slots, 1);
  EXPECT_EQ(total_slots(h), 7);
}

TEST(Hostfile, ErrorsNameFileAndLine) {
  EXPECT_NE(error_of([] { parse_hostfile("a slots=2\nb slots=zero\n", "hosts.txt"); }).find("hosts.txt:2: slots"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_hostfile("a slots=2\na\n", "h"); }).find("h:2: host 'a' is listed twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_hostfile("a cpus=2\n", "h"); }).find("unknown hostfile key 'cpus'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_hostfile("# nothing\n", "h"); }).find("lists no host"), std::string::npos);
  EXPECT_NE(error_of([] { read_hostfile("/nonexistent/hosts"); }).find("/nonexistent/hosts"), std::string::npos);
}

CommandOptions options() {
  CommandOptions o;
  o.np = 8;
  o.train_binary = "/opt/sy/bin/moe-train";
  o.train_args = {"/cfg/small.toml", "--set", "train.steps=10"};
  o.env = {"OMP_NUM_THREADS", "SY_X"};
  return o;
}

TEST(Argv, Mpirun) {
  CommandOptions o = options();
  o.hostfile = "/etc/hosts.mpi";
  o.as_root = true;
  std::vector<std::string> want = {"mpirun", "-np", "8", "--hostfile", "/etc/hosts.mpi", "--map-by", "slot",
                                   "--bind-to", "none", "--tag-output", "-x", "OMP_NUM_THREADS", "-x", "SY_X",
                                   "--allow-run-as-root", "/opt/sy/bin/moe-train", "/cfg/small.toml", "--set",
                                   "train.steps=10"};
  EXPECT_EQ(mpirun_argv(o), want);
  o.hostfile.clear();
  o.as_root = false;
  o.oversubscribe = true;
  auto a = mpirun_argv(o);
  EXPECT_EQ(std::count(a.begin(), a.end(), "--hostfile"), 0);
  EXPECT_EQ(std::count(a.begin(), a.end(), "--oversubscribe"), 1);
  EXPECT_EQ(std::count(a.begin(), a.end(), "--allow-run-as-root"), 0);
}

TEST(Argv, Srun) {
  std::vector<std::string> want = {"srun", "--mpi=pmix", "-n", "8", "--kill-on-bad-exit=1", "--label",
                                   "--export=ALL", "/opt/sy/bin/moe-train", "/cfg/small.toml", "--set",
                                   "train.steps=10"};
  EXPECT_EQ(srun_argv(options()), want);
}

TEST(Argv, NothingBecomesAShellCommand) {
  // Values stay single argv elements; the printable form quotes them.
  CommandOptions o = options();
  o.train_args = {"--set", "run.name=x; rm -rf /"};
  auto a = mpirun_argv(o);
  EXPECT_EQ(a.back(), "run.name=x; rm -rf /");
  EXPECT_NE(shell_quote(a).find("'run.name=x; rm -rf /'"), std::string::npos);
  EXPECT_EQ(shell_quote({"a'b"}), "'a'\\''b'");
  // mpirun option values from a config are checked.
  EXPECT_NE(error_of([] { check_option_value("none; reboot", "launch.bind_to"); }).find("launch.bind_to"),
            std::string::npos);
  EXPECT_NE(error_of([] { check_option_value("--hostfile", "launch.map_by"); }).find("may not start with '-'"),
            std::string::npos);
  EXPECT_NO_THROW(check_option_value("ppr:2:node", "launch.map_by"));
  EXPECT_NE(error_of([] { check_env_name("A=B", "launch.env"); }).find("not an environment variable name"),
            std::string::npos);
}

Environment env(int64_t cores = 2) {
  Environment e;
  e.cores = cores;
  return e;
}

LaunchFlags flags(std::vector<std::string> sets, int64_t np = 0) {
  LaunchFlags f;
  f.sets = std::move(sets);
  f.np = np;
  f.train_binary = "/bin/true";
  return f;
}

TEST(Plan, WorldSizeSources) {
  EXPECT_EQ(make_plan(flags({}, 4), env()).np, 4);
  EXPECT_EQ(make_plan(flags({"launch.np=2"}), env()).np, 2);
  EXPECT_EQ(make_plan(flags({"parallel.dp=4", "parallel.ep=2"}), env()).np, 4);
  Environment slurm = env();
  slurm.slurm_job_id = "77";
  slurm.slurm_ntasks = 8;
  Plan p = make_plan(flags({}), slurm);
  EXPECT_EQ(p.np, 8);
  EXPECT_TRUE(p.slurm);
  EXPECT_EQ(p.argv[0], "srun");
  EXPECT_NE(error_of([&] { make_plan(flags({}, 16), slurm); }).find("SLURM_NTASKS = 8"), std::string::npos);
  const std::string hf = (std::filesystem::temp_directory_path() / "sy_test_hosts").string();
  std::ofstream(hf) << "a slots=2\nb slots=2\n";
  LaunchFlags f = flags({});
  f.hostfile = hf;
  Plan h = make_plan(f, env());
  EXPECT_EQ(h.np, 4);
  EXPECT_FALSE(h.command.oversubscribe);
  f.np = 6;
  EXPECT_NE(error_of([&] { make_plan(f, env()); }).find("has 4 slots"), std::string::npos);
}

TEST(Plan, LayoutIsValidatedBeforeStarting) {
  // 8 experts, ep must divide dp and the experts; global batch must split.
  EXPECT_NE(error_of([] { make_plan(flags({"parallel.dp=3"}, 4), env()); }).find("4 ranks"), std::string::npos);
  EXPECT_NE(error_of([] { make_plan(flags({"parallel.ep=3"}, 3), env()); }).find("parallel.ep"), std::string::npos);
  EXPECT_NE(error_of([] { make_plan(flags({"parallel.pp=3"}, 4), env()); }).find("not a multiple of parallel.pp = 3"),
            std::string::npos);
  EXPECT_NE(error_of([] { make_plan(flags({"train.global_batch=6"}, 4), env()); }).find("global_batch"),
            std::string::npos);
  Plan p = make_plan(flags({"parallel.ep=2"}, 4), env());
  EXPECT_EQ(p.shape.dp, 4);
  EXPECT_EQ(p.shape.ep, 2);
  EXPECT_TRUE(p.command.oversubscribe);  // 4 ranks, 2 cores, no hostfile
}

TEST(Plan, EstimatesFollowTheLayout) {
  Plan one = make_plan(flags({}, 1), env());
  Plan ep4 = make_plan(flags({"parallel.ep=4"}, 4), env());
  Plan z = make_plan(flags({"parallel.ep=1", "parallel.zero1=true"}, 4), env());
  EXPECT_EQ(one.params_rank, one.params_total);
  EXPECT_LT(ep4.params_rank, one.params_total);  // 2 of 8 experts per rank
  EXPECT_DOUBLE_EQ(z.memory.optimizer * 4, one.memory.optimizer);  // ZeRO-1 over 4 ranks
  EXPECT_DOUBLE_EQ(one.ckpt_bytes, 12.0 * static_cast<double>(one.params_total));
  EXPECT_DOUBLE_EQ(one.ckpt_need, one.ckpt_bytes * 4);  // keep 3 + 1 in flight
  // Forward FLOPs per token of a dense-free toy model by hand.
  ModelConfig m;
  m.vocab_size = 10, m.seq_len = 3, m.d_model = 4, m.n_layers = 1, m.n_heads = 2, m.n_kv_heads = 1;
  m.dense_layers = 0, m.moe.experts = 4, m.moe.top_k = 2, m.moe.expert_hidden = 5, m.moe.shared_experts = 1;
  // head 2*4*10; qkv (2+2)*2=8 wide + wo 4: 2*4*(8+4); attention 2*2*2*(3+1); router 2*4*4;
  // experts 6*4*5*2; shared 6*4*5
  EXPECT_DOUBLE_EQ(forward_flops_per_token(m), 80 + 96 + 32 + 32 + 240 + 120);
}

TEST(Plan, MemoryIsTheTrainersEstimateAndAllocatesNothing) {
  // The dry run's figures are moe-train's check (one function), pipeline
  // stages included; a model whose activations could never be allocated
  // here (2^20-token sequences: hundreds of GiB) is still planned.
  for (const auto& sets : std::vector<std::vector<std::string>>{
           {"parallel.ep=2"}, {"parallel.pp=2", "parallel.zero1=true"}, {"model.seq_len=1048576"}}) {
    Plan p = make_plan(flags(sets, 4), env());
    const MemoryEstimate e = estimate_memory(p.cfg, p.shape);
    EXPECT_EQ(p.memory.total(), e.total());
    EXPECT_EQ(p.memory.activations, e.activations);
  }
  Plan huge = make_plan(flags({"model.seq_len=1048576"}, 4), env());
  EXPECT_GT(huge.memory.activations, 100.0 * (1 << 30));
  // Pipeline rank 0 holds the embedding, the last the head: the busiest is reported.
  Plan pp = make_plan(flags({"parallel.pp=2"}, 2), env());
  EXPECT_LT(pp.memory.params, make_plan(flags({}, 1), env()).memory.params);
}

TEST(Restart, BackoffDoublesAndRunsOut) {
  RestartPolicy p(3, 2.0);
  EXPECT_EQ(p.on_failure("a"), 2.0);
  EXPECT_EQ(p.on_failure("b"), 4.0);
  EXPECT_EQ(p.on_failure("c"), 8.0);
  EXPECT_EQ(p.on_failure("d"), std::nullopt);
  EXPECT_EQ(p.restarts(), 3);
  EXPECT_EQ(p.failures(), (std::vector<std::string>{"a", "b", "c", "d"}));
  RestartPolicy none(0, 1.0);
  EXPECT_EQ(none.on_failure("x"), std::nullopt);
}

TEST(Output, TaggedLinesAndProgress) {
  TaggedLine a = parse_tagged("[1,3]<stdout>:step 1/10 | loss", false);
  EXPECT_EQ(a.rank, 3);
  EXPECT_EQ(a.text, "step 1/10 | loss");
  EXPECT_EQ(parse_tagged("[12,0]<stderr>:moe-train: bad", false).rank, 0);
  EXPECT_EQ(parse_tagged("mpirun noticed that process rank 1", false).rank, -1);
  TaggedLine s = parse_tagged(" 7: hello: world", true);
  EXPECT_EQ(s.rank, 7);
  EXPECT_EQ(s.text, "hello: world");
  EXPECT_EQ(progress_line("step  12/300 | loss 2.3456 | lr 1.00e-03 | gnorm 0.5 | 12.3k tok/s | 66.0 GFLOP/s | imb 1.2 "
                          "| drop 0.00% | eta 1m02s | val 2.5"),
            "step 12/300 | loss 2.3456 | val 2.5 | 12.3k tok/s | eta 1m02s");
  EXPECT_EQ(progress_line("checkpoint step 10 -> x"), "");
}

}  // namespace
}  // namespace sy::launch
