// Patterns over parameter names (train.lr_groups), which are dot-separated
// ("layers.3.moe.experts.5.w13"). The language, precisely:
//   *      any run of characters inside one name component (no '.'; may be empty)
//   **     any run of characters, dots included (may be empty)
//   [a-b]  a whole component that is a decimal integer n with a <= n <= b
//          (no sign, no leading zeros); [n] is [n-n]. It must stand alone
//          between dots (or the pattern's ends): "x.[0-7].y", not "x[0-7]"
//   else   the character itself
// A pattern matches a name when it matches the whole name.
#pragma once

#include <string>

namespace sy {

// "" when `pattern` is well formed, else what is wrong with it (a sentence
// fragment a caller puts after the pattern).
std::string name_glob_problem(const std::string& pattern);
// Whether `pattern` (well formed) matches all of `name`.
bool name_glob_match(const std::string& pattern, const std::string& name);

}  // namespace sy
