// sy-bench-ckpt CONFIG [--set k=v ...] [--dir DIR] [--json]   (under mpirun for several ranks)
// Checkpoint throughput of a config's full training state (weights + AdamW
// moments), in this process group:
//  - synchronous save (stage, write, fsync, commit) and its GB/s;
//  - asynchronous save: how long training is held (staging) against the
//    synchronous save's time;
//  - load after dropping the page cache (when permitted) and its GB/s;
//  - the alternative design: the same bytes written into one shared file
//    with parallel HDF5 (MPI-IO collective writes), its GB/s.
// Never pass/fail; bench/ckpt_throughput.py compares against dd.
#include <CLI/CLI.hpp>
#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckpt/h5.h"
#include "comm/comm.h"
#include "comm/mpi/mpi_comm.h"
#include "core/check.h"
#include "core/cpu.h"
#include "core/timer.h"
#include "kernels/cpu/blas.h"
#include "train/checkpoint.h"
#include "config/run.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace {

bool drop_caches(const sy::Comm& world) {
  int ok = 1;
  if (world.rank() == 0) {
    ::sync();
    std::ofstream f("/proc/sys/vm/drop_caches");
    f << "3\n";
    ok = f.good() ? 1 : 0;
  }
  world.bcast(&ok, 1, 0);
  world.barrier();
  return ok != 0;
}

