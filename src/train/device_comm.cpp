#include "train/device_comm.h"

#include <memory>

#include <fmt/format.h>

#include "comm/nccl_module.h"
#include "comm/staged.h"

namespace sy {

namespace {

// The backend's copies and memory, for the staged communicator: blocking
// copies on the ops' stream, so a buffer is copied after the ops that wrote
// it and before the ops that read it.
class BackendAccess final : public DeviceAccess {
 public:
  BackendAccess(const Backend& be, Stream s) : be_(be), s_(s) {}
  void to_host(void* host, const void* device, size_t bytes) const override {
    be_.copy(host, device, bytes, s_);
    be_.synchronize(s_);
  }
  void to_device(void* device, const void* host, size_t bytes) const override {
    be_.copy(device, host, bytes, s_);
    be_.synchronize(s_);  // the host copy may go as soon as this returns
  }
  void within(void* dst, const void* src, size_t bytes) const override { be_.copy(dst, src, bytes, s_); }
  bool holds(const void* p) const override { return be_.holds(p); }
  const char* device_name() const override { return sy::device_name(be_.device()).data(); }

 private:
  const Backend& be_;
  Stream s_;
};

}  // namespace

Comm::Remake device_comms(const Backend& be, Stream stream, const Comm& world, int64_t ranks_per_device,
                          std::string* what) {
  std::string why;
  Comm::Remake nccl;
  if (world.size() == 1)  // groups of one: the staged twins copy within the device, nothing through the host
    why = "one rank";
  else if (be.device() != Device::cuda)
    why = fmt::format("NCCL moves CUDA memory, not {}", device_name(be.device()));
  else if (be.info().emulated)
    why = "the device is emulated on the CPU";
  else if (ranks_per_device > 1)
    why = fmt::format("{} ranks share a GPU, which NCCL refuses", ranks_per_device);
  else
    nccl = nccl_module::load(stream.handle, &why);
  int everywhere = nccl ? 1 : 0;  // one choice for all: a communicator is created by every member
  world.allreduce_min(&everywhere, 1);
  if (nccl && everywhere) {
    if (what) *what = "NCCL";
    return nccl;
  }
  if (what && world.size() == 1)
    what->clear();  // nothing crosses ranks
  else if (what)
    *what = fmt::format("staged through host memory by MPI; NCCL not used: {}",
                        why.empty() ? std::string("another rank cannot use it") : why);
  auto access = std::make_shared<BackendAccess>(be, stream);
  return [access](std::shared_ptr<const CommBackend> host) { return staged::create(std::move(host), access); };
}

}  // namespace sy
