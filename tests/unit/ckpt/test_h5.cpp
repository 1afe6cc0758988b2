// The sealed HDF5 layer: what it writes can be read back, and damage that
// HDF5 itself would act on (a heap pointer, a dataset's shape) is caught
// before HDF5 or an allocation trusts it.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <string>
#include <vector>

#include "ckpt/h5.h"
#include "core/check.h"

namespace fs = std::filesystem;
using sy::h5::File;

namespace {

std::string scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("sy_test_h5_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// The class and variable-length flag of an attribute, read with plain HDF5.
std::pair<H5T_class_t, bool> attr_type(const std::string& path, const char* key) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t a = H5Aopen(f, key, H5P_DEFAULT);
  hid_t t = H5Aget_type(a);
  std::pair<H5T_class_t, bool> out{H5Tget_class(t), H5Tis_variable_str(t) > 0};
  H5Tclose(t), H5Aclose(a), H5Fclose(f);
  return out;
}

}  // namespace

TEST(H5, StringAttributesAreFixedLengthAndRoundTrip) {
  const std::string path = scratch("strings.h5");
  // Empty, short, UTF-8, a 50 KB config, and a text longer than the 64 KiB
  // an object header message holds.
  std::string big;
  for (int i = 0; big.size() < 100000; ++i) big += "key_" + std::to_string(i) + " = \"value\"\n";
  const std::vector<std::pair<std::string, std::string>> values = {
      {"empty", ""}, {"short", "run-1234"}, {"utf8", "r\xC3\xA9sum\xC3\xA9 \xE2\x9C\x93"}, {"config", big.substr(0, 50000)},
      {"big", big}};
  {
    File f = File::create(path);
    for (const auto& [k, v] : values) f.set_attr("", k, v);
    f.close();
  }
  for (const auto& [k, v] : values) {
    const auto [cls, vlen] = attr_type(path, k.c_str());
    EXPECT_EQ(cls, H5T_STRING) << k;
    // Beyond 64 KiB an object header cannot hold it: only then variable-length.
    EXPECT_EQ(vlen, k == "big") << k << ": a variable-length string keeps a heap ID that HDF5 follows before any check";
  }
  File f = File::open(path);
  for (const auto& [k, v] : values) EXPECT_EQ(f.attr_string("", k), v) << k;
  EXPECT_THROW(File::create(scratch("nul.h5")).set_attr("", "x", std::string("a\0b", 3)), sy::Error);
}

TEST(H5, AStoredShapeLargerThanItsBytesIsCorruptNotAnAllocation) {
  const std::string path = scratch("shape.h5");
  {
    File f = File::create(path);
    std::vector<float> v(12, 1.5f);
    f.write("x", v.data(), {3, 4});
    f.close();
  }
  EXPECT_EQ(File::open(path).stored_numel("x"), 12);
  // Enlarge the dataset's recorded shape in place the way a flipped bit
  // would, without touching its data: H5Dset_extent needs a chunked layout,
  // so rewrite the dataspace message through a fresh unsealed file instead.
  const std::string bad = scratch("shape_bad.h5");
  {
    hid_t fid = H5Fcreate(bad.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[2] = {3, 4};
    hid_t sp = H5Screate_simple(2, dims, nullptr);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_LATE);
    hid_t d = H5Dcreate2(fid, "x", H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Dclose(d), H5Pclose(dcpl), H5Sclose(sp), H5Fclose(fid);  // never written: 0 bytes stored
  }
  File g = File::open(bad);
  try {
    g.stored_numel("x");
    FAIL() << "a shape without its bytes was trusted";
  } catch (const sy::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  }
  fs::remove_all(fs::path(path).parent_path());
}
