#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/check.h"

namespace sy {

std::string file_type_name(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st{};
  SY_CONFIG_CHECK(!path.empty(), "{}: the path is empty", what);
  SY_CONFIG_CHECK(::stat(path.c_str(), &st) == 0, "cannot read {} '{}': {}", what, path, std::strerror(errno));
  SY_CONFIG_CHECK(S_ISREG(st.st_mode), "{} '{}' is {}, not a regular file", what, path, file_type_name(st.st_mode));
}

MappedFile::MappedFile(const std::string& path, const std::string& what) : path_(path) {
  check_regular_file(path, what);
  // O_NONBLOCK: should the path have been swapped for a FIFO since the
  // stat, the open returns at once; fstat below then refuses it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  SY_CONFIG_CHECK(fd >= 0, "cannot open {} '{}': {}", what, path, std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    SY_CONFIG_FAIL("cannot stat {} '{}': {}", what, path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    SY_CONFIG_FAIL("{} '{}' is {}, not a regular file", what, path, file_type_name(st.st_mode));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    SY_CONFIG_CHECK(m != MAP_FAILED, "cannot map {} '{}' ({} bytes): {}", what, path, size_, std::strerror(err));
    map_ = m;
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (map_) ::munmap(map_, size_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), map_(std::exchange(o.map_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, size_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

std::string read_text_file(const std::string& path, const std::string& what, size_t max_bytes) {
  MappedFile f(path, what);
  SY_CONFIG_CHECK(f.size() <= max_bytes, "{} '{}' is {} bytes, more than the {} MiB a {} may have", what, path,
                  f.size(), max_bytes >> 20, what);
  return std::string(f.text());
}

}  // namespace sy
