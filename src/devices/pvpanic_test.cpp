#include "devices/pvpanic.h"

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
  std::array<uint8_t, 4> wide{0xff, 0xff, 0xff, 0xff};
  g.dev.read(0, wide);
  EXPECT_EQ(wide, (std::array<uint8_t, 4>{3, 0, 0, 0})) << "a wider read has the events in its first byte";
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
