#include "ckpt/files.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ckpt/h5.h"
#include "core/check.h"

namespace sy::ckpt {

namespace fs = std::filesystem;

std::string human_bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, unit[u]);
}

double free_bytes(const std::string& path) {
  fs::path p = path;
  std::error_code ec;
  while (!p.empty() && !fs::exists(p, ec)) p = p.parent_path();
  struct statvfs st{};
  if (::statvfs(p.empty() ? "." : p.c_str(), &st) != 0) return -1;
  return static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize);
}

std::string io_hint(const std::string& path, int err) {
  if (err == EDQUOT) return " (disk quota exceeded)";
  const double free = free_bytes(path);
  // HDF5 does not always pass errno on: a nearly full filesystem is the
  // likeliest reason a write failed.
  if (err == ENOSPC || (free >= 0 && free < 16.0 * (1 << 20)))
    return fmt::format(" (no space left on device: the filesystem of '{}' has {} free)", path, human_bytes(free));
  return "";
}

void write_file_durably(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SY_CHECK(fd >= 0, "cannot write '{}': {}{}", tmp, std::strerror(errno), io_hint(tmp, errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      SY_FAIL("cannot write '{}': {}{}", tmp, std::strerror(err), io_hint(tmp, err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    SY_FAIL("cannot write '{}': {}{}", tmp, std::strerror(err), io_hint(tmp, err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    SY_FAIL("cannot rename '{}' to '{}': {}", tmp, path, std::strerror(err));
  }
  h5::sync_path(fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string());
}

void rename_noreplace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  if (errno == EINVAL || errno == ENOSYS) {  // the filesystem lacks RENAME_NOREPLACE: check, then rename
    std::error_code ec;
    SY_CHECK(!fs::exists(fs::symlink_status(to, ec)), "cannot rename '{}' to '{}': the target exists", from, to);
    if (::rename(from.c_str(), to.c_str()) == 0) return;
  }
  SY_FAIL("cannot rename '{}' to '{}': {}", from, to, std::strerror(errno));
}

void exchange_dirs(const std::string& fresh, const std::string& old) {
  if (::renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, old.c_str(), RENAME_EXCHANGE) == 0) return;
  SY_CHECK(errno == EINVAL || errno == ENOSYS, "cannot exchange '{}' and '{}': {}", fresh, old, std::strerror(errno));
  // No atomic exchange here: move the old one aside first. A crash between
  // the two renames leaves `old` missing and `old`.replaced holding it;
  // recover_replaced() puts it back.
  const std::string aside = old + ".replaced";
  std::error_code ec;
  fs::remove_all(aside, ec);
  rename_noreplace(old, aside);
  rename_noreplace(fresh, old);
  rename_noreplace(aside, fresh);
}

int recover_replaced(const std::string& dir) {
  int restored = 0;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.ends_with(".replaced") || !e.is_directory(ec)) continue;
    const fs::path original = e.path().parent_path() / name.substr(0, name.size() - 9);
    if (!fs::exists(fs::symlink_status(original, ec))) {
      rename_noreplace(e.path().string(), original.string());
      ++restored;
    } else {
      fs::remove_all(e.path(), ec);
    }
  }
  return restored;
}

}  // namespace sy::ckpt
