#include "core/arena.h"

#include <sys/mman.h>

namespace sy {

namespace {
class HostAllocator final : public Allocator {
 public:
  Device device() const override { return Device::cpu; }
  void* allocate(size_t bytes, size_t align) override {
    return ::operator new[](bytes, std::align_val_t{align});  // throws std::bad_alloc when out of memory
  }
  void deallocate(void* p, size_t, size_t align) override { ::operator delete[](p, std::align_val_t{align}); }
};
}  // namespace

Allocator& host_allocator() {
  static HostAllocator a;
  return a;
}

void* FloatBuffer::allocate_pages(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const bool big = bytes >= 2 * kHuge;
  const size_t align = big ? kHuge : Arena::kAlign;
  const size_t size = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, size);
  SY_CHECK(p, "cannot allocate {:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
#ifdef MADV_HUGEPAGE
  if (big) madvise(p, size, MADV_HUGEPAGE);  // advice only; fine to be refused
#endif
  return p;
}

}  // namespace sy
