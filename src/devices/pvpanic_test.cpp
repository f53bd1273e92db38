#include "devices/pvpanic.h"

#include "bus/bus.h"

#include <gtest/gtest.h>

#include <array>

namespace passvm::devices {
namespace {

struct Guest {
  int panicked = 0, crash_loaded = 0;
  Pvpanic dev{[this] { panicked++; }, [this] { crash_loaded++; }};
  uint8_t in() {
    uint8_t b = 0xaa;
    dev.read(0, {&b, 1});
    return b;
  }
  void out(uint8_t v) { dev.write(0, {&v, 1}); }
};

TEST(Pvpanic, ReadSaysWhichEventsItUnderstands) {
  Guest g;
  // Linux keeps only the events both sides know: capability = PANICKED | CRASH_LOADED, masked by this read.
  EXPECT_EQ(g.in(), Pvpanic::kPanicked | Pvpanic::kCrashLoaded);
}

TEST(Pvpanic, OnThePortBusOnlyByteAccessesReachIt) {
  Guest g;
  Bus pio("port I/O");
  pio.add(0x505, Pvpanic::kSize, &g.dev);
  uint8_t b = 0;
  ASSERT_TRUE(pio.read(0x505, {&b, 1}));
  EXPECT_EQ(b, 3);
  std::array<uint8_t, 2> wide{};
  EXPECT_FALSE(pio.read(0x505, wide)) << "a word access is wider than the one-byte port";
  const std::array<uint8_t, 2> word{Pvpanic::kPanicked, 0};
  EXPECT_FALSE(pio.write(0x505, word));
  EXPECT_EQ(g.panicked, 0);
  const uint8_t panicked = Pvpanic::kPanicked;
  ASSERT_TRUE(pio.write(0x505, {&panicked, 1}));
  EXPECT_EQ(g.panicked, 1);
}

TEST(Pvpanic, PanicIsReportedOnce) {
  Guest g;
  g.out(Pvpanic::kPanicked);
  g.out(Pvpanic::kPanicked);
  EXPECT_EQ(g.panicked, 1);
  EXPECT_EQ(g.crash_loaded, 0);
  EXPECT_EQ(g.dev.events(), Pvpanic::kPanicked);
}

TEST(Pvpanic, CrashLoadedIsNotAPanicToStopFor) {
  Guest g;
  g.out(Pvpanic::kCrashLoaded);
  EXPECT_EQ(g.crash_loaded, 1);
  EXPECT_EQ(g.panicked, 0);
  g.out(Pvpanic::kPanicked | Pvpanic::kCrashLoaded);
  EXPECT_EQ(g.panicked, 0) << "a guest with a crash kernel must be left to run it";
  EXPECT_EQ(g.crash_loaded, 1);
  g.out(Pvpanic::kPanicked);  // the crash kernel panicked too
  EXPECT_EQ(g.panicked, 1);
}

TEST(Pvpanic, UnknownBitsAndOffsetsAreIgnored) {
  Guest g;
  g.out(0xfc);  // bit 2 (a shutdown request in newer guests) and above: not offered by the read above
  EXPECT_EQ(g.panicked + g.crash_loaded, 0);
  EXPECT_EQ(g.dev.events(), 0);
  uint8_t v = Pvpanic::kPanicked;
  g.dev.write(1, {&v, 1});
  EXPECT_EQ(g.panicked, 0);
  g.out(0xfd);  // PANICKED among unknown bits still counts
  EXPECT_EQ(g.panicked, 1);
}

}  // namespace
}  // namespace passvm::devices
