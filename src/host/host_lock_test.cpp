#include "host/host_lock.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "host/host_error.h"
#include "testing/fake_sysfs.h"

namespace passvm::host {
namespace {

using namespace std::chrono_literals;

// A second reserve or release waits for the first, and after its wait names who holds the lock.
TEST(HostLock, ASecondHolderWaitsAndThenNamesTheFirst) {
  testing::FakeSysfs fake;
  fake.write("/proc/" + std::to_string(getpid()) + "/cmdline", std::string("passvm-host\0reserve\0--boot-claim\0", 34));
  std::optional<HostLock> first;
  first.emplace(fake.sysroot());
  try {
    HostLock second(fake.sysroot(), 100ms);
    FAIL() << "two holders at once";
  } catch (const HostError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("process " + std::to_string(getpid()) + " (passvm-host reserve --boot-claim)"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("/run/passvm/lock is locked"), std::string::npos) << msg;
  }
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    HostLock second(fake.sysroot(), 10s);
    got = true;
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(got) << "the second took the lock while the first held it";
  first.reset();
  waiter.join();
  EXPECT_TRUE(got);
}

}  // namespace
}  // namespace passvm::host
