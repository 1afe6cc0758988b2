// A thin, checked layer over the HDF5 C API: files, float/int datasets with
// a shape, string and numeric attributes. Every failure is an sy::Error
// naming the file and the object, with HDF5's own reason.
//
// Sealing: every file this layer creates carries a checksum table (dataset
// "seal": one line per attribute, group and dataset, with the CRC-32C of its
// type, shape and value) and root attribute "seal_crc32c", the CRC-32C of the
// table itself. Bulk datasets (the big tensors, which carry block checksums
// of their own as attributes) are listed with their type and shape only.
// Opening a sealed file verifies the table and every item it lists, so a
// flipped bit in any value or name, a missing or renamed object, or a
// resized dataset is an error naming the file and the item; afterwards the
// file answers only what its table lists. The table's CRC is the file's
// digest: a manifest records its shards' digests, which ties them together.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sy::h5 {

class File {
 public:
  static File create(const std::string& path);  // truncates; sealed when closed
  // Read-only. A sealed file is verified whole (its metadata and small
  // datasets) before this returns; any problem throws naming the item.
  static File open(const std::string& path);
  // The same, but the problems are collected instead of thrown (for
  // `moe-ckpt verify`, which reports everything wrong at once).
  static File open_audit(const std::string& path, std::vector<std::string>& problems);
  File(File&& o) noexcept;
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();
  hid_t id() const { return id_; }
  const std::string& path() const { return path_; }
  void close();  // seals (files being written), flushes; errors surface here
  // Whether the file carries a checksum table (files of format 1 do not).
  bool sealed() const { return sealed_; }
  // The CRC-32C of the checksum table: known after close() for a file
  // written, after open() for a sealed file read.
  uint32_t digest() const { return digest_; }

  bool exists(const std::string& object) const;  // "a/b/c"
  std::vector<std::string> list(const std::string& group) const;
  void make_group(const std::string& group);

  // Datasets (contiguous), written whole; their values are sealed.
  void write(const std::string& name, const float* data, const std::vector<int64_t>& shape);
  void write(const std::string& name, const int64_t* data, const std::vector<int64_t>& shape);
  void write(const std::string& name, const uint8_t* data, const std::vector<int64_t>& shape);  // opaque bytes
  // A big dataset whose values are covered by checksums the caller stores in
  // its attributes: only its type and shape are sealed.
  void write_bulk(const std::string& name, const float* data, const std::vector<int64_t>& shape);
  std::vector<int64_t> shape(const std::string& name) const;
  // Elements [begin, end) of the dataset read as one flat row-major array.
  void read(const std::string& name, float* out, int64_t begin, int64_t end) const;
  void read(const std::string& name, int64_t* out, int64_t begin, int64_t end) const;
  void read(const std::string& name, uint8_t* out, int64_t begin, int64_t end) const;
  int64_t numel(const std::string& name) const;
  // The number of values, checked against the bytes the file stores for it
  // (a corrupt shape must not size an allocation).
  int64_t stored_numel(const std::string& name) const;

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
  struct Sealed {
    char kind;     // 'a' attribute, 'g' group, 'd' dataset (value sealed), 'b' bulk dataset (shape sealed)
    uint32_t crc;  // of the canonical encoding (see h5.cpp)
  };
  // Table key: kind, object path and attribute name.
  static File open_raw(const std::string& path);
  static std::string seal_key(char kind, const std::string& object, const std::string& key = "");
  void seal(char kind, const std::string& object, const std::string& key, uint32_t crc);
  void read_seal(std::vector<std::string>* problems);  // throws the first problem when problems is null
  void check_seal(std::vector<std::string>& found);
  void write_seal();
  bool lists(char kind, const std::string& object, const std::string& key = "") const;
  void require_listed(char kind, const std::string& object, const std::string& key = "") const;
  hid_t id_ = -1;
  std::string path_;
  bool writing_ = false;
  bool sealed_ = false;
  uint32_t digest_ = 0;
  std::map<std::string, Sealed> seal_;
};

// fsync a file or directory by path (data and metadata on disk).
void sync_path(const std::string& path);

}  // namespace sy::h5
