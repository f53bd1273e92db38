// devices: AcpiPm, the ACPI fixed-hardware PM1a event and control blocks.
//
// The FADT points the guest here (layout::kAcpiPm1aEvt, 4 bytes of status and
// enable; layout::kAcpiPm1aCnt, 2 bytes of control; one range of 6 bytes from
// layout::kAcpiPmBase). Linux powers off by writing SLP_EN with the sleep type
// the DSDT's \_S5 package declares (kS5SleepType): that calls on_poweroff.
// The host can press the power button (a clean shutdown request): the SCI is
// raised while an enabled status bit is set. Behind them sits GPE0 (layout::
// kAcpiGpe0, 2 bytes of status and 2 of enable, 16 general-purpose events):
// raise_gpe(n) sets a status bit and the guest runs the DSDT's \_GPE._Enn
// method for it (PCI hotplug uses kGpePciHotplug).
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
inline constexpr unsigned kGpePciHotplug = 1;  // \_GPE._E01 scans the hotplug slots

class AcpiPm : public BusDevice {
 public:
  // PM1a_EVT_BLK (4), PM1a_CNT_BLK (2), two bytes unused, GPE0_BLK (4).
  static constexpr uint64_t kSize = 12;
  static constexpr uint64_t kGpe0Offset = 8;
  static constexpr uint8_t kGpe0Length = 4;

  AcpiPm(std::function<void()> on_poweroff, std::function<void(bool level)> sci = {});

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Sets PWRBTN_STS: the guest sees a power button press (SCI if it enabled PWRBTN_EN). Returns whether
  // it had enabled it: an OS without a power button driver (Linux without its `button` module) leaves
  // PWRBTN_EN clear and sees nothing until it enables it.
  bool press_power_button();
  // Sets GPE0 status bit `gpe` (< 16): an SCI once the guest enabled it.
  void raise_gpe(unsigned gpe);

 private:
  uint8_t byte_at(uint64_t offset) const;
  void update_sci();  // with lock_ held

  std::function<void()> on_poweroff_;
  std::function<void(bool)> sci_;
  std::mutex lock_;
  uint16_t status_ = 0, enable_ = 0;
  uint16_t gpe_status_ = 0, gpe_enable_ = 0;
  uint16_t control_ = kPm1CntSciEn;  // no SMI_CMD: the machine is always in ACPI mode
  bool sci_level_ = false;
};

}  // namespace passvm::devices
