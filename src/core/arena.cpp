#include "core/arena.h"

#include <sys/mman.h>

namespace sy {

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
