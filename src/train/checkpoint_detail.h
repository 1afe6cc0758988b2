// Internal to the checkpointer's files (checkpoint.cpp, checkpoint_load.cpp,
// checkpoint_owner.cpp): agreeing over ranks, and deleting a checkpoint.
#pragma once

#include <filesystem>
#include <string>

#include "comm/comm.h"

namespace sy::ckpt_detail {

// Every rank learns the first (lowest-rank) non-empty message; *who is its
// rank (INT_MAX when every message is empty).
std::string agree_on_error(const Comm& world, const std::string& mine, int* who);
// The same string on every rank, from `root`.
std::string bcast_string(const Comm& world, std::string s, int root);
// Deletes a step directory by renaming it out of the step namespace first
// (a kill in between leaves a .tmp name, never a half-deleted checkpoint);
// a failure is a warning, not an error.
void remove_checkpoint_dir(const std::filesystem::path& dir);

}  // namespace sy::ckpt_detail
