// devices: AcpiPm, the ACPI fixed-hardware PM1a event and control blocks.
//
// The FADT points the guest here (layout::kAcpiPm1aEvt, 4 bytes of status and
// enable; layout::kAcpiPm1aCnt, 2 bytes of control; one range of 6 bytes from
// layout::kAcpiPmBase). Linux powers off by writing SLP_EN with the sleep type
// the DSDT's \_S5 package declares (kS5SleepType): that calls on_poweroff.
// The host can press the power button (a clean shutdown request): the SCI is
// raised while an enabled status bit is set.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "bus/bus.h"

namespace passvm::devices {

// SLP_TYP for S5 (soft off). The DSDT's \_S5 package and this device must agree.
inline constexpr uint8_t kS5SleepType = 5;

inline constexpr uint16_t kPm1StsPwrbtn = 1u << 8;
inline constexpr uint16_t kPm1StsWake = 1u << 15;
inline constexpr uint16_t kPm1CntSciEn = 1u << 0;
inline constexpr uint16_t kPm1CntSlpEn = 1u << 13;
inline constexpr int kPm1CntSlpTypShift = 10;

class AcpiPm : public BusDevice {
 public:
  static constexpr uint64_t kSize = 6;  // PM1a_EVT_BLK (4) followed by PM1a_CNT_BLK (2)

  AcpiPm(std::function<void()> on_poweroff, std::function<void(bool level)> sci = {});

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Sets PWRBTN_STS: the guest sees a power button press (SCI if it enabled PWRBTN_EN).
  void press_power_button();

 private:
  uint8_t byte_at(uint64_t offset) const;
  void update_sci();  // with lock_ held

  std::function<void()> on_poweroff_;
  std::function<void(bool)> sci_;
  std::mutex lock_;
  uint16_t status_ = 0, enable_ = 0;
  uint16_t control_ = kPm1CntSciEn;  // no SMI_CMD: the machine is always in ACPI mode
  bool sci_level_ = false;
};

}  // namespace passvm::devices
