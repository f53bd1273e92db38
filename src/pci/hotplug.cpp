#include "pci/hotplug.h"

namespace passvm::pci {

PciHotplug::PciHotplug(std::function<void()> raise_gpe, std::function<void(int)> on_eject)
    : raise_gpe_(std::move(raise_gpe)), on_eject_(std::move(on_eject)) {}

void PciHotplug::plug(int slot) {
  {
    std::lock_guard g(lock_);
    up_ |= 1u << slot;
    down_ &= ~(1u << slot);
  }
  if (raise_gpe_) raise_gpe_();
}

void PciHotplug::unplug_request(int slot) {
  {
    std::lock_guard g(lock_);
    down_ |= 1u << slot;
  }
  if (raise_gpe_) raise_gpe_();
}

bool PciHotplug::unplug_pending(int slot) const {
  std::lock_guard g(lock_);
  return down_ & (1u << slot);
}

void PciHotplug::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard g(lock_);
  // The registers are dwords; a narrower read sees the bytes it covers. Reading a byte of PCIU clears
  // what it returned (the guest reads it once per GPE, and a slot it saw must not be scanned twice), and
  // only that: a byte read alone must not lose the others' slots.
  uint32_t seen_up = 0;
  for (size_t i = 0; i < data.size(); i++) {
    uint64_t at = offset + i;
    uint32_t reg = at < 4 ? up_ : at < 8 ? down_ : 0;
    if (at < 4) seen_up |= 0xffu << (8 * at);
    data[i] = at < kSize ? static_cast<uint8_t>(reg >> (8 * (at % 4))) : uint8_t{0xff};
  }
  up_ &= ~seen_up;
}

void PciHotplug::write(uint64_t offset, std::span<const uint8_t> data) {
  uint32_t ejected = 0;
  {
    std::lock_guard g(lock_);
    for (size_t i = 0; i < data.size(); i++) {
      uint64_t at = offset + i;
      if (at >= 8 && at < kSize) ejected |= uint32_t{data[i]} << (8 * (at % 4));
    }
    down_ &= ~ejected;
    up_ &= ~ejected;
  }
  for (int slot = 0; slot < 32; slot++)
    if ((ejected & (1u << slot)) && on_eject_) on_eject_(slot);
}

}  // namespace passvm::pci
