#include "comm/nccl/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <limits>
#include <vector>

#include "comm/host_values.h"
#include "core/check.h"

namespace sy::nccl {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  SY_CHECK(e == cudaSuccess, "CUDA: {} failed: {}", what, cudaGetErrorString(e));
}
void check_nccl(ncclResult_t r, const char* what) {
  SY_CHECK(r == ncclSuccess, "NCCL: {} failed: {}", what, ncclGetErrorString(r));
}

// A device pointer, or a clear error: NCCL moves device memory only.
void check_device(const void* p, const char* what) {
  if (!p) return;
  cudaPointerAttributes a{};
  const cudaError_t e = cudaPointerGetAttributes(&a, p);
  SY_CHECK(e == cudaSuccess && (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged),
           "NCCL {}: the buffer is host memory; the NCCL communicator moves device buffers (run with the CUDA "
           "backend, or use the MPI communicator)", what);
}

class EventRequest final : public RequestImpl {
 public:
  explicit EventRequest(cudaStream_t s) {
    check_cuda(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(ev_, s), "cudaEventRecord");
  }
  ~EventRequest() override {
    if (ev_) {
      cudaEventSynchronize(ev_);  // the caller's buffers stay in use until the operation ends
      cudaEventDestroy(ev_);
    }
  }
  bool test() override {
    const cudaError_t e = cudaEventQuery(ev_);
    if (e == cudaErrorNotReady) return false;
    check_cuda(e, "cudaEventQuery");
    return true;
  }
  void wait() override { check_cuda(cudaEventSynchronize(ev_), "cudaEventSynchronize"); }

 private:
  cudaEvent_t ev_ = nullptr;
};

class NcclBackend final : public HostValuesOf {
 public:
  NcclBackend(std::shared_ptr<const CommBackend> mpi, cudaStream_t after) : HostValuesOf(std::move(mpi)), after_(after) {
    ncclUniqueId id{};
    if (host_->rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_->bcast(&id, sizeof(id), 0);
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check_nccl(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()), "ncclCommInitRank");
  }
  ~NcclBackend() override {
    if (comm_) ncclCommDestroy(comm_);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  NcclBackend(const NcclBackend&) = delete;
  NcclBackend& operator=(const NcclBackend&) = delete;

  std::shared_ptr<const CommBackend> split(int color, int key) const override {
    return std::make_shared<NcclBackend>(host_->split(color, key), after_);
  }
  [[noreturn]] void abort(int code) const override {
    ncclCommAbort(comm_);
    host_->abort(code);
    std::abort();  // (the MPI backend's abort does not return)
  }

  // Device floats: NCCL on the communication stream.
  std::unique_ptr<RequestImpl> ialltoallv_rows(const float* send, const Counts& scount, const Counts& sdispl,
                                               float* recv, const Counts& rcount, const Counts& rdispl, int64_t row,
                                               const char* what) const override {
    check_device(send, what), check_device(recv, what);
    order();
    check_nccl(ncclGroupStart(), what);
    for (int r = 0; r < size(); ++r) {
      const size_t ri = static_cast<size_t>(r);
      if (scount[ri] > 0)
        check_nccl(ncclSend(send + sdispl[ri] * row, static_cast<size_t>(scount[ri] * row), ncclFloat, r, comm_,
                            stream_), what);
      if (rcount[ri] > 0)
        check_nccl(ncclRecv(recv + rdispl[ri] * row, static_cast<size_t>(rcount[ri] * row), ncclFloat, r, comm_,
                            stream_), what);
    }
    check_nccl(ncclGroupEnd(), what);
    return std::make_unique<EventRequest>(stream_);
  }
  std::unique_ptr<RequestImpl> isend(const float* data, int64_t n, int peer, int, const char* what) const override {
    check_device(data, what);
    order();
    check_nccl(ncclSend(data, static_cast<size_t>(n), ncclFloat, peer, comm_, stream_), what);
    return std::make_unique<EventRequest>(stream_);
  }
  std::unique_ptr<RequestImpl> irecv(float* data, int64_t n, int peer, int, const char* what) const override {
    check_device(data, what);
    order();
    check_nccl(ncclRecv(data, static_cast<size_t>(n), ncclFloat, peer, comm_, stream_), what);
    return std::make_unique<EventRequest>(stream_);
  }
  std::unique_ptr<RequestImpl> iallreduce_sum(float* data, int64_t n, const char* what) const override {
    check_device(data, what);
    order();
    check_nccl(ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat, ncclSum, comm_, stream_), what);
    return std::make_unique<EventRequest>(stream_);
  }
  // Uneven segments: one reduce per segment, rooted at its owner, in one group.
  std::unique_ptr<RequestImpl> ireduce_scatter_sum(const float* data, float* recv, const Counts& counts,
                                                   const char* what) const override {
    check_device(data, what), check_device(recv, what);
    order();
    check_nccl(ncclGroupStart(), what);
    int64_t off = 0;
    for (int r = 0; r < size(); ++r) {
      const int64_t c = counts[static_cast<size_t>(r)];
      if (c > 0)
        check_nccl(ncclReduce(data + off, recv, static_cast<size_t>(c), ncclFloat, ncclSum, r, comm_, stream_), what);
      off += c;
    }
    check_nccl(ncclGroupEnd(), what);
    return std::make_unique<EventRequest>(stream_);
  }
  // In place, uneven: each member broadcasts its segment, in one group.
  std::unique_ptr<RequestImpl> iallgatherv(float* data, const Counts& counts, const Counts& displs,
                                           const char* what) const override {
    check_device(data, what);
    order();
    check_nccl(ncclGroupStart(), what);
    for (int r = 0; r < size(); ++r) {
      const size_t ri = static_cast<size_t>(r);
      if (counts[ri] > 0)
        check_nccl(ncclBroadcast(data + displs[ri], data + displs[ri], static_cast<size_t>(counts[ri]), ncclFloat, r,
                                 comm_, stream_), what);
    }
    check_nccl(ncclGroupEnd(), what);
    return std::make_unique<EventRequest>(stream_);
  }

 private:
  // The communication stream waits for the work queued on `after` so far: a
  // buffer the ops wrote is complete before NCCL reads it. (The other way,
  // a request's wait() synchronises the host before the ops read a result.)
  void order() const {
    check_cuda(cudaEventRecord(ready_, after_), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }
  cudaStream_t after_ = nullptr;  // the ops' stream (null: the legacy default stream)
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
};

}  // namespace

bool available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess && n > 0) return true;
  if (why) *why = e != cudaSuccess ? std::string("no usable CUDA driver/device: ") + cudaGetErrorString(e) : "no CUDA device";
  return false;
}

std::shared_ptr<const CommBackend> create(std::shared_ptr<const CommBackend> mpi, void* after) {
  SY_CHECK(mpi, "NCCL: a communicator is made from an MPI group, and this one has no backend (a group of one "
           "needs none)");
  std::string why;
  SY_CHECK(available(&why), "NCCL: {}", why);
  return std::make_shared<NcclBackend>(std::move(mpi), static_cast<cudaStream_t>(after));
}

}  // namespace sy::nccl
