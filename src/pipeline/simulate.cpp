#include "pipeline/simulate.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <tuple>

#include <fmt/format.h>

namespace sy::pipe {

Costs Costs::uniform(int p, int v, double f, double b, double w, double latency) {
  Costs c;
  auto fill = [&](double x) {
    return std::vector<std::vector<double>>(static_cast<size_t>(p), std::vector<double>(static_cast<size_t>(v), x));
  };
  c.f = fill(f), c.b = fill(b), c.w = fill(w), c.latency = latency;
  return c;
}

double Costs::op(const Op& o, int rank) const {
  const size_t r = static_cast<size_t>(rank), ch = static_cast<size_t>(o.chunk);
  switch (o.kind) {
    case OpKind::forward: return f[r][ch];
    case OpKind::backward: return b[r][ch] + w[r][ch];
    case OpKind::backward_input: return b[r][ch];
    case OpKind::backward_weight: return w[r][ch];
    default: return 0;
  }
}

double Simulation::mean_bubble() const {
  double s = 0;
  for (double b : bubble) s += b;
  return bubble.empty() ? 0 : s / static_cast<double>(bubble.size());
}

Simulation simulate(const Schedule& s, const Costs& c) {
  Validation v = validate(s);
  if (!v.ok) throw std::invalid_argument("cannot simulate an invalid schedule: " + v.error);
  const int S = s.stages();
  Simulation sim;
  sim.ops.assign(static_cast<size_t>(s.p), {});
  std::map<std::tuple<int, int, int>, double> arrival;  // (is_grad, mb, destination stage)
  std::vector<size_t> pc(static_cast<size_t>(s.p), 0);
  std::vector<double> clock(static_cast<size_t>(s.p), 0), last_end(static_cast<size_t>(s.p), 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < s.p; ++r) {
      const auto& ops = s.ranks[static_cast<size_t>(r)];
      size_t& i = pc[static_cast<size_t>(r)];
      double& t = clock[static_cast<size_t>(r)];
      for (; i < ops.size(); ++i, progress = true) {
        const Op& o = ops[i];
        const int st = s.stage(r, o.chunk);
        if (o.kind == OpKind::send_act) arrival[{0, o.mb, st + 1}] = last_end[static_cast<size_t>(r)] + c.latency;
        if (o.kind == OpKind::send_grad) arrival[{1, o.mb, st - 1}] = last_end[static_cast<size_t>(r)] + c.latency;
        if (!is_compute(o.kind)) continue;
        double ready = t;
        std::tuple<int, int, int> key{-1, 0, 0};
        if (o.kind == OpKind::forward && st > 0) key = {0, o.mb, st};
        if ((o.kind == OpKind::backward || o.kind == OpKind::backward_input) && st < S - 1) key = {1, o.mb, st};
        if (std::get<0>(key) >= 0) {
          auto it = arrival.find(key);
          if (it == arrival.end()) break;  // its sender has not got there yet
          ready = std::max(ready, it->second);
        }
        Timed tm{o, ready, ready + c.op(o, r)};
        t = tm.end;
        last_end[static_cast<size_t>(r)] = tm.end;
        sim.ops[static_cast<size_t>(r)].push_back(tm);
      }
    }
  }
  for (int r = 0; r < s.p; ++r) sim.makespan = std::max(sim.makespan, clock[static_cast<size_t>(r)]);
  for (int r = 0; r < s.p; ++r) {
    double busy = 0;
    for (const Timed& t : sim.ops[static_cast<size_t>(r)]) busy += t.end - t.start;
    sim.busy.push_back(busy);
    sim.bubble.push_back(sim.makespan > 0 ? 1.0 - busy / sim.makespan : 0.0);
  }
  return sim;
}

double analytic_bubble(const Schedule& s, double f, double b, double w) {
  const double p = s.p, m = s.m, v = s.v;
  if (s.forward_only) return (p * v - 1) / (m + p * v - 1);
  if (s.name == "interleaved") return (p - 1) / (v * m + p - 1);
  if (s.name == "zb") {
    double idle = (p - 1) * (f + b - w);
    return idle / (m * (f + b + w) + idle);
  }
  return (p - 1) / (m + p - 1);
}

namespace {
char mb_char(int mb) {
  const char* digits = "0123456789abcdefghijklmnopqrstuvwxyz";
  return digits[mb % 36];
}
}  // namespace

