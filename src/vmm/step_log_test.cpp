// StepLog::process_age_ms reads this process's start time from /proc.
#include "vmm/step_log.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace passvm {
namespace {

TEST(StepLogTest, ProcessAgeGrowsWithTheClock) {
  double first = StepLog::process_age_ms();
  ASSERT_GE(first, 0) << "the start time in /proc/self/stat was not read";
  // This process started moments ago; the machine, minutes ago or more: a wrong field reads as its uptime
  // or as nonsense.
  EXPECT_LT(first, 60e3) << "the wrong field of /proc/self/stat was read";
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  double second = StepLog::process_age_ms();
  // The start time is fixed, so the difference is the sleep, measured by the boot clock.
  EXPECT_GE(second - first, 59);
  EXPECT_LT(second - first, 5000);
}

}  // namespace
}  // namespace passvm
