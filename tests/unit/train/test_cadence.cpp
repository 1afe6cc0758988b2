// The trainer's small parts: when a step ends in a save or a stop, signals
// as requests, and the metrics writer's helpers.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/run.h"
#include "testing.h"
#include "train/cadence.h"
#include "train/metrics.h"
#include "train/signals.h"

namespace sy {
namespace {

RunConfig config(const std::vector<std::string>& overrides) {
  return parse_config(default_config_text(), "t", overrides);
}

TEST(Cadence, SavesEveryIntervalAndAtTheEnd) {
  RunConfig c = config({"train.steps=10", "checkpoint.interval=4", "checkpoint.at_end=false"});
  for (int64_t i = 0; i < 10; ++i) {
    const bool last = i + 1 == 10;
    StepEnd e = step_end(c, i, last, {});
    EXPECT_EQ(e.save, (i + 1) % 4 == 0 || last) << i;  // an interval saves the last step too
    EXPECT_FALSE(e.stop) << i;
  }
  RunConfig none = config({"train.steps=10", "checkpoint.interval=0", "checkpoint.at_end=false"});
  EXPECT_FALSE(step_end(none, 9, true, {}).save);
  RunConfig at_end = config({"train.steps=10", "checkpoint.interval=0", "checkpoint.at_end=true"});
  EXPECT_FALSE(step_end(at_end, 8, false, {}).save);
  EXPECT_TRUE(step_end(at_end, 9, true, {}).save);
}

TEST(Cadence, SignalsAndStopAfterSaveThenStop) {
  RunConfig c = config({"train.steps=10", "checkpoint.interval=0", "checkpoint.at_end=false"});
  StepEnd save = step_end(c, 2, false, {1, 0});
  EXPECT_TRUE(save.save);
  EXPECT_FALSE(save.stop);
  StepEnd stop = step_end(c, 2, false, {0, 1});
  EXPECT_TRUE(stop.save && stop.stop && !stop.planned_stop);
  RunConfig after = config({"train.steps=10", "train.stop_after=3", "checkpoint.interval=0", "checkpoint.at_end=false"});
  EXPECT_FALSE(step_end(after, 1, false, {}).stop);
  StepEnd planned = step_end(after, 2, false, {});
  EXPECT_TRUE(planned.save && planned.stop && planned.planned_stop);
  EXPECT_FALSE(step_end(after, 9, true, {}).stop);  // the last step is the end anyway, not a stop
}

TEST(Signals, ArriveAsRequestsTakenOnce) {
  SignalScope scope;
  take_signal_flags();  // nothing left over from elsewhere
  std::raise(SIGUSR1);
  SignalFlags f = take_signal_flags();
  EXPECT_EQ(f.save, 1);
  EXPECT_EQ(f.stop, 0);
  std::raise(SIGUSR2);
  f = take_signal_flags();
  EXPECT_EQ(f.save, 0);
  EXPECT_EQ(f.stop, 1);
  f = take_signal_flags();
  EXPECT_EQ(f.save + f.stop, 0);
}

TEST(Metrics, HumanUnitsAndAppendAfterACutLine) {
  EXPECT_EQ(human_count(1234), "1.2k");
  EXPECT_EQ(human_count(2.5e6), "2.50M");
  EXPECT_EQ(human_time(3725), "1h02m");
  EXPECT_EQ(human_time(-1), "?");
  const std::string path = (std::filesystem::temp_directory_path() / fmt::format("sy_metrics_{}.jsonl", getpid())).string();
  { std::ofstream(path) << "{\"step\": 1}\n{\"cut"; }
  {
    MetricsWriter w;
    w.open(path);
    w.write_line("{\"event\": \"resume\"}");
  }
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(all, "{\"step\": 1}\n{\"cut\n{\"event\": \"resume\"}\n");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace sy