// The same bytes as one 1-D dataset of a shared file, each rank writing its
// contiguous share with a collective MPI-IO write, then fsync.
double parallel_hdf5_write(const sy::Comm& world, const std::string& path, int64_t my_floats) {
  int64_t offset = my_floats, total = my_floats;
  MPI_Exscan(&my_floats, &offset, 1, MPI_INT64_T, MPI_SUM, sy::mpi_handle(world));
  if (world.rank() == 0) offset = 0;
  world.allreduce_sum(&total, 1);
  std::vector<float> data(static_cast<size_t>(my_floats), 0.5f);
  world.barrier();
  double t0 = sy::now_seconds();
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl, sy::mpi_handle(world), MPI_INFO_NULL);
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  hsize_t dims = static_cast<hsize_t>(total), start = static_cast<hsize_t>(offset), count = static_cast<hsize_t>(my_floats);
  hid_t fs_ = H5Screate_simple(1, &dims, nullptr);
  hid_t d = H5Dcreate2(f, "data", H5T_IEEE_F32LE, fs_, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Sselect_hyperslab(fs_, H5S_SELECT_SET, &start, nullptr, &count, nullptr);
  hid_t ms = H5Screate_simple(1, &count, nullptr);
  hid_t dx = H5Pcreate(H5P_DATASET_XFER);
  H5Pset_dxpl_mpio(dx, H5FD_MPIO_COLLECTIVE);
  herr_t rc = H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs_, dx, data.data());
  H5Pclose(dx), H5Sclose(ms), H5Sclose(fs_), H5Dclose(d), H5Fclose(f), H5Pclose(fapl);
  SY_CHECK(rc >= 0, "parallel HDF5 write of '{}' failed", path);
  if (world.rank() == 0) sy::h5::sync_path(path);
  world.barrier();
  return sy::now_seconds() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  CLI::App app{"checkpoint save/load throughput"};
  std::string config, dir = "bench-ckpt";
  std::vector<std::string> overrides;
  bool as_json = false;
  app.add_option("config", config)->required();
  app.add_option("--set", overrides);
  app.add_option("--dir", dir, "scratch directory (its filesystem is measured)");
  app.add_flag("--json", as_json);
  CLI11_PARSE(app, argc, argv);
  sy::MpiEnv mpi(&argc, &argv);
  sy::Comm world = sy::Comm::world();
  try {
    overrides.push_back("run.dir=" + dir);
    overrides.push_back("checkpoint.keep=1");
    sy::RunConfig cfg = sy::load_config(config, overrides);
    cfg.train.steps = 1;
    cfg.train.val_every = 0;
    cfg.checkpoint.async = true;
    cfg.train.steps = 6;
    sy::Trainer trainer(cfg, world);
    // Bytes of a checkpoint: every tensor's weights and two moments.
    sy::ParamLayout full(cfg.model);
    double bytes = 12.0 * static_cast<double>(full.total());
    if (world.rank() == 0) fs::remove_all(dir);
    world.barrier();

    // Synchronous save: the full write, start to commit.
    sy::StepStats st = trainer.step(0);
    double sync_time;
    {
      sy::RunConfig c = trainer.config();
      c.checkpoint.async = false;
      sy::Checkpointer ck(c, trainer.grid(), trainer.model().layout(), full, trainer.sync());
      world.barrier();
      double t0 = sy::now_seconds();
      ck.save(trainer.train_state(1, st), trainer.params(), trainer.optimizer());
      sync_time = sy::now_seconds() - t0;
      world.allreduce_max(&sync_time, 1);
    }
    // Asynchronous saves inside training: the stall is what the step with a
    // save in flight takes beyond one without (median of two each), and,
    // directly, the save call plus the wait before the next optimizer update.
    std::vector<double> plain, with_save, direct;
    for (int64_t k = 1; k < 5; ++k) {
      bool save = k % 2 == 0;
      world.barrier();
      double t0 = sy::now_seconds();
      if (save) trainer.checkpointer().save(trainer.train_state(k, st), trainer.params(), trainer.optimizer());
      st = trainer.step(k);
      double t = sy::now_seconds() - t0;
      world.allreduce_max(&t, 1);
      (save ? with_save : plain).push_back(t);
      if (save) {
        double d = trainer.checkpointer().last_stall();
        world.allreduce_max(&d, 1);
        direct.push_back(d);
        trainer.checkpointer().finish();
      }
    }
    std::sort(plain.begin(), plain.end());
    std::sort(with_save.begin(), with_save.end());
    double step_time = 0.5 * (plain[0] + plain[1]), async_stall = std::max(0.0, 0.5 * (with_save[0] + with_save[1]) - step_time);
    double direct_stall = std::max(direct[0], direct[1]);
    double sync_stall = sync_time;
    (void)sync_stall;

    // Load, cold if we may drop the page cache.
    bool cold = drop_caches(world);
    sy::RunConfig c = trainer.config();
    c.checkpoint.async = false;
    sy::Checkpointer ck(c, trainer.grid(), trainer.model().layout(), full, trainer.sync());
    world.barrier();
    double t0 = sy::now_seconds();
    ck.load((fs::path(c.run_dir()) / "checkpoints" / "step_00000004").string(), trainer.params(), trainer.optimizer());
    double load_time = sy::now_seconds() - t0;
    world.allreduce_max(&load_time, 1);

    // The alternative: one shared file, parallel HDF5 collective writes.
    int64_t share = static_cast<int64_t>(bytes / 4) / world.size();
    double phdf5 = parallel_hdf5_write(world, (fs::path(dir) / "parallel_hdf5.h5").string(), share);
    if (world.rank() == 0) fs::remove_all(dir);

    if (world.rank() != 0) return 0;
    nlohmann::json r = {{"ranks", world.size()},
                        {"bytes", bytes},
                        {"save_seconds", sync_time},
                        {"save_gbps", bytes / sync_time / 1e9},
                        {"step_seconds", step_time},
                        {"async_stall_seconds", async_stall},
                        {"async_direct_stall_seconds", direct_stall},
                        {"async_stall_fraction", async_stall / sync_time},
                        {"load_seconds", load_time},
                        {"load_gbps", bytes / load_time / 1e9},
                        {"load_cold", cold},
                        {"parallel_hdf5_seconds", phdf5},
                        {"parallel_hdf5_gbps", bytes / phdf5 / 1e9}};
    if (as_json)
      std::cout << r.dump() << "\n";
    else
      std::cout << r.dump(1) << "\n";
    return 0;
  } catch (const sy::Error& e) {
    std::cerr << "sy-bench-ckpt: " << e.what() << "\n";
    world.abort(1);
  }
}
