// pci: PciHotplug, the registers behind the DSDT's ACPI PCI hotplug methods.
//
// Three dwords at layout::kPciHotplugPort, as the DSDT's PCST region names them:
//   PCIU  slots that gained a device since the guest last looked (cleared by the read)
//   PCID  slots whose device the host wants back (until the guest ejects it)
//   B0EJ  written by the guest's _EJ0: the slots it has let go of
// plug() and unplug_request() set a bit and raise the hotplug GPE, which makes
// the guest run \_GPE._E01 -> PCNT and notify the slots. An eject is only
// reported (on the vCPU thread that wrote B0EJ) through on_eject: tearing the
// device down is the machine's job, on its own thread, with the vCPUs paused.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "bus/bus.h"

namespace passvm::pci {

class PciHotplug : public BusDevice {
 public:
  static constexpr uint64_t kSize = 12;

  // raise_gpe is called (without this device's lock) whenever a bit is set; on_eject once per slot
  // the guest ejects. Both may run on any thread.
  PciHotplug(std::function<void()> raise_gpe, std::function<void(int slot)> on_eject);

  void plug(int slot);            // a device is in the slot now: the guest should scan it
  void unplug_request(int slot);  // the guest should let go of the slot's device and eject it
  bool unplug_pending(int slot) const;  // asked and not yet ejected

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  std::function<void()> raise_gpe_;
  std::function<void(int)> on_eject_;
  mutable std::mutex lock_;
  uint32_t up_ = 0, down_ = 0;
};

}  // namespace passvm::pci
