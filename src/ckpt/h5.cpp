#include "ckpt/h5.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>

#include "ckpt/crc32c.h"
#include "core/check.h"

#include <fmt/ranges.h>

namespace sy::h5 {

namespace {

constexpr size_t kMaxFixedString = 60000;

// HDF5 prints its error stack by default; we turn that into exceptions.
// And no HDF5 clean-up at exit: a file whose close failed (a full disk)
// stays in HDF5's tables, and HDF5 1.10's exit handler crashes closing it
// again. The kernel closes what is left.
struct Quiet {
  Quiet() {
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
};
const Quiet quiet;

herr_t collect(unsigned n, const H5E_error2_t* e, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n < 3 && e->desc && *e->desc) {
    if (!out->empty()) *out += "; ";
    *out += e->desc;
  }
  return 0;
}

std::string reason() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg.empty() ? "HDF5 error" : msg;
}

#define SY_H5(call, ...)                                                                     \
  [&] {                                                                                      \
    auto sy_rc_ = (call);                                                                    \
    if (sy_rc_ < 0) SY_FAIL("{}: {}", ::fmt::format(__VA_ARGS__), reason());                 \
    return sy_rc_;                                                                           \
  }()

// Closes an HDF5 handle of any kind at scope exit.
struct Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  ~Handle() {
    if (id >= 0) close(id);
  }
};

hid_t link_props() {
  static hid_t lcpl = [] {
    hid_t p = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(p, 1);
    return p;
  }();
  return lcpl;
}

hid_t space_of(const std::vector<int64_t>& shape) {
  if (shape.empty()) return H5Screate(H5S_SCALAR);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
}

