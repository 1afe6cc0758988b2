// Filesystem steps a checkpoint depends on, each checked and explained:
// durable small files, renames that never replace what they should not,
// and what an I/O failure most likely means (a full disk, a quota).
#pragma once

#include <cstdint>
#include <string>

namespace sy::ckpt {

// Writes `text` to `path` through a temporary file, fsync, rename, fsync
// of the directory: a crash leaves the old file or the new one, never a
// mixture. Errors name the path and say why (e.g. no space left on device).
void write_file_durably(const std::string& path, const std::string& text);

// rename(2) that refuses to replace an existing `to` (RENAME_NOREPLACE).
void rename_noreplace(const std::string& from, const std::string& to);

// Puts directory `fresh` in place of the existing directory `old`; on
// return `fresh` holds the previous contents of `old`. Atomic where the
// filesystem supports RENAME_EXCHANGE; elsewhere `old` is first renamed to
// `old`.replaced, which recover_replaced() puts back after a crash.
void exchange_dirs(const std::string& fresh, const std::string& old);
// For every "<x>.replaced" in `dir`: if <x> is missing (a crash in the
// middle of exchange_dirs), renames it back; otherwise removes it.
// Returns how many were put back.
int recover_replaced(const std::string& dir);

// Free bytes for unprivileged writers on the filesystem holding `path` (or
// its nearest existing parent); -1 if unknown.
double free_bytes(const std::string& path);

// " (no space left on device: ...)" when `err` or the free space on `path`
// says the disk is full, " (disk quota exceeded)", else "".
std::string io_hint(const std::string& path, int err = 0);

// "12.3 MiB"
std::string human_bytes(double bytes);

}  // namespace sy::ckpt
