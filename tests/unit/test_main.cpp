#include <gtest/gtest.h>

#include "core/cpu.h"
#include "kernels/cpu/blas.h"

int main(int argc, char** argv) {
  // Tests run on the same OpenBLAS kernels the trainer uses.
  sy::prefer_fast_blas_kernels(argv);
  sy::flush_denormals();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