template <class T>
void write_dataset(const File& f, const std::string& name, const T* data, const std::vector<int64_t>& shape,
                   hid_t file_type, hid_t mem_type) {
  Handle space{space_of(shape), H5Sclose};
  Handle d{SY_H5(H5Dcreate2(f.id(), name.c_str(), file_type, space.id, link_props(), H5P_DEFAULT, H5P_DEFAULT),
                 "{}: cannot create dataset '{}'", f.path(), name),
           H5Dclose};
  SY_H5(H5Dwrite(d.id, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "{}: cannot write dataset '{}'", f.path(), name);
}

template <class T>
void read_dataset(const File& f, const std::string& name, T* out, int64_t begin, int64_t end, hid_t mem_type) {
  Handle d{SY_H5(H5Dopen2(f.id(), name.c_str(), H5P_DEFAULT), "{}: no dataset '{}'", f.path(), name), H5Dclose};
  Handle fs{H5Dget_space(d.id), H5Sclose};
  int rank = H5Sget_simple_extent_ndims(fs.id);
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
  H5Sget_simple_extent_dims(fs.id, dims.data(), nullptr);
  int64_t numel = 1;
  for (hsize_t x : dims) numel *= static_cast<int64_t>(x);
  SY_CHECK(begin >= 0 && begin <= end && end <= numel, "{}: dataset '{}' has {} elements, asked for [{}, {})", f.path(),
           name, numel, begin, end);
  if (end == begin) return;
  if (begin == 0 && end == numel) {  // the whole dataset: HDF5's direct path
    SY_H5(H5Dread(d.id, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), "{}: cannot read dataset '{}'", f.path(), name);
    return;
  }
  hsize_t n = static_cast<hsize_t>(end - begin);
  Handle ms{H5Screate_simple(1, &n, nullptr), H5Sclose};
  if (rank <= 1) {
    if (rank == 1) {
      hsize_t start = static_cast<hsize_t>(begin);
      H5Sselect_hyperslab(fs.id, H5S_SELECT_SET, &start, nullptr, &n, nullptr);
    }
  } else if (rank == 2) {
    // A flat range of a matrix: a partial first row, whole rows, a partial last row.
    const int64_t C = static_cast<int64_t>(dims[1]);
    H5Sselect_none(fs.id);
    int64_t b = begin;
    while (b < end) {
      int64_t row = b / C, col = b % C;
      hsize_t start[2], count[2];
      if (col == 0 && end - b >= C) {
        int64_t rows = (end - b) / C;
        start[0] = static_cast<hsize_t>(row), start[1] = 0, count[0] = static_cast<hsize_t>(rows), count[1] = static_cast<hsize_t>(C);
        b += rows * C;
      } else {
        int64_t len = std::min(C - col, end - b);
        start[0] = static_cast<hsize_t>(row), start[1] = static_cast<hsize_t>(col), count[0] = 1, count[1] = static_cast<hsize_t>(len);
        b += len;
      }
      H5Sselect_hyperslab(fs.id, H5S_SELECT_OR, start, nullptr, count, nullptr);
    }
  } else {
    // Higher ranks: read whole and copy the range (no such tensors today).
    std::vector<T> all(static_cast<size_t>(numel));
    SY_H5(H5Dread(d.id, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, all.data()), "{}: cannot read dataset '{}'", f.path(), name);
    std::memcpy(out, all.data() + begin, static_cast<size_t>(end - begin) * sizeof(T));
    return;
  }
  SY_H5(H5Dread(d.id, mem_type, ms.id, fs.id, H5P_DEFAULT, out), "{}: cannot read dataset '{}'", f.path(), name);
}

hid_t open_object(const File& f, const std::string& object) {
  return SY_H5(H5Oopen(f.id(), object.empty() ? "/" : object.c_str(), H5P_DEFAULT), "{}: no object '{}'", f.path(),
               object);
}

void write_attr(const File& f, const std::string& object, const std::string& key, hid_t type, hid_t space,
                const void* data) {
  Handle o{open_object(f, object), H5Oclose};
  if (H5Aexists(o.id, key.c_str()) > 0) H5Adelete(o.id, key.c_str());
  Handle a{SY_H5(H5Acreate2(o.id, key.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), "{}: cannot create attribute "
                 "'{}' of '{}'", f.path(), key, object),
           H5Aclose};
  SY_H5(H5Awrite(a.id, type, data), "{}: cannot write attribute '{}' of '{}'", f.path(), key, object);
}

hid_t open_attr(const File& f, hid_t obj, const std::string& object, const std::string& key) {
  return SY_H5(H5Aopen(obj, key.c_str(), H5P_DEFAULT), "{}: '{}' has no attribute '{}'", f.path(), object, key);
}

// The canonical encoding a seal CRC covers: a type letter ('s' string, 'i'
// int64, 'f' double, 'I' int64 vector, 'F' float dataset, 'L' int64
// dataset, 'U' uint8 dataset, 'B' bulk float dataset, 'G' group), the shape as int64s, then
// the value's bytes (little-endian, as stored).
uint32_t canonical_crc(char type, const std::vector<int64_t>& shape, const void* data, size_t bytes) {
  std::string head(1, type);
  const int64_t rank = static_cast<int64_t>(shape.size());
  head.append(reinterpret_cast<const char*>(&rank), sizeof(rank));
  for (int64_t d : shape) head.append(reinterpret_cast<const char*>(&d), sizeof(d));
  uint32_t crc = crc32c(head.data(), head.size());
  return bytes ? crc32c(data, bytes, crc) : crc;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string item_name(char kind, const std::string& object, const std::string& key) {
  if (kind == 'a') return object.empty() ? fmt::format("attribute '{}'", key) : fmt::format("attribute '{}' of '{}'", key, object);
  if (kind == 'g') return fmt::format("group '{}'", object);
  return fmt::format("dataset '{}'", object);
}

// Names in the table are ours (tensor names, keys): no tabs or newlines.
bool plain_name(const std::string& s) { return s.find_first_of("\t\n") == std::string::npos; }

}  // namespace

std::string File::seal_key(char kind, const std::string& object, const std::string& key) {
  return std::string(1, kind) + '\t' + object + '\t' + key;
}

void File::seal(char kind, const std::string& object, const std::string& key, uint32_t crc) {
  if (!writing_) return;
  SY_CHECK(plain_name(object) && plain_name(key), "{}: name '{}' / '{}' holds a tab or newline", path_, object, key);
  seal_[seal_key(kind, object, key)] = {kind, crc};
}

bool File::lists(char kind, const std::string& object, const std::string& key) const {
  return seal_.count(seal_key(kind, object, key)) > 0;
}

void File::require_listed(char kind, const std::string& object, const std::string& key) const {
  if (!sealed_ || writing_) return;
  bool ok = kind == 'D' ? lists('d', object) || lists('b', object) : lists(kind, object, key);
  SY_CHECK(ok, "{}: {} is not listed in the file's checksum table: the file is corrupt or not a Switchyard file",
           path_, item_name(kind == 'D' ? 'd' : kind, object, key));
}

File File::create(const std::string& path) {
  hid_t id = SY_H5(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "cannot create '{}'", path);
  File f(id, path);
  f.writing_ = true;
  return f;
}

File File::open_raw(const std::string& path) {
  SY_CHECK(::access(path.c_str(), R_OK) == 0, "cannot read '{}': {}", path, std::strerror(errno));
  struct stat st{};
  SY_CHECK(::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode), "'{}' is not a regular file (a {}): not a "
           "checkpoint file", path, S_ISDIR(st.st_mode) ? "directory" : S_ISFIFO(st.st_mode) ? "FIFO" : "device or socket");
  hid_t id = SY_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "'{}' is not a readable HDF5 file (truncated or "
                   "corrupt?)", path);
  return File(id, path);
}

