#include "devices/acpi_pm.h"

namespace passvm::devices {

namespace {
constexpr uint16_t kStatusBits = 0x8731;   // TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK
constexpr uint16_t kEnableBits = 0x0721;   // TMR, GBL, PWRBTN, SLPBTN, RTC
constexpr uint16_t kControlWritable = 0x1c06;  // BM_RLD, GBL_RLS, SLP_TYP (SCI_EN is fixed, SLP_EN reads 0)
}  // namespace

AcpiPm::AcpiPm(std::function<void()> on_poweroff, std::function<void(bool)> sci)
    : on_poweroff_(std::move(on_poweroff)), sci_(std::move(sci)) {}

uint8_t AcpiPm::byte_at(uint64_t offset) const {
  static_assert(kSize == 12 && kGpe0Offset == 8);
  uint16_t regs[6] = {status_, enable_, control_, 0, gpe_status_, gpe_enable_};
  uint16_t reg = regs[offset / 2];
  return static_cast<uint8_t>(reg >> (8 * (offset % 2)));
}

void AcpiPm::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard g(lock_);
  for (size_t i = 0; i < data.size(); i++) data[i] = offset + i < kSize ? byte_at(offset + i) : 0xff;
}

void AcpiPm::write(uint64_t offset, std::span<const uint8_t> data) {
  bool poweroff = false;
  {
    std::lock_guard g(lock_);
    // Gather the access per 16-bit register, so a word write acts once with both bytes.
    uint16_t value[6] = {}, mask[6] = {};
    for (size_t i = 0; i < data.size(); i++) {
      uint64_t at = offset + i;
      if (at >= kSize) break;
      value[at / 2] = static_cast<uint16_t>(value[at / 2] | data[i] << (8 * (at % 2)));
      mask[at / 2] = static_cast<uint16_t>(mask[at / 2] | 0xff << (8 * (at % 2)));
    }
    status_ = static_cast<uint16_t>(status_ & ~(value[0] & mask[0] & kStatusBits));  // write one to clear
    enable_ = static_cast<uint16_t>((enable_ & ~mask[1]) | (value[1] & mask[1] & kEnableBits));
    uint16_t cm = mask[2] & kControlWritable;
    control_ = static_cast<uint16_t>((control_ & ~cm) | (value[2] & cm));
    gpe_status_ = static_cast<uint16_t>(gpe_status_ & ~(value[4] & mask[4]));
    gpe_enable_ = static_cast<uint16_t>((gpe_enable_ & ~mask[5]) | (value[5] & mask[5]));
    if ((mask[2] & kPm1CntSlpEn) && (value[2] & kPm1CntSlpEn)) {
      auto type = static_cast<uint8_t>((control_ >> kPm1CntSlpTypShift) & 7);
      poweroff = type == kS5SleepType;
    }
    update_sci();
  }
  if (poweroff && on_poweroff_) on_poweroff_();
}

bool AcpiPm::press_power_button() {
  std::lock_guard g(lock_);
  status_ |= kPm1StsPwrbtn;
  update_sci();
  return (enable_ & kPm1StsPwrbtn) != 0;
}

void AcpiPm::raise_gpe(unsigned gpe) {
  std::lock_guard g(lock_);
  if (gpe < 16) gpe_status_ = static_cast<uint16_t>(gpe_status_ | 1u << gpe);
  update_sci();
}

void AcpiPm::update_sci() {
  bool level = (control_ & kPm1CntSciEn) && ((status_ & enable_ & kEnableBits) || (gpe_status_ & gpe_enable_));
  if (level == sci_level_) return;
  sci_level_ = level;
  if (sci_) sci_(level);
}

}  // namespace passvm::devices
