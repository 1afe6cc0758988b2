// Files a user names (data files, config files, hostfiles) opened without
// surprises: only a regular file is accepted, checked with stat() before it
// is opened (a FIFO would block the open, a directory has no bytes, a device
// such as /dev/zero never ends), the open itself never blocks (O_NONBLOCK)
// and the contents are memory-mapped, not read into a vector.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sy {

// "a directory", "a FIFO (named pipe)", "a character device", ... for st_mode.
std::string file_type_name(mode_t mode);

// Throws ConfigError unless `path` (symlinks followed) is a regular file:
// "<what> '<path>' is a FIFO (named pipe), not a regular file". `what`
// names the role, e.g. "data file" or "config file".
void check_regular_file(const std::string& path, const std::string& what);

// A read-only, private memory map of a whole regular file. An empty file
// maps nothing (data() is null, size() 0).
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const std::string& path, const std::string& what);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(map_); }
  size_t size() const { return size_; }
  std::string_view text() const { return {static_cast<const char*>(map_), size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
};

// A whole small text file (a config, a hostfile) through MappedFile: the
// same checks, and a file over max_bytes is refused rather than copied.
std::string read_text_file(const std::string& path, const std::string& what, size_t max_bytes = size_t{16} << 20);

}  // namespace sy