File File::open(const std::string& path) {
  File f = open_raw(path);
  f.read_seal(nullptr);
  return f;
}

File File::open_audit(const std::string& path, std::vector<std::string>& problems) {
  File f = open_raw(path);
  f.read_seal(&problems);
  return f;
}

void File::write_seal() {
  std::string table;
  for (const auto& [key, item] : seal_) table += fmt::format("{}\t{:08x}\n", key, item.crc);
  const int64_t n = static_cast<int64_t>(table.size());
  {
    Handle space{space_of({n}), H5Sclose};
    Handle d{SY_H5(H5Dcreate2(id_, "seal", H5T_STD_U8LE, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                   "{}: cannot create its checksum table", path_),
             H5Dclose};
    if (n > 0)
      SY_H5(H5Dwrite(d.id, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, table.data()),
            "{}: cannot write its checksum table", path_);
  }
  digest_ = crc32c(table.data(), table.size());
  const int64_t crc = digest_;
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  write_attr(*this, "", "seal_crc32c", H5T_NATIVE_INT64, s.id, &crc);
}

void File::read_seal(std::vector<std::string>* problems) {
  std::vector<std::string> found;
  check_seal(found);
  if (problems)
    problems->insert(problems->end(), found.begin(), found.end());
  else if (!found.empty())
    SY_FAIL("{}", found.front());
}

void File::check_seal(std::vector<std::string>& found) {
  auto problem = [&](std::string msg) { found.push_back(std::move(msg)); };
  const bool has_crc = H5Aexists(id_, "seal_crc32c") > 0;
  const bool has_table = H5Lexists(id_, "seal", H5P_DEFAULT) > 0;
  if (!has_crc && !has_table) return;  // not sealed: format 1, or not ours
  if (!has_crc || !has_table)
    return problem(fmt::format("{}: the checksum table is damaged ({} is missing): the file is corrupt", path_,
                               has_crc ? "dataset 'seal'" : "attribute 'seal_crc32c'"));
  std::string table;
  int64_t stored = 0;
  try {
    stored = attr_int("", "seal_crc32c");
    const int64_t n = stored_numel("seal");
    table.resize(static_cast<size_t>(n));
    Handle d{SY_H5(H5Dopen2(id_, "seal", H5P_DEFAULT), "{}: no dataset 'seal'", path_), H5Dclose};
    if (n > 0)
      SY_H5(H5Dread(d.id, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, table.data()),
            "{}: cannot read its checksum table", path_);
  } catch (const Error& e) {
    return problem(e.what());
  }
  const uint32_t crc = crc32c(table.data(), table.size());
  if (static_cast<int64_t>(crc) != stored)
    return problem(fmt::format("{}: the checksum table fails its own checksum (stored {:08x}, computed {:08x}): the "
                               "file is corrupt", path_, static_cast<uint32_t>(stored), crc));
  // Parse: kind \t object \t key \t crc \n
  std::map<std::string, Sealed> items;
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> f;
    for (size_t b = 0, e;; b = e + 1) {
      e = line.find('\t', b);
      f.push_back(line.substr(b, e == std::string::npos ? std::string::npos : e - b));
      if (e == std::string::npos) break;
    }
    if (f.size() != 4 || f[0].size() != 1 || std::string("agdb").find(f[0][0]) == std::string::npos || f[3].size() != 8)
      return problem(fmt::format("{}: the checksum table has a malformed line: the file is corrupt", path_));
    items[seal_key(f[0][0], f[1], f[2])] = {f[0][0], static_cast<uint32_t>(std::stoul(f[3], nullptr, 16))};
  }
  // Verify every item against the file.
  for (const auto& [k, item] : items) {
    const size_t t1 = k.find('\t', 2);
    const std::string object = k.substr(2, t1 - 2), key = k.substr(t1 + 1);
    const std::string what = item_name(item.kind, object, key);
    try {
      uint32_t got = 0;
      if (item.kind == 'g') {
        if (!exists(object) || H5Oexists_by_name(id_, object.c_str(), H5P_DEFAULT) <= 0) {
          problem(fmt::format("{}: {} listed in its checksum table is missing: the file is corrupt", path_, what));
          continue;
        }
        got = canonical_crc('G', {}, nullptr, 0);
      } else if (item.kind == 'a') {
        if ((!object.empty() && !exists(object)) || !has_attr(object, key)) {
          problem(fmt::format("{}: {} listed in its checksum table is missing: the file is corrupt (a flipped bit in "
                              "a name?)", path_, what));
          continue;
        }
        Handle o{open_object(*this, object), H5Oclose};
        Handle a{open_attr(*this, o.id, object, key), H5Aclose};
        Handle t{H5Aget_type(a.id), H5Tclose};
        Handle sp{H5Aget_space(a.id), H5Sclose};
        const H5T_class_t cls = H5Tget_class(t.id);
        if (cls == H5T_STRING) {
          std::string v = attr_string(object, key);
          got = canonical_crc('s', {}, v.data(), v.size());
        } else if (cls == H5T_INTEGER && H5Sget_simple_extent_type(sp.id) == H5S_SCALAR) {
          int64_t v = attr_int(object, key);
          got = canonical_crc('i', {}, &v, sizeof(v));
        } else if (cls == H5T_INTEGER) {
          std::vector<int64_t> v = attr_ints(object, key);
          got = canonical_crc('I', {static_cast<int64_t>(v.size())}, v.data(), v.size() * sizeof(int64_t));
        } else if (cls == H5T_FLOAT) {
          double v = attr_double(object, key);
          got = canonical_crc('f', {}, &v, sizeof(v));
        } else {
          problem(fmt::format("{}: {} has an unexpected type: the file is corrupt", path_, what));
          continue;
        }
      } else {
        if (!exists(object) || H5Oexists_by_name(id_, object.c_str(), H5P_DEFAULT) <= 0) {
          problem(fmt::format("{}: {} listed in its checksum table is missing: the file is corrupt (a flipped bit in "
                              "a name?)", path_, what));
          continue;
        }
        Handle d{SY_H5(H5Dopen2(id_, object.c_str(), H5P_DEFAULT), "{}: {} is not a dataset", path_, what), H5Dclose};
        Handle t{H5Dget_type(d.id), H5Tclose};
        const H5T_class_t cls = H5Tget_class(t.id);
        const std::vector<int64_t> dims = shape(object);
        if (item.kind != 'b') stored_numel(object);  // before allocating from dims
        if (item.kind == 'b') {
          got = cls == H5T_FLOAT ? canonical_crc('B', dims, nullptr, 0) : 0;
        } else if (cls == H5T_FLOAT) {
          std::vector<float> v(static_cast<size_t>(numel_of(dims)));
          read(object, v.data(), 0, static_cast<int64_t>(v.size()));
          got = canonical_crc('F', dims, v.data(), v.size() * sizeof(float));
        } else if (cls == H5T_INTEGER && H5Tget_size(t.id) == 1) {
          std::vector<uint8_t> v(static_cast<size_t>(numel_of(dims)));
          read(object, v.data(), 0, static_cast<int64_t>(v.size()));
          got = canonical_crc('U', dims, v.data(), v.size());
        } else if (cls == H5T_INTEGER) {
          std::vector<int64_t> v(static_cast<size_t>(numel_of(dims)));
          read(object, v.data(), 0, static_cast<int64_t>(v.size()));
          got = canonical_crc('L', dims, v.data(), v.size() * sizeof(int64_t));
        }
      }
      if (got != item.crc)
        problem(fmt::format("{}: {} fails its checksum (stored {:08x}, computed {:08x}): the file is corrupt", path_,
                            what, item.crc, got));
    } catch (const Error& e) {
      problem(fmt::format("{}: {} cannot be read ({}): the file is corrupt", path_, what, e.what()));
    }
  }
  seal_ = std::move(items);
  sealed_ = true;
  digest_ = crc;
}

