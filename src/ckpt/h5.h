// A thin, checked layer over the HDF5 C API: files, float/int datasets with
// a shape, string and numeric attributes. Every failure is an sy::Error
// naming the file and the object, with HDF5's own reason.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sy::h5 {

class File {
 public:
  static File create(const std::string& path);  // truncates
  static File open(const std::string& path);    // read-only
  File(File&& o) noexcept;
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();
  hid_t id() const { return id_; }
  const std::string& path() const { return path_; }
  void close();  // flushes; errors surface here

  bool exists(const std::string& object) const;  // "a/b/c"
  std::vector<std::string> list(const std::string& group) const;
  void make_group(const std::string& group);

  // Datasets (contiguous), written whole.
  void write(const std::string& name, const float* data, const std::vector<int64_t>& shape);
  void write(const std::string& name, const int64_t* data, const std::vector<int64_t>& shape);
  std::vector<int64_t> shape(const std::string& name) const;
  // Elements [begin, end) of the dataset read as one flat row-major array.
  void read(const std::string& name, float* out, int64_t begin, int64_t end) const;
  void read(const std::string& name, int64_t* out, int64_t begin, int64_t end) const;
  int64_t numel(const std::string& name) const;

  // Attributes of the root ("") or of an object.
  void set_attr(const std::string& object, const std::string& key, const std::string& value);
  void set_attr(const std::string& object, const std::string& key, int64_t value);
  void set_attr(const std::string& object, const std::string& key, double value);
  void set_attr(const std::string& object, const std::string& key, const std::vector<int64_t>& value);
  bool has_attr(const std::string& object, const std::string& key) const;
  std::string attr_string(const std::string& object, const std::string& key) const;
  int64_t attr_int(const std::string& object, const std::string& key) const;
  double attr_double(const std::string& object, const std::string& key) const;
  std::vector<int64_t> attr_ints(const std::string& object, const std::string& key) const;

 private:
  File(hid_t id, std::string path) : id_(id), path_(std::move(path)) {}
  hid_t id_ = -1;
  std::string path_;
};

// fsync a file or directory by path (data and metadata on disk).
void sync_path(const std::string& path);

}  // namespace sy::h5
