#include "config/name_glob.h"

#include <cstdint>
#include <vector>

#include "core/check.h"

namespace sy {

namespace {

struct Tok {
  enum Kind { lit, star, star2, range } kind;
  char c = 0;
  int64_t lo = 0, hi = 0;
};

// Parses; returns "" or the problem.
std::string tokenize(const std::string& p, std::vector<Tok>* out) {
  if (p.empty()) return "is empty";
  const size_t n = p.size();
  for (size_t i = 0; i < n;) {
    const char ch = p[i];
    if (ch == '*') {
      const bool two = i + 1 < n && p[i + 1] == '*';
      if (two && i + 2 < n && p[i + 2] == '*') return fmt::format("has '***' at character {}", i + 1);
      out->push_back({two ? Tok::star2 : Tok::star});
      i += two ? 2 : 1;
    } else if (ch == '[') {
      const size_t close = p.find(']', i);
      if (close == std::string::npos) return fmt::format("has a '[' at character {} without its ']'", i + 1);
      const std::string body = p.substr(i + 1, close - i - 1);
      const size_t dash = body.find('-');
      const std::string a = body.substr(0, dash), b = dash == std::string::npos ? a : body.substr(dash + 1);
      auto number = [](const std::string& s, int64_t* v) {
        if (s.empty() || s.size() > 15 || (s.size() > 1 && s[0] == '0')) return false;
        *v = 0;
        for (char d : s) {
          if (d < '0' || d > '9') return false;
          *v = *v * 10 + (d - '0');
        }
        return true;
      };
      Tok t{Tok::range};
      if (!number(a, &t.lo) || !number(b, &t.hi))
        return fmt::format("has '[{}]': a bracket holds an integer range such as [0-7] or one integer such as [3]",
                           body);
      if (t.lo > t.hi) return fmt::format("has the empty range '[{}]' ({} > {})", body, t.lo, t.hi);
      if ((i > 0 && p[i - 1] != '.') || (close + 1 < n && p[close + 1] != '.'))
        return fmt::format("has '[{}]' inside a name component: a range must be a whole component (\"experts.[{}].w13\")",
                           body, body);
      out->push_back(t);
      i = close + 1;
    } else if (ch == ']') {
      return fmt::format("has a ']' at character {} without its '['", i + 1);
    } else {
      out->push_back({Tok::lit, ch});
      ++i;
    }
  }
  return "";
}

struct Matcher {
  const std::vector<Tok>& t;
  const std::string& s;
  std::vector<signed char> memo;  // (token, position) -> -1 unknown, 0 no, 1 yes

  bool at(size_t ti, size_t si) {
    signed char& m = memo[ti * (s.size() + 1) + si];
    if (m < 0) m = run(ti, si) ? 1 : 0;
    return m == 1;
  }
  bool run(size_t ti, size_t si) {
    if (ti == t.size()) return si == s.size();
    const Tok& k = t[ti];
    switch (k.kind) {
      case Tok::lit:
        return si < s.size() && s[si] == k.c && at(ti + 1, si + 1);
      case Tok::star:
        for (size_t e = si;; ++e) {
          if (at(ti + 1, e)) return true;
          if (e == s.size() || s[e] == '.') return false;
        }
      case Tok::star2:
        for (size_t e = si; e <= s.size(); ++e)
          if (at(ti + 1, e)) return true;
        return false;
      case Tok::range: {
        size_t e = s.find('.', si);
        if (e == std::string::npos) e = s.size();
        const size_t len = e - si;
        if (len == 0 || len > 15 || (len > 1 && s[si] == '0')) return false;
        int64_t v = 0;
        for (size_t i = si; i < e; ++i) {
          if (s[i] < '0' || s[i] > '9') return false;
          v = v * 10 + (s[i] - '0');
        }
        return v >= k.lo && v <= k.hi && at(ti + 1, e);
      }
    }
    return false;
  }
};

}  // namespace

std::string name_glob_problem(const std::string& pattern) {
  std::vector<Tok> t;
  return tokenize(pattern, &t);
}

bool name_glob_match(const std::string& pattern, const std::string& name) {
  std::vector<Tok> t;
  const std::string problem = tokenize(pattern, &t);
  SY_CHECK(problem.empty(), "name pattern \"{}\" {}", pattern, problem);
  Matcher m{t, name, std::vector<signed char>((t.size() + 1) * (name.size() + 1), -1)};
  return m.at(0, 0);
}

}  // namespace sy
