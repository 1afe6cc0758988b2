// For unit tests of code that needs MPI (the Trainer): a singleton world of
// one rank for the whole test binary. Include from exactly one file of a
// binary; it registers itself with gtest.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "comm/comm.h"

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { env_ = std::make_unique<sy::MpiEnv>(nullptr, nullptr); }
  void TearDown() override { env_.reset(); }

 private:
  std::unique_ptr<sy::MpiEnv> env_;
};
static auto* const mpi_env = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);
