// The run's choice-valued options as enums. The config reads each option's
// TOML string once (config/run.cpp) and the rest of the code compares enum
// values, never strings. Each enum has one name table: OptionNames<E>
// lists the names in enum order, which is also the order error messages and
// --help-config list them in; option_name() and parse_option() read it.
//
// To add a value: add it to the enum and its name, at the same position, to
// the table.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "pipeline/schedule.h"

namespace sy {

// precision.recipe: the numeric recipe of the linear layers.
// bf16: BF16 GEMM operands, FP32 accumulation and master weights (Megatron's
// default mixed precision; on the CPU an exact emulation).
enum class Recipe : uint8_t { fp32, fp8_tensor_current, fp8_tensor_delayed, fp8_block, bf16 };
constexpr bool is_fp8(Recipe r) {
  return r == Recipe::fp8_tensor_current || r == Recipe::fp8_tensor_delayed || r == Recipe::fp8_block;
}
// precision.grad_format: FP8 format of gradients in the backward GEMMs.
enum class GradFormat : uint8_t { e5m2, e4m3 };
// precision.moments: storage of the AdamW moments.
enum class Moments : uint8_t { fp32, bf16 };
// parallel.recompute: activation recomputation per pipeline stage.
enum class Recompute : uint8_t { none, full };
// parallel.transport: how MoE rows travel between expert-parallel ranks.
enum class Transport : uint8_t { automatic, shm, mpi, hierarchical };
// parallel.dispatch_dtype: what the MoE rows that cross ranks travel as
// (moe/payload.h): FP32; BF16 both ways; or E4M3 with 1x128 scales to the
// experts and BF16 back (DeepSeek-V3).
enum class DispatchDtype : uint8_t { fp32, bf16, fp8 };
// parallel.combine_dtype: what the rows back from the experts travel as;
// "auto": BF16 with a bf16 or fp8 dispatch, else FP32.
enum class CombineDtype : uint8_t { automatic, fp32, bf16 };
// data.format: text bytes, or llm.c uint16 token shards.
enum class DataFormat : uint8_t { text, bin };
// checkpoint.resume: "auto", "none", or (any other string) a checkpoint
// directory, which CheckpointSection::resume_dir holds.
enum class ResumeMode : uint8_t { automatic, none, dir };

template <class E>
struct OptionNames;  // static names(): the names, indexed by the enum's value

template <>
struct OptionNames<Recipe> {
  static constexpr std::array<std::string_view, 5> names() {
    return {"fp32", "fp8-tensor-current", "fp8-tensor-delayed", "fp8-block", "bf16"};
  }
};
template <>
struct OptionNames<GradFormat> {
  static constexpr std::array<std::string_view, 2> names() { return {"e5m2", "e4m3"}; }
};
template <>
struct OptionNames<Moments> {
  static constexpr std::array<std::string_view, 2> names() { return {"fp32", "bf16"}; }
};
template <>
struct OptionNames<Recompute> {
  static constexpr std::array<std::string_view, 2> names() { return {"none", "full"}; }
};
template <>
struct OptionNames<Transport> {
  static constexpr std::array<std::string_view, 4> names() { return {"auto", "shm", "mpi", "hierarchical"}; }
};
template <>
struct OptionNames<DispatchDtype> {
  static constexpr std::array<std::string_view, 3> names() { return {"fp32", "bf16", "fp8"}; }
};
template <>
struct OptionNames<CombineDtype> {
  static constexpr std::array<std::string_view, 3> names() { return {"auto", "fp32", "bf16"}; }
};
template <>
struct OptionNames<DataFormat> {
  static constexpr std::array<std::string_view, 2> names() { return {"text", "bin"}; }
};
template <>
struct OptionNames<ResumeMode> {  // `dir` has no name of its own: any other string is a directory
  static constexpr std::array<std::string_view, 2> names() { return {"auto", "none"}; }
};
// The pipeline schedules' names have their one home in pipeline/schedule.h.
template <>
struct OptionNames<pipe::ScheduleKind> {
  static std::vector<std::string_view> names() {
    std::vector<std::string_view> out;
    for (const auto& [name, doc] : pipe::schedule_names()) out.emplace_back(name);
    return out;
  }
};

template <class E>
concept Option = std::is_enum_v<E> && requires { OptionNames<E>::names(); };

// The option's TOML spelling ("fp8-block"); "?" for a value without a name.
template <Option E>
std::string option_name(E e) {
  const auto names = OptionNames<E>::names();
  const auto i = static_cast<size_t>(e);
  return i < names.size() ? std::string(names[i]) : std::string("?");
}

// The value a TOML spelling names, or nullopt.
template <Option E>
std::optional<E> parse_option(std::string_view s) {
  const auto names = OptionNames<E>::names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == s) return static_cast<E>(i);
  return std::nullopt;
}

// Every spelling, in enum order (for messages and --help-config).
template <Option E>
std::vector<std::string> option_names() {
  std::vector<std::string> out;
  for (std::string_view n : OptionNames<E>::names()) out.emplace_back(n);
  return out;
}

}  // namespace sy
