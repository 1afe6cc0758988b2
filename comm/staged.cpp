#include "comm/staged.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

#include "comm/host_values.h"
#include "core/check.h"

namespace sy::staged {

namespace {

// A host operation on host copies; land() copies its results to the device
// once it has finished (exactly once, before test() says true or wait()
// returns).
class StagedRequest final : public RequestImpl {
 public:
  StagedRequest(std::vector<float> host, std::function<void(const std::vector<float>&)> land)
      : host_(std::move(host)), land_(std::move(land)) {}
  void start(std::unique_ptr<RequestImpl> inner) { inner_ = std::move(inner); }
  std::vector<float>& host() { return host_; }
  ~StagedRequest() override {
    if (done_ || !inner_) return;
    try {
      inner_->wait();  // the host copies stay alive until the host transport is done with them
      finish();
    } catch (...) {  // a destructor reports nothing; a caller that needs the data waits first
    }
  }
  bool test() override {
    if (done_) return true;
    if (!inner_->test()) return false;
    finish();
    return true;
  }
  void wait() override {
    if (done_) return;
    inner_->wait();
    finish();
  }

 private:
  void finish() {
    done_ = true;
    if (land_) land_(host_);
  }
  std::vector<float> host_;
  std::function<void(const std::vector<float>&)> land_;
  std::unique_ptr<RequestImpl> inner_;
  bool done_ = false;
};

class StagedBackend final : public HostValuesOf {
 public:
  StagedBackend(std::shared_ptr<const CommBackend> host, std::shared_ptr<const DeviceAccess> dev)
      : HostValuesOf(std::move(host)), dev_(std::move(dev)) {}
  std::shared_ptr<const CommBackend> split(int color, int key) const override {
    return std::make_shared<StagedBackend>(host_->split(color, key), dev_);
  }

  // Device floats: host copies, the host transport, copies back.
  std::unique_ptr<RequestImpl> ialltoallv_rows(const float* send, const Counts& scount, const Counts& sdispl,
                                               float* recv, const Counts& rcount, const Counts& rdispl, int64_t row,
                                               const char* what) const override {
    const Counts hs = packed(scount), hr = packed(rcount);
    const int64_t ns = total(scount), nr = total(rcount);
    if (ns > 0) check(send, what, "send");
    if (nr > 0) check(recv, what, "receive");
    if (size() == 1) {  // to itself: within the device
      SY_CHECK(ns == nr, "{}: a group of one sends {} rows and receives {}", what, ns, nr);
      if (ns > 0) dev_->within(recv + rdispl[0] * row, send + sdispl[0] * row, static_cast<size_t>(ns * row) * sizeof(float));
      return done();
    }
    std::vector<float> down(static_cast<size_t>(ns * row));
    for (size_t r = 0; r < scount.size(); ++r)
      if (scount[r] > 0) to_host(down.data() + hs[r] * row, send + sdispl[r] * row, scount[r] * row);
    auto req = std::make_unique<StagedRequest>(
        std::vector<float>(static_cast<size_t>(nr * row)), [dev = dev_, recv, rcount, rdispl, hr, row](const std::vector<float>& h) {
          for (size_t r = 0; r < rcount.size(); ++r)
            if (rcount[r] > 0) up(*dev, recv + rdispl[r] * row, h.data() + hr[r] * row, rcount[r] * row);
        });
    // `down` must outlive the host operation: the request keeps it beside its receive buffer.
    auto keep = std::make_shared<std::vector<float>>(std::move(down));
    req->start(with_send(host_->ialltoallv_rows(keep->data(), scount, hs, req->host().data(), rcount, hr, row, what),
                         keep));
    return req;
  }
  std::unique_ptr<RequestImpl> isend(const float* data, int64_t n, int peer, int tag, const char* what) const override {
    check(data, what, "send");
    std::vector<float> down(static_cast<size_t>(n));
    to_host(down.data(), data, n);
    auto req = std::make_unique<StagedRequest>(std::move(down), nullptr);
    req->start(host_->isend(req->host().data(), n, peer, tag, what));
    return req;
  }
  std::unique_ptr<RequestImpl> irecv(float* data, int64_t n, int peer, int tag, const char* what) const override {
    check(data, what, "receive");
    auto req = std::make_unique<StagedRequest>(std::vector<float>(static_cast<size_t>(n)),
                                               [dev = dev_, data, n](const std::vector<float>& h) { up(*dev, data, h.data(), n); });
    req->start(host_->irecv(req->host().data(), n, peer, tag, what));
    return req;
  }
  std::unique_ptr<RequestImpl> iallreduce_sum(float* data, int64_t n, const char* what) const override {
    check(data, what, "data");
    if (size() == 1) return done();  // the sum of one
    std::vector<float> down(static_cast<size_t>(n));
    to_host(down.data(), data, n);
    auto req = std::make_unique<StagedRequest>(std::move(down),
                                               [dev = dev_, data, n](const std::vector<float>& h) { up(*dev, data, h.data(), n); });
    req->start(host_->iallreduce_sum(req->host().data(), n, what));
    return req;
  }
  std::unique_ptr<RequestImpl> ireduce_scatter_sum(const float* data, float* recv, const Counts& counts,
                                                   const char* what) const override {
    const int64_t n = total(counts), mine = counts[static_cast<size_t>(rank())];
    check(data, what, "data");
    if (mine > 0) check(recv, what, "receive");
    if (size() == 1) {  // the one part is the whole
      if (mine > 0) dev_->within(recv, data, static_cast<size_t>(mine) * sizeof(float));
      return done();
    }
    auto down = std::make_shared<std::vector<float>>(static_cast<size_t>(n));
    to_host(down->data(), data, n);
    auto req = std::make_unique<StagedRequest>(std::vector<float>(static_cast<size_t>(mine)),
                                               [dev = dev_, recv, mine](const std::vector<float>& h) { up(*dev, recv, h.data(), mine); });
    req->start(with_send(host_->ireduce_scatter_sum(down->data(), req->host().data(), counts, what), down));
    return req;
  }
  std::unique_ptr<RequestImpl> iallgatherv(float* data, const Counts& counts, const Counts& displs,
                                           const char* what) const override {
    const size_t me = static_cast<size_t>(rank());
    int64_t extent = 0;
    for (size_t r = 0; r < counts.size(); ++r) extent = std::max(extent, displs[r] + counts[r]);
    check(data, what, "data");
    if (size() == 1) return done();  // its own block is already in place
    std::vector<float> host(static_cast<size_t>(extent));
    to_host(host.data() + displs[me], data + displs[me], counts[me]);
    auto req = std::make_unique<StagedRequest>(std::move(host), [dev = dev_, data, counts, displs, me](const std::vector<float>& h) {
      for (size_t r = 0; r < counts.size(); ++r)  // the others' blocks (this member's is unchanged)
        if (r != me && counts[r] > 0) up(*dev, data + displs[r], h.data() + displs[r], counts[r]);
    });
    req->start(host_->iallgatherv(req->host().data(), counts, displs, what));
    return req;
  }