File::File(File&& o) noexcept
    : id_(o.id_), path_(std::move(o.path_)), writing_(o.writing_), sealed_(o.sealed_), digest_(o.digest_),
      seal_(std::move(o.seal_)) {
  o.id_ = -1;
}

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = o.id_, path_ = std::move(o.path_);
    writing_ = o.writing_, sealed_ = o.sealed_, digest_ = o.digest_, seal_ = std::move(o.seal_);
    o.id_ = -1;
  }
  return *this;
}

File::~File() {
  if (id_ >= 0) H5Fclose(id_);
}

void File::close() {
  if (id_ < 0) return;
  if (writing_) {
    write_seal();
    writing_ = false;
  }
  hid_t id = id_;
  id_ = -1;
  SY_H5(H5Fclose(id), "{}: cannot close (flush) the file", path_);
}

bool File::exists(const std::string& object) const {
  if (sealed_ && !writing_) {  // the table is authoritative
    if (lists('g', object) || lists('d', object) || lists('b', object)) return true;
    for (const auto& [k, item] : seal_)
      if (item.kind != 'a' && k.compare(2, object.size() + 1, object + "/") == 0) return true;
    return false;
  }
  size_t pos = 0;
  while (true) {
    size_t next = object.find('/', pos);
    std::string prefix = object.substr(0, next);
    if (H5Lexists(id_, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (next == std::string::npos) return true;
    pos = next + 1;
  }
}

std::vector<std::string> File::list(const std::string& group) const {
  std::vector<std::string> names;
  if (sealed_ && !writing_) {  // children the table lists, in name order
    const std::string prefix = group.empty() ? "" : group + "/";
    for (const auto& [k, item] : seal_) {
      if (item.kind == 'a') continue;
      const std::string object = k.substr(2, k.find('\t', 2) - 2);
      if (object.compare(0, prefix.size(), prefix) != 0 || object.size() == prefix.size()) continue;
      std::string child = object.substr(prefix.size(), object.find('/', prefix.size()) - prefix.size());
      names.push_back(child);
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
  }
  Handle g{SY_H5(H5Gopen2(id_, group.c_str(), H5P_DEFAULT), "{}: no group '{}'", path_, group), H5Gclose};
  H5Literate(
      g.id, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->push_back(name);
        return 0;
      },
      &names);
  return names;
}

void File::make_group(const std::string& group) {
  seal('g', group, "", canonical_crc('G', {}, nullptr, 0));
  if (exists(group)) return;
  Handle g{SY_H5(H5Gcreate2(id_, group.c_str(), link_props(), H5P_DEFAULT, H5P_DEFAULT), "{}: cannot create group '{}'",
                 path_, group),
           H5Gclose};
}

void File::write(const std::string& name, const float* data, const std::vector<int64_t>& shape) {
  write_dataset(*this, name, data, shape, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT);
  seal('d', name, "", canonical_crc('F', shape, data, static_cast<size_t>(numel_of(shape)) * sizeof(float)));
}

void File::write(const std::string& name, const int64_t* data, const std::vector<int64_t>& shape) {
  write_dataset(*this, name, data, shape, H5T_STD_I64LE, H5T_NATIVE_INT64);
  seal('d', name, "", canonical_crc('L', shape, data, static_cast<size_t>(numel_of(shape)) * sizeof(int64_t)));
}

void File::write(const std::string& name, const uint8_t* data, const std::vector<int64_t>& shape) {
  write_dataset(*this, name, data, shape, H5T_STD_U8LE, H5T_NATIVE_UINT8);
  seal('d', name, "", canonical_crc('U', shape, data, static_cast<size_t>(numel_of(shape))));
}

void File::write_bulk(const std::string& name, const float* data, const std::vector<int64_t>& shape) {
  write_dataset(*this, name, data, shape, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT);
  seal('b', name, "", canonical_crc('B', shape, nullptr, 0));
}

std::vector<int64_t> File::shape(const std::string& name) const {
  require_listed('D', name);
  Handle d{SY_H5(H5Dopen2(id_, name.c_str(), H5P_DEFAULT), "{}: no dataset '{}'", path_, name), H5Dclose};
  Handle s{H5Dget_space(d.id), H5Sclose};
  int rank = H5Sget_simple_extent_ndims(s.id);
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
  H5Sget_simple_extent_dims(s.id, dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

int64_t File::numel(const std::string& name) const {
  int64_t n = 1;
  for (int64_t x : shape(name)) n *= x;
  return n;
}

int64_t File::stored_numel(const std::string& name) const {
  // A dataset's shape is metadata a flipped bit can enlarge: before anything
  // is allocated from it, it must agree with the bytes the file holds.
  const std::vector<int64_t> dims = shape(name);
  Handle d{SY_H5(H5Dopen2(id_, name.c_str(), H5P_DEFAULT), "{}: no dataset '{}'", path_, name), H5Dclose};
  Handle t{H5Dget_type(d.id), H5Tclose};
  const size_t elem = H5Tget_size(t.id);
  const hsize_t stored = H5Dget_storage_size(d.id);
  int64_t n = 1;
  bool overflow = false;
  for (int64_t x : dims) {
    if (x < 0 || (x > 0 && n > std::numeric_limits<int64_t>::max() / x)) overflow = true;
    else n *= x;
  }
  SY_CHECK(!overflow && elem > 0 && static_cast<hsize_t>(n) <= stored / elem,
           "{}: dataset '{}' claims shape [{}] ({} bytes per value) but the file stores {} bytes for it: the file is "
           "corrupt", path_, name, fmt::join(dims, ", "), elem, stored);
  return n;
}

void File::read(const std::string& name, float* out, int64_t begin, int64_t end) const {
  require_listed('D', name);
  read_dataset(*this, name, out, begin, end, H5T_NATIVE_FLOAT);
}

void File::read(const std::string& name, int64_t* out, int64_t begin, int64_t end) const {
  require_listed('D', name);
  read_dataset(*this, name, out, begin, end, H5T_NATIVE_INT64);
}

void File::read(const std::string& name, uint8_t* out, int64_t begin, int64_t end) const {
  require_listed('D', name);
  read_dataset(*this, name, out, begin, end, H5T_NATIVE_UINT8);
}

void File::set_attr(const std::string& object, const std::string& key, const std::string& value) {
  // Fixed-length, NUL-padded: the value lives in the object header, where
  // reading it touches nothing else. A variable-length string keeps only a
  // global-heap ID there, and HDF5 1.10 follows a damaged ID into a segfault
  // before any checksum can be compared (the fault campaign's flipped bits).
  // An object header message holds at most 64 KiB, so a longer value (a
  // config text beyond kMaxFixedString; real ones are a few KiB) stays
  // variable-length, its CRC still sealed.
  SY_CHECK(value.find('\0') == std::string::npos, "{}: attribute '{}' of '{}' holds a NUL byte", path_, key, object);
  Handle t{H5Tcopy(H5T_C_S1), H5Tclose};
  if (value.size() > kMaxFixedString) {
    H5Tset_size(t.id, H5T_VARIABLE);
    H5Tset_cset(t.id, H5T_CSET_UTF8);
    Handle s{H5Screate(H5S_SCALAR), H5Sclose};
    const char* p = value.c_str();
    write_attr(*this, object, key, t.id, s.id, &p);
    seal('a', object, key, canonical_crc('s', {}, value.data(), value.size()));
    return;
  }
  H5Tset_size(t.id, std::max<size_t>(value.size(), 1));
  H5Tset_strpad(t.id, H5T_STR_NULLPAD);
  H5Tset_cset(t.id, H5T_CSET_UTF8);
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  std::string padded = value;
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  write_attr(*this, object, key, t.id, s.id, padded.data());
  seal('a', object, key, canonical_crc('s', {}, value.data(), value.size()));
}

void File::set_attr(const std::string& object, const std::string& key, int64_t value) {
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  write_attr(*this, object, key, H5T_NATIVE_INT64, s.id, &value);
  seal('a', object, key, canonical_crc('i', {}, &value, sizeof(value)));
}

void File::set_attr(const std::string& object, const std::string& key, double value) {
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  write_attr(*this, object, key, H5T_NATIVE_DOUBLE, s.id, &value);
  seal('a', object, key, canonical_crc('f', {}, &value, sizeof(value)));
}

void File::set_attr(const std::string& object, const std::string& key, const std::vector<int64_t>& value) {
  hsize_t n = value.size();
  Handle s{n ? H5Screate_simple(1, &n, nullptr) : H5Screate(H5S_NULL), H5Sclose};
  write_attr(*this, object, key, H5T_NATIVE_INT64, s.id, value.data());
  seal('a', object, key,
       canonical_crc('I', {static_cast<int64_t>(value.size())}, value.data(), value.size() * sizeof(int64_t)));
}

bool File::has_attr(const std::string& object, const std::string& key) const {
  if (sealed_ && !writing_) return lists('a', object, key);
  if (!object.empty() && !exists(object)) return false;
  Handle o{open_object(*this, object), H5Oclose};
  return H5Aexists(o.id, key.c_str()) > 0;
}

std::string File::attr_string(const std::string& object, const std::string& key) const {
  require_listed('a', object, key);
  Handle o{open_object(*this, object), H5Oclose};
  Handle a{open_attr(*this, o.id, object, key), H5Aclose};
  Handle t{H5Aget_type(a.id), H5Tclose};
  SY_CHECK(H5Tget_class(t.id) == H5T_STRING, "{}: attribute '{}' of '{}' is not a string", path_, key, object);
  if (H5Tis_variable_str(t.id) > 0) {
    Handle mt{H5Tcopy(H5T_C_S1), H5Tclose};
    H5Tset_size(mt.id, H5T_VARIABLE);
    H5Tset_cset(mt.id, H5T_CSET_UTF8);
    char* p = nullptr;
    SY_H5(H5Aread(a.id, mt.id, &p), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
    std::string out = p ? p : "";
    H5free_memory(p);
    return out;
  }
  std::string out(H5Tget_size(t.id), '\0');
  SY_H5(H5Aread(a.id, t.id, out.data()), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
  return out.substr(0, out.find('\0'));
}

int64_t File::attr_int(const std::string& object, const std::string& key) const {
  require_listed('a', object, key);
  Handle o{open_object(*this, object), H5Oclose};
  Handle a{open_attr(*this, o.id, object, key), H5Aclose};
  int64_t v = 0;
  SY_H5(H5Aread(a.id, H5T_NATIVE_INT64, &v), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
  return v;
}

double File::attr_double(const std::string& object, const std::string& key) const {
  require_listed('a', object, key);
  Handle o{open_object(*this, object), H5Oclose};
  Handle a{open_attr(*this, o.id, object, key), H5Aclose};
  double v = 0;
  SY_H5(H5Aread(a.id, H5T_NATIVE_DOUBLE, &v), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
  return v;
}

std::vector<int64_t> File::attr_ints(const std::string& object, const std::string& key) const {
  require_listed('a', object, key);
  Handle o{open_object(*this, object), H5Oclose};
  Handle a{open_attr(*this, o.id, object, key), H5Aclose};
  Handle s{H5Aget_space(a.id), H5Sclose};
  hssize_t n = H5Sget_simple_extent_npoints(s.id);
  std::vector<int64_t> v(static_cast<size_t>(std::max<hssize_t>(n, 0)));
  if (!v.empty())
    SY_H5(H5Aread(a.id, H5T_NATIVE_INT64, v.data()), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
  return v;
}

void sync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  SY_CHECK(fd >= 0, "cannot open '{}' to sync it: {}", path, std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  SY_CHECK(rc == 0, "fsync of '{}' failed: {}", path, std::strerror(err));
}

}  // namespace sy::h5
