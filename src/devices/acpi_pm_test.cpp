#include "devices/acpi_pm.h"

#include <gtest/gtest.h>

#include <vector>

namespace passvm::devices {
namespace {

struct Pm {
  int poweroffs = 0;
  std::vector<bool> sci;
  AcpiPm pm{[this] { poweroffs++; }, [this](bool l) { sci.push_back(l); }};
  uint16_t in16(uint64_t off) {
    uint8_t b[2];
    pm.read(off, b);
    return static_cast<uint16_t>(b[0] | b[1] << 8);
  }
  void out16(uint64_t off, uint16_t v) {
    uint8_t b[2] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
    pm.write(off, b);
  }
};

constexpr uint64_t kSts = 0, kEn = 2, kCnt = 4;

TEST(AcpiPm, S5SleepPowersOff) {
  Pm p;
  EXPECT_EQ(p.in16(kCnt) & kPm1CntSciEn, kPm1CntSciEn) << "always in ACPI mode";
  p.out16(kCnt, static_cast<uint16_t>(kS5SleepType << kPm1CntSlpTypShift));  // type without SLP_EN
  EXPECT_EQ(p.poweroffs, 0);
  p.out16(kCnt, static_cast<uint16_t>(kS5SleepType << kPm1CntSlpTypShift | kPm1CntSlpEn));
  EXPECT_EQ(p.poweroffs, 1);
  EXPECT_EQ(p.in16(kCnt) & kPm1CntSlpEn, 0) << "SLP_EN reads as zero";
}

TEST(AcpiPm, OtherSleepTypesDoNotPowerOff) {
  Pm p;
  for (int type : {0, 1, 3, 7}) p.out16(kCnt, static_cast<uint16_t>(type << kPm1CntSlpTypShift | kPm1CntSlpEn));
  EXPECT_EQ(p.poweroffs, 0);
}

TEST(AcpiPm, ByteWritesToControlHighByteWork) {
  Pm p;
  uint8_t hi = static_cast<uint8_t>((kS5SleepType << kPm1CntSlpTypShift | kPm1CntSlpEn) >> 8);
  p.pm.write(kCnt + 1, {&hi, 1});
  EXPECT_EQ(p.poweroffs, 1);
}

TEST(AcpiPm, PowerButtonRaisesSciWhenEnabledAndStatusIsWriteOneToClear) {
  Pm p;
  EXPECT_FALSE(p.pm.press_power_button()) << "the guest has not enabled the event";
  EXPECT_TRUE(p.sci.empty()) << "not enabled yet";
  EXPECT_EQ(p.in16(kSts) & kPm1StsPwrbtn, kPm1StsPwrbtn);
  p.out16(kEn, kPm1StsPwrbtn);
  EXPECT_EQ(p.in16(kEn), kPm1StsPwrbtn);
  ASSERT_EQ(p.sci, std::vector<bool>{true});
  p.out16(kSts, 0);  // writing zero clears nothing
  EXPECT_EQ(p.in16(kSts) & kPm1StsPwrbtn, kPm1StsPwrbtn);
  p.out16(kSts, kPm1StsPwrbtn);
  EXPECT_EQ(p.in16(kSts) & kPm1StsPwrbtn, 0);
  EXPECT_EQ(p.sci, (std::vector<bool>{true, false}));
  EXPECT_TRUE(p.pm.press_power_button()) << "enabled now";
  EXPECT_EQ(p.sci, (std::vector<bool>{true, false, true}));
}

}  // namespace
}  // namespace passvm::devices