 private:
  // A request that finished when it was made.
  struct Done final : RequestImpl {
    bool test() override { return true; }
    void wait() override {}
  };
  static std::unique_ptr<RequestImpl> done() { return std::make_unique<Done>(); }
  static int64_t total(const Counts& c) { return std::accumulate(c.begin(), c.end(), int64_t{0}); }
  static Counts packed(const Counts& c) {  // displacements of blocks laid end to end
    Counts d(c.size(), 0);
    for (size_t r = 1; r < c.size(); ++r) d[r] = d[r - 1] + c[r - 1];
    return d;
  }
  // A host request that also keeps its send copy alive until it is done.
  struct Keeping final : RequestImpl {
    std::unique_ptr<RequestImpl> inner;
    std::shared_ptr<std::vector<float>> send;
    ~Keeping() override { inner.reset(); }  // finishes with the copy before it goes
    bool test() override { return inner->test(); }
    void wait() override { inner->wait(); }
  };
  static std::unique_ptr<RequestImpl> with_send(std::unique_ptr<RequestImpl> inner,
                                                std::shared_ptr<std::vector<float>> send) {
    auto k = std::make_unique<Keeping>();
    k->inner = std::move(inner);
    k->send = std::move(send);
    return k;
  }
  void check(const void* p, const char* what, const char* which) const {
    SY_CHECK(p && dev_->holds(p), "{}: the {} buffer is host memory; the staged {} communicator moves {} buffers "
             "(as NCCL does)", what, which, dev_->device_name(), dev_->device_name());
  }
  void to_host(float* h, const float* d, int64_t n) const {
    if (n > 0) dev_->to_host(h, d, static_cast<size_t>(n) * sizeof(float));
  }
  static void up(const DeviceAccess& dev, float* d, const float* h, int64_t n) {
    if (n > 0) dev.to_device(d, h, static_cast<size_t>(n) * sizeof(float));
  }
  std::shared_ptr<const DeviceAccess> dev_;
};

}  // namespace

std::shared_ptr<const CommBackend> create(std::shared_ptr<const CommBackend> host,
                                          std::shared_ptr<const DeviceAccess> device) {
  SY_CHECK(host && device, "a staged device communicator needs a host transport and a device");
  return std::make_shared<StagedBackend>(std::move(host), std::move(device));
}

}  // namespace sy::staged
