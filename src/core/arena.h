// A bump allocator: one aligned block, handed out in aligned slices, all
// freed at once. Activation buffers come from here, sized once per shape,
// so a training step allocates nothing. The block comes from an Allocator
// (host memory by default; a backend's device memory otherwise): the arena
// only does pointer arithmetic and never touches what it hands out, so it
// works the same for memory the host cannot dereference.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/check.h"
#include "core/device.h"

namespace sy {

class Arena {
 public:
  static constexpr size_t kAlign = 64;

  Arena() = default;
  explicit Arena(size_t bytes, Allocator& alloc = host_allocator()) : alloc_(&alloc) { reserve(bytes); }
  explicit Arena(Allocator& alloc) : alloc_(&alloc) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { release(); }

  Device device() const { return alloc_->device(); }

  // Drops everything handed out and makes room for `bytes`.
  void reserve(size_t bytes) {
    release();
    bytes = round_up(bytes);
    block_ = static_cast<std::byte*>(alloc_->allocate(bytes, kAlign));
    capacity_ = bytes;
    used_ = 0;
  }

  template <class T>
  T* alloc(size_t count) {
    size_t bytes = round_up(count * sizeof(T));
    SY_CHECK(used_ + bytes <= capacity_,
             "arena exhausted: asked for {} bytes with {} of {} used (a size estimate is wrong)",
             bytes, used_, capacity_);
    T* p = reinterpret_cast<T*>(block_ + used_);
    used_ += bytes;
    return p;
  }

  void clear() { used_ = 0; }
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }
  static size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

 private:
  void release() {
    if (block_) alloc_->deallocate(block_, capacity_, kAlign);
    block_ = nullptr, capacity_ = 0, used_ = 0;
  }
  Allocator* alloc_ = &host_allocator();
  std::byte* block_ = nullptr;
  size_t capacity_ = 0, used_ = 0;
};

// Counts bytes the way Arena::alloc will, to size an Arena before use. It has
// the same alloc<T>() as Arena (returning null), so one templated function
// that binds buffers can be run first on a plan, then on the arena.
class ArenaPlan {
 public:
  template <class T>
  T* alloc(size_t count) {
    bytes_ += Arena::round_up(count * sizeof(T));
    return nullptr;
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

// An aligned, zero-initialised, owning float buffer. Large buffers (the
// parameters, gradients, optimizer state, checkpoint staging) are 2 MiB
// aligned and ask for transparent huge pages: fewer page faults when first
// touched and fewer TLB misses after.
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(size_t n) { resize(n); }
  void resize(size_t n) {
    data_.reset(static_cast<float*>(allocate_pages(n * sizeof(float))));
    size_ = n;
    zero();
  }
  void zero() {
    for (size_t i = 0; i < size_; ++i) data_[i] = 0.f;
  }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  size_t size() const { return size_; }
  float& operator[](size_t i) { return data_[i]; }
  float operator[](size_t i) const { return data_[i]; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  static void* allocate_pages(size_t bytes);
  std::unique_ptr<float[], Free> data_;
  size_t size_ = 0;
};

// A buffer that only grows (contents are not kept when it does). For sizes
// that depend on the data, such as the rows an expert receives: after the
// first steps it stops allocating. Its memory comes from an Allocator (host
// memory by default; a backend's device memory for buffers the ops read and
// write): ensure(n, alloc) moves the buffer to that allocator's memory.
template <class T>
class GrowBuffer {
 public:
  GrowBuffer() = default;
  explicit GrowBuffer(Allocator& alloc) : alloc_(&alloc) {}
  GrowBuffer(const GrowBuffer&) = delete;
  GrowBuffer& operator=(const GrowBuffer&) = delete;
  GrowBuffer(GrowBuffer&& o) noexcept : alloc_(o.alloc_), data_(o.data_), capacity_(o.capacity_) {
    o.data_ = nullptr, o.capacity_ = 0;
  }
  GrowBuffer& operator=(GrowBuffer&& o) noexcept {
    if (this != &o) {
      release();
      alloc_ = o.alloc_, data_ = o.data_, capacity_ = o.capacity_;
      o.data_ = nullptr, o.capacity_ = 0;
    }
    return *this;
  }
  ~GrowBuffer() { release(); }

  T* ensure(size_t n) { return ensure(n, *alloc_); }
  T* ensure(size_t n, Allocator& alloc) {
    if (&alloc != alloc_) release(), alloc_ = &alloc;
    if (n > capacity_) {
      size_t cap = std::max(n, capacity_ + capacity_ / 2);
      release();
      data_ = static_cast<T*>(alloc_->allocate(Arena::round_up(cap * sizeof(T)), Arena::kAlign));
      capacity_ = cap;
    }
    return data_;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t capacity() const { return capacity_; }
  Device device() const { return alloc_->device(); }

 private:
  void release() {
    if (data_) alloc_->deallocate(data_, Arena::round_up(capacity_ * sizeof(T)), Arena::kAlign);
    data_ = nullptr, capacity_ = 0;
  }
  Allocator* alloc_ = &host_allocator();
  T* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace sy
