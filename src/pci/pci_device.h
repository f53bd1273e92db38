// pci: the guest's PCI model.
//
// PciDevice is what sits in a slot of the virtual bus (root.h): the host bridge,
// a passthrough device, any emulated device. The root forwards every config
// access (mechanism #1 and ECAM alike) as (offset, size) to the device; what
// the device does with BARs, capabilities and the command register is its own
// business. Before the guest starts, the root plays firmware: it asks each
// device for its BARs, assigns addresses from the windows in layout.h and
// programs them through assign_bar(), and tells the device its INTx GSI.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace passvm::pci {

enum class BarKind { Io, Mmio32, Mmio64 };

// BarRequest index of the expansion ROM (config offset 0x30): 32-bit memory, read-only.
inline constexpr int kRomBarIndex = 6;

struct BarRequest {
  int index;  // 0..5; a 64-bit BAR takes index and index+1; kRomBarIndex for the expansion ROM
  BarKind kind;
  uint64_t size;  // power of two
  bool prefetchable;
};

class PciDevice {
 public:
  virtual ~PciDevice() = default;

  // offset < 4096, size 1, 2 or 4, offset aligned to size.
  virtual uint32_t config_read(uint32_t offset, int size) = 0;
  virtual void config_write(uint32_t offset, int size, uint32_t value) = 0;

  virtual std::vector<BarRequest> bar_requests() const = 0;
  // Called once per BarRequest before the guest runs, as firmware would program it. The device
  // stores the address in its virtual BAR; decode follows the command register as usual.
  virtual void assign_bar(int index, uint64_t address) = 0;
  // The GSI its INTx pin is routed to (layout::pci_intx_gsi), set before the guest runs.
  virtual void set_intx_gsi(uint32_t gsi) { (void)gsi; }

  virtual std::string name() const = 0;
  // One line of counters for the exit report, or empty.
  virtual std::string stats() const { return {}; }
};

// Little-endian helpers for devices that keep config space as a byte array.
inline uint32_t load_le(const uint8_t* p, int size) {
  uint32_t v = 0;
  for (int i = 0; i < size; i++) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
inline void store_le(uint8_t* p, int size, uint32_t v) {
  for (int i = 0; i < size; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace passvm::pci
