#include "ckpt/h5.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/check.h"

namespace sy::h5 {

namespace {

// HDF5 prints its error stack by default; we turn that into exceptions.
struct Quiet {
  Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
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

}  // namespace

File File::create(const std::string& path) {
  hid_t id = SY_H5(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "cannot create '{}'", path);
  return File(id, path);
}

File File::open(const std::string& path) {
  SY_CHECK(::access(path.c_str(), R_OK) == 0, "cannot read '{}': {}", path, std::strerror(errno));
  hid_t id = SY_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "'{}' is not a readable HDF5 file (truncated or "
                   "corrupt?)", path);
  return File(id, path);
}

File::File(File&& o) noexcept : id_(o.id_), path_(std::move(o.path_)) { o.id_ = -1; }

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = o.id_, path_ = std::move(o.path_);
    o.id_ = -1;
  }
  return *this;
}

File::~File() {
  if (id_ >= 0) H5Fclose(id_);
}

void File::close() {
  if (id_ < 0) return;
  hid_t id = id_;
  id_ = -1;
  SY_H5(H5Fclose(id), "{}: cannot close (flush) the file", path_);
}

bool File::exists(const std::string& object) const {
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
  if (exists(group)) return;
  Handle g{SY_H5(H5Gcreate2(id_, group.c_str(), link_props(), H5P_DEFAULT, H5P_DEFAULT), "{}: cannot create group '{}'",
                 path_, group),
           H5Gclose};
}

void File::write(const std::string& name, const float* data, const std::vector<int64_t>& shape) {
  write_dataset(*this, name, data, shape, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT);
}

void File::write(const std::string& name, const int64_t* data, const std::vector<int64_t>& shape) {
  write_dataset(*this, name, data, shape, H5T_STD_I64LE, H5T_NATIVE_INT64);
}

std::vector<int64_t> File::shape(const std::string& name) const {
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

void File::read(const std::string& name, float* out, int64_t begin, int64_t end) const {
  read_dataset(*this, name, out, begin, end, H5T_NATIVE_FLOAT);
}

void File::read(const std::string& name, int64_t* out, int64_t begin, int64_t end) const {
  read_dataset(*this, name, out, begin, end, H5T_NATIVE_INT64);
}

void File::set_attr(const std::string& object, const std::string& key, const std::string& value) {
  Handle t{H5Tcopy(H5T_C_S1), H5Tclose};
  H5Tset_size(t.id, H5T_VARIABLE);
  H5Tset_cset(t.id, H5T_CSET_UTF8);
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  const char* p = value.c_str();
  write_attr(*this, object, key, t.id, s.id, &p);
}

void File::set_attr(const std::string& object, const std::string& key, int64_t value) {
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  write_attr(*this, object, key, H5T_NATIVE_INT64, s.id, &value);
}

void File::set_attr(const std::string& object, const std::string& key, double value) {
  Handle s{H5Screate(H5S_SCALAR), H5Sclose};
  write_attr(*this, object, key, H5T_NATIVE_DOUBLE, s.id, &value);
}

void File::set_attr(const std::string& object, const std::string& key, const std::vector<int64_t>& value) {
  hsize_t n = value.size();
  Handle s{n ? H5Screate_simple(1, &n, nullptr) : H5Screate(H5S_NULL), H5Sclose};
  write_attr(*this, object, key, H5T_NATIVE_INT64, s.id, value.data());
}

bool File::has_attr(const std::string& object, const std::string& key) const {
  if (!object.empty() && !exists(object)) return false;
  Handle o{open_object(*this, object), H5Oclose};
  return H5Aexists(o.id, key.c_str()) > 0;
}

std::string File::attr_string(const std::string& object, const std::string& key) const {
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
  Handle o{open_object(*this, object), H5Oclose};
  Handle a{open_attr(*this, o.id, object, key), H5Aclose};
  int64_t v = 0;
  SY_H5(H5Aread(a.id, H5T_NATIVE_INT64, &v), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
  return v;
}

double File::attr_double(const std::string& object, const std::string& key) const {
  Handle o{open_object(*this, object), H5Oclose};
  Handle a{open_attr(*this, o.id, object, key), H5Aclose};
  double v = 0;
  SY_H5(H5Aread(a.id, H5T_NATIVE_DOUBLE, &v), "{}: cannot read attribute '{}' of '{}'", path_, key, object);
  return v;
}

std::vector<int64_t> File::attr_ints(const std::string& object, const std::string& key) const {
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