std::string timeline_text(const Schedule& s, const Simulation& sim, int width) {
  std::string out;
  const double scale = sim.makespan > 0 ? width / sim.makespan : 0;
  for (int r = 0; r < s.p; ++r) {
    std::string line(static_cast<size_t>(width), '.');
    for (const Timed& t : sim.ops[static_cast<size_t>(r)]) {
      int a = static_cast<int>(std::lround(t.start * scale)), e = static_cast<int>(std::lround(t.end * scale));
      e = std::min(std::max(e, a + 1), width);
      char k = t.op.kind == OpKind::forward ? 'F' : t.op.kind == OpKind::backward_weight ? 'W' : 'B';
      if (t.op.chunk > 0) k = static_cast<char>(k - 'A' + 'a');
      for (int x = a; x < e; ++x) line[static_cast<size_t>(x)] = k;
      if (e - a >= 2) line[static_cast<size_t>(a)] = mb_char(t.op.mb);
    }
    out += fmt::format("rank {:>2} |{}| bubble {:5.1f}%\n", r, line, 100 * sim.bubble[static_cast<size_t>(r)]);
  }
  return out;
}

namespace {
// Width of `text` in the SVG's monospace font: 0.6 em per character (a
// slight overestimate for the usual monospace faces), so nothing is clipped.
double text_width(const std::string& text, double font_size) { return 0.6 * font_size * static_cast<double>(text.size()); }
}  // namespace

std::string timeline_svg(const Schedule& s, const Simulation& sim, const std::string& title) {
  const double font = 11, title_font = 14, plot_w = 900, row = 28, left = 70, top = 40, pad = 10;
  const double H = top + row * s.p + 50;
  const double scale = sim.makespan > 0 ? plot_w / sim.makespan : 0;
  // The legend names only what this schedule has: backward split into B and
  // W or not, no backward at all for forward-only, lighter chunks when v > 1.
  struct Entry {
    const char* fill;  // nullptr: text only
    std::string text;
  };
  std::vector<Entry> legend = {{"#3182bd", "forward (F)"}};
  if (!s.forward_only) {
    if (s.split_backward) {
      legend.push_back({"#31a354", "input gradient (B)"});
      legend.push_back({"#e6550d", "weight gradient (W)"});
    } else {
      legend.push_back({"#31a354", "backward (B)"});
    }
  }
  if (s.v > 1) legend.push_back({nullptr, "lighter: chunk 1, 3, ..."});
  legend.push_back({nullptr, "grey: idle"});
  double legend_w = 0;
  for (const Entry& e : legend) legend_w += (e.fill ? 16 : 0) + text_width(e.text, font) + 16;
  std::vector<std::string> labels;
  double label_w = 0;
  for (double b : sim.bubble) {
    labels.push_back(fmt::format("{:.1f}%", 100 * b));
    label_w = std::max(label_w, text_width(labels.back(), font));
  }
  const double W = std::ceil(std::max({left + plot_w + 4 + label_w + pad, pad + text_width(title, title_font) + pad,
                                       left + legend_w + pad}));
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"monospace\" "
      "font-size=\"{}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"20\" font-size=\"{}\">{}</text>\n",
      W, H, font, pad, title_font, title);
  for (int r = 0; r < s.p; ++r) {
    double y = top + row * r;
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\">rank {}</text>\n", pad, y + row * 0.6, r);
    out += fmt::format("<rect x=\"{}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#eeeeee\"/>\n", left,
                       y + 2, sim.makespan * scale, row - 4);
    for (const Timed& t : sim.ops[static_cast<size_t>(r)]) {
      const char* fill = t.op.kind == OpKind::forward           ? (t.op.chunk % 2 ? "#9ecae1" : "#3182bd")
                         : t.op.kind == OpKind::backward_weight ? (t.op.chunk % 2 ? "#fdd0a2" : "#e6550d")
                                                                : (t.op.chunk % 2 ? "#a1d99b" : "#31a354");
      double x = left + t.start * scale, w = std::max(0.5, (t.end - t.start) * scale);
      out += fmt::format("<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\" fill=\"{}\" "
                         "stroke=\"white\" stroke-width=\"0.5\"><title>{} mb {} chunk {}: {:.4g} - {:.4g}</title></rect>\n",
                         x, y + 2, w, row - 4, fill, op_name(t.op.kind), t.op.mb, t.op.chunk, t.start, t.end);
      const std::string mb = std::to_string(t.op.mb);
      if (w >= text_width(mb, font) + 4)
        out += fmt::format("<text x=\"{:.2f}\" y=\"{:.1f}\" fill=\"white\">{}</text>\n", x + 2, y + row * 0.6, mb);
    }
    out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n", left + sim.makespan * scale + 4, y + row * 0.6,
                       labels[static_cast<size_t>(r)]);
  }
  const double ly = top + row * s.p + 25;
  double x = left;
  for (const Entry& e : legend) {
    if (e.fill) {
      out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"12\" height=\"12\" fill=\"{}\"/>", x, ly - 10, e.fill);
      x += 16;
    }
    out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>", x, ly, e.text);
    x += text_width(e.text, font) + 16;
  }
  out += "\n</svg>\n";
  return out;
}

}  // namespace sy::pipe
