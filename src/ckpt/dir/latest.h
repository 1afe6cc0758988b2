// The checkpoints directory without HDF5: step directory names and the
// `latest` pointer, a plain text file naming the newest complete one
// (ckpt/format.h describes the whole format). moe-launch reads `latest`
// through this alone; the trainer and moe-ckpt through ckpt/format.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy::ckpt {

inline constexpr const char* kLatest = "latest";

std::string step_dir_name(int64_t step);    // "step_00000100"
// Step of a directory name, or -1 if it is not one of ours.
int64_t parse_step_dir(const std::string& name);

// What the `latest` file of a checkpoints directory says. It is valid when
// it is a regular file holding one step directory name ("step_00000100",
// trailing whitespace allowed) of a directory that exists beside it; a
// path, "..", an empty or garbage file, or a dangling name is a problem.
struct LatestFile {
  bool exists = false;   // there is something called `latest`
  std::string name;      // the step directory it names, when valid
  std::string problem;   // why it cannot be used ("" when valid or absent)
  bool valid() const { return exists && problem.empty(); }
};
LatestFile inspect_latest(const std::string& dir);
// The name a valid `latest` in `dir` holds, "" if it is absent or damaged.
std::string read_latest(const std::string& dir);
// Step directories (step_XXXXXXXX, completed or not) in `dir`, newest first.
std::vector<int64_t> list_steps(const std::string& dir);

}  // namespace sy::ckpt
