#include "devices/cmos_rtc.h"

#include <gtest/gtest.h>

namespace passvm::devices {
namespace {

struct Rtc {
  std::time_t now;
  CmosRtc rtc{[this] { return now; }};
  uint8_t get(uint8_t index) {
    rtc.write(0, {&index, 1});
    uint8_t v = 0;
    rtc.read(1, {&v, 1});
    return v;
  }
  void set(uint8_t index, uint8_t value) {
    rtc.write(0, {&index, 1});
    rtc.write(1, {&value, 1});
  }
};

// 2026-11-24 21:07:09 UTC, a Tuesday.
constexpr std::time_t kWhen = 1795554429;

TEST(CmosRtc, ReportsHostTimeInBcd24Hour) {
  Rtc r{kWhen};
  EXPECT_EQ(r.get(0x00), 0x09);
  EXPECT_EQ(r.get(0x02), 0x07);
  EXPECT_EQ(r.get(0x04), 0x21);
  EXPECT_EQ(r.get(0x06), 0x03) << "Tuesday: Sunday is 1";
  EXPECT_EQ(r.get(0x07), 0x24);
  EXPECT_EQ(r.get(0x08), 0x11);
  EXPECT_EQ(r.get(0x09), 0x26);
  EXPECT_EQ(r.get(kCmosCenturyRegister), 0x20);
  EXPECT_EQ(r.get(0x0b) & 0x06, 0x02) << "24-hour, BCD";
  EXPECT_EQ(r.get(0x0d) & 0x80, 0x80) << "battery good";
}

TEST(CmosRtc, UpdateInProgressIsNeverSetAndTimeFollowsTheClock) {
  Rtc r{kWhen};
  for (int i = 0; i < 1000; i++) {
    r.now = kWhen + i;
    ASSERT_EQ(r.get(0x0a) & 0x80, 0);
  }
  r.now = kWhen + 60;
  EXPECT_EQ(r.get(0x02), 0x08);
}

TEST(CmosRtc, BinaryAnd12HourFormatsFollowStatusB) {
  Rtc r{kWhen};
  r.set(0x0b, 0x04);  // binary, 12-hour
  EXPECT_EQ(r.get(0x00), 9);
  EXPECT_EQ(r.get(0x04), 0x80 | 9) << "9 PM";
  r.set(0x0b, 0x00);  // BCD, 12-hour
  EXPECT_EQ(r.get(0x04), 0x80 | 0x09);
}

TEST(CmosRtc, TimeWritesIgnoredRamWritesKept) {
  Rtc r{kWhen};
  r.set(0x00, 0x45);
  EXPECT_EQ(r.get(0x00), 0x09);
  r.set(0x40, 0x5a);
  EXPECT_EQ(r.get(0x40), 0x5a);
  r.set(0x80 | 0x41, 0x77);  // NMI-mask bit in the index is not part of the address
  EXPECT_EQ(r.get(0x41), 0x77);
}

}  // namespace
}  // namespace passvm::devices
