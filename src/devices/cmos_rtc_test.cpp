#include "devices/cmos_rtc.h"

#include <gtest/gtest.h>

#include <vector>

namespace passvm::devices {
namespace {

using namespace std::chrono_literals;

struct Rtc {
  explicit Rtc(std::time_t t) : now(t) {}
  std::time_t now;
  std::chrono::microseconds into_second{0};  // how far the clock is into its second `now`
  std::vector<bool> line;  // every change of the interrupt line, in order
  CmosRtc rtc{[this] { return std::chrono::system_clock::from_time_t(now) + into_second; },
              [this](bool level) { line.push_back(level); }};
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

TEST(CmosRtc, TimeFollowsTheClock) {
  Rtc r{kWhen};
  r.now = kWhen + 60;
  EXPECT_EQ(r.get(0x02), 0x08);
}

// UIP is set in the last 2 ms of each second: read clear, the time registers hold for that long.
TEST(CmosRtc, UpdateInProgressLeadsEachSecond) {
  Rtc r{kWhen};
  for (auto [at, uip] : {std::pair{0us, false}, {500000us, false}, {997999us, false}, {998000us, true},
                         {999999us, true}}) {
    r.into_second = at;
    EXPECT_EQ(r.get(0x0a) & 0x80, uip ? 0x80 : 0) << at.count() << " us into the second";
    EXPECT_EQ(r.get(0x0a) & 0x7f, 0x26) << "the divider bits stay";
  }
  r.set(0x0b, 0x82);  // SET: the guest is setting the time, the update cycle stops
  EXPECT_EQ(r.get(0x0a) & 0x80, 0);
}

// How hwclock --directisa and Linux before 5.19 read the time: wait for UIP's falling edge (or see it
// clear), then read every register. Polled through the turn of an hour, the reads never mix two seconds.
TEST(CmosRtc, ReadsAfterUipClearsAreOneConsistentTime) {
  constexpr std::time_t kLastSecond = kWhen + 2 * 3600 + 52 * 60 + 50;  // 23:59:59 UTC
  Rtc r{kLastSecond};
  ASSERT_EQ(r.get(0x04), 0x23);
  ASSERT_EQ(r.get(0x02), 0x59);
  bool seen_uip = false;
  for (auto t = 990000us; t < 1010000us; t += 100us) {
    r.now = kLastSecond + (t >= 1s ? 1 : 0);
    r.into_second = t >= 1s ? t - 1s : t;
    const bool uip = r.get(0x0a) & 0x80;
    if (uip) {
      seen_uip = true;
      continue;
    }
    if (!seen_uip) continue;
    // The falling edge: the update ended, and the registers show the new second.
    EXPECT_EQ(r.get(0x00), 0x00);
    EXPECT_EQ(r.get(0x02), 0x00);
    EXPECT_EQ(r.get(0x04), 0x00);
    EXPECT_EQ(r.get(0x07), 0x25) << "the next day";
    return;
  }
  FAIL() << "UIP never rose and fell around the turn of the second";
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

constexpr uint8_t kA = 0x0a, kB = 0x0b, kC = 0x0c;

TEST(CmosRtc, UpdateInterruptFollowsTheSecondAndEndsWithStatusCRead) {
  Rtc r{kWhen};
  r.set(kB, 0x12);  // UIE, 24-hour BCD
  r.rtc.tick();
  EXPECT_TRUE(r.line.empty()) << "no second has ended yet";
  r.now++;
  r.rtc.tick();
  ASSERT_EQ(r.line, std::vector<bool>{true});
  r.now++;
  r.rtc.tick();
  EXPECT_EQ(r.line.size(), 1u) << "the line stays asserted until status C is read: no second edge";
  EXPECT_EQ(r.get(kC), 0x90) << "IRQF and UF";
  EXPECT_EQ(r.line, (std::vector<bool>{true, false}));
  EXPECT_EQ(r.get(kC), 0x00) << "reading status C cleared it";
  r.now++;
  r.rtc.tick();
  EXPECT_EQ(r.line, (std::vector<bool>{true, false, true})) << "the next second is a new interrupt";
}

TEST(CmosRtc, FlagsWithoutTheirEnableRaiseNothing) {
  Rtc r{kWhen};
  r.now++;
  r.rtc.tick();
  EXPECT_TRUE(r.line.empty());
  EXPECT_EQ(r.get(kC), 0x10) << "UF is set every second, IRQF only for an enabled flag";
}

TEST(CmosRtc, AlarmRaisesAtItsTimeInTheGuestsFormat) {
  Rtc r{kWhen};  // 21:07:09
  r.set(0x01, 0x11);
  r.set(0x03, 0x07);
  r.set(0x05, 0x21);
  r.get(kC);
  r.set(kB, 0x22);  // AIE, 24-hour BCD
  r.now = kWhen + 1;
  r.rtc.tick();
  EXPECT_TRUE(r.line.empty()) << "21:07:10 is not the alarm";
  EXPECT_EQ(r.get(kC), 0x10);
  r.now = kWhen + 2;
  r.rtc.tick();
  ASSERT_EQ(r.line, std::vector<bool>{true});
  EXPECT_EQ(r.get(kC), 0xb0) << "IRQF, AF and UF";

  // Binary, 12-hour: 9 PM is 0x89.
  Rtc b{kWhen};
  b.set(kB, 0x24);  // AIE, binary, 12-hour
  b.set(0x01, 10);
  b.set(0x03, 7);
  b.set(0x05, 0x80 | 9);
  b.now = kWhen + 1;
  b.rtc.tick();
  EXPECT_EQ(b.line, std::vector<bool>{true});
}

TEST(CmosRtc, AnAlarmInSecondsALateTickPassedOverStillFires) {
  Rtc r{kWhen};  // 21:07:09
  r.set(0x01, 0x11);
  r.set(0x03, 0x07);
  r.set(0x05, 0x21);
  r.set(kB, 0x22);  // AIE
  r.now = kWhen + 4;  // 21:07:13: the tick at :11 never came
  r.rtc.tick();
  EXPECT_EQ(r.line, std::vector<bool>{true});
  EXPECT_EQ(r.get(kC), 0xb0);
  r.now = kWhen + 3 * 86400;  // days later: the alarm time passed, once
  r.rtc.tick();
  EXPECT_EQ(r.get(kC), 0xb0);
  r.set(0x05, 0x22);  // 22:07:11, an hour after the time the clock now shows
  r.now += 60;
  r.rtc.tick();
  EXPECT_EQ(r.get(kC), 0x10) << "only UF: the hour differs";
}

TEST(CmosRtc, SetStopsUpdatesAndClearsTheUpdateInterrupt) {
  Rtc r{kWhen};
  r.set(kB, 0x12);  // UIE
  r.set(kB, 0x92);  // SET, as Linux does around writing the time
  EXPECT_EQ(r.get(kB) & 0x10, 0) << "SET clears UIE";
  r.now++;
  r.rtc.tick();
  EXPECT_EQ(r.get(kC), 0x00) << "no update cycle while SET";
  r.set(kB, 0x22);  // SET off, AIE on
  r.now++;
  r.rtc.tick();
  EXPECT_EQ(r.get(kC), 0x10);
  EXPECT_TRUE(r.line.empty());
}

TEST(CmosRtc, ClearingAieLowersTheLine) {
  Rtc r{kWhen};
  r.set(0x01, 0xc0);
  r.set(0x03, 0xc0);
  r.set(0x05, 0xc0);  // every second
  r.set(kB, 0x22);
  r.now++;
  r.rtc.tick();
  r.set(kB, 0x02);
  EXPECT_EQ(r.line, (std::vector<bool>{true, false}));
}

TEST(CmosRtc, AlarmBytesFromC0MatchEveryValue) {
  Rtc r{kWhen};
  r.set(0x01, 0x30);  // second 30 of every minute of every hour
  r.set(0x03, 0xc0);
  r.set(0x05, 0xff);
  r.set(kB, 0x22);
  for (int i = 1; i <= 21; i++) {
    r.now = kWhen + i;  // up to 21:07:30
    r.rtc.tick();
  }
  EXPECT_EQ(r.line, std::vector<bool>{true});
  r.get(kC);
  r.now = kWhen + 81;  // 21:08:30
  r.rtc.tick();
  EXPECT_EQ(r.line, (std::vector<bool>{true, false, true}));
}

TEST(CmosRtc, EnablingAPendingFlagAssertsTheLineAndDisablingItDeasserts) {
  Rtc r{kWhen};
  r.now++;
  r.rtc.tick();  // UF pending, UIE off
  r.set(kB, 0x12);
  EXPECT_EQ(r.line, std::vector<bool>{true});
  r.set(kB, 0x02);
  EXPECT_EQ(r.line, (std::vector<bool>{true, false}));
  EXPECT_EQ(r.get(kC), 0x10) << "IRQF follows the enables: clear once UIE is off";
  EXPECT_EQ(r.get(kA) & 0x80, 0);
}

}  // namespace
}  // namespace passvm::devices
