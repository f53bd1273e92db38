// pci: PciRoot, bus 0 of the guest and the firmware that sets it up.
//
// The root owns the 32 slots x 8 functions of bus 0 and answers the two ways
// a guest reaches config space: configuration mechanism #1 (ports 0xCF8-0xCFF,
// what early boot code and "pci=conf1" use) and ECAM (memory at
// layout::kEcamStart, 4 KiB per function, the only way to reach offsets >= 256).
// Both end up in the same config_read()/config_write(), so a device cannot
// behave differently depending on the path. Byte 0xCF9 inside the address
// dword is the PC reset control register: the root owns it and reports a reset
// request through a callback. The multi-function bit of each function's header
// type is the root's too: set exactly when the slot holds more than function 0.
//
// Before the guest runs, assign_resources() plays the part of firmware: it
// places every BAR in the windows of layout.h and routes INTx pins to GSIs, so
// the guest OS finds a fully configured bus and need not reassign anything.
#pragma once

#include "memory/layout.h"

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "bus/bus.h"
#include "pci/pci_device.h"

namespace passvm::pci {

inline constexpr int kSlots = 32;
inline constexpr int kFunctions = 8;

// One BAR placed by assign_resources(), kept for logs and the exit report.
struct BarAssignment {
  int slot;
  int func;
  int index;
  BarKind kind;
  uint64_t address;
  uint64_t size;
};

class PciRoot {
 public:
  // on_reset runs (on the vCPU thread) when the guest writes a reset to port 0xCF9.
  explicit PciRoot(std::function<void()> on_reset = {});
  PciRoot(const PciRoot&) = delete;
  PciRoot& operator=(const PciRoot&) = delete;

  // Plugs dev into bus 0 at slot/func. Throws std::invalid_argument when the slot is out of
  // range or already taken. The device must outlive the root.
  void add(int slot, int func, PciDevice* dev);
  PciDevice* device(int slot, int func) const;
  // Unplugs whatever sits at slot/func (nothing if empty). The caller makes sure no vCPU is in the
  // middle of a config access to it (the machine pauses them) before destroying the device.
  void remove(int slot, int func);

  // Config access to bus 0. Any size 1..8 and any alignment: accesses the device cannot
  // take in one piece (unaligned, 8 bytes) are split. Absent functions and other buses
  // read as all ones and ignore writes.
  uint64_t config_read(uint32_t bus, uint32_t slot, uint32_t func, uint32_t offset, int size);
  void config_write(uint32_t bus, uint32_t slot, uint32_t func, uint32_t offset, int size, uint64_t value);

  // Firmware: assigns every BAR and INTx GSI. Throws std::runtime_error naming the device and
  // the window when a window is exhausted or a device asks for an impossible BAR.
  void assign_resources(const layout::PciWindows& windows = {});
  const std::vector<BarAssignment>& assignments() const { return assignments_; }
  // Routes the INTx pin of the device at slot/func to its GSI, as assign_resources() does for every
  // device; for a device plugged in later (its BARs are the guest's to place).
  void route_intx(int slot, int func);

  // Register config_io() on the port bus at layout::kPciConfigAddrPort for 8 bytes, and
  // ecam() on the MMIO bus at layout::kEcamStart for layout::kEcamSize bytes.
  BusDevice& config_io() { return config_io_; }
  BusDevice& ecam() { return ecam_; }

 private:
  // The device an access of `size` bytes at `offset` goes to, or nullptr (other bus, empty slot,
  // size outside 1..8, or running past the 4 KiB config space).
  PciDevice* target(uint32_t bus, uint32_t slot, uint32_t func, uint32_t offset, int size) const;
  // A device sits at some function other than 0 of this slot.
  bool multi_function(uint32_t slot) const;

  class ConfigIo : public BusDevice {
   public:
    explicit ConfigIo(PciRoot& root) : root_(root) {}
    void read(uint64_t offset, std::span<uint8_t> data) override;
    void write(uint64_t offset, std::span<const uint8_t> data) override;

   private:
    PciRoot& root_;
    std::mutex lock_;
    uint32_t address_ = 0;
    uint8_t reset_control_ = 0;
  };

  class Ecam : public BusDevice {
   public:
    explicit Ecam(PciRoot& root) : root_(root) {}
    void read(uint64_t offset, std::span<uint8_t> data) override;
    void write(uint64_t offset, std::span<const uint8_t> data) override;

   private:
    PciRoot& root_;
  };

  std::function<void()> on_reset_;
  mutable std::mutex slots_lock_;
  std::array<PciDevice*, kSlots * kFunctions> devices_{};
  std::vector<BarAssignment> assignments_;
  ConfigIo config_io_{*this};
  Ecam ecam_{*this};
};

}  // namespace passvm::pci
