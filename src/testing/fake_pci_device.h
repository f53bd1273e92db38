// testing: for PCI unit tests, a function with a byte-array config space that records what the root did.
#pragma once

#include <map>
#include <vector>

#include "pci/config_space.h"
#include "pci/pci_device.h"

namespace passvm::testing {

class FakePciDevice : public pci::PciDevice {
 public:
  explicit FakePciDevice(uint16_t vendor = 0x1234, uint16_t device = 0x5678, uint8_t pin = 0) {
    cfg.set(pci::kCfgVendorId, 2, vendor);
    cfg.set(pci::kCfgDeviceId, 2, device);
    cfg.set(pci::kCfgIntPin, 1, pin);
    cfg.set_writable(pci::kCfgCommand, 2, 0xffff);
    cfg.set_writable(pci::kCfgIntLine, 1, 0xff);
    cfg.set_writable(0x100, 4, 0xffffffff);  // something in extended space to write and read back
    cfg.set(0xffc, 4, 0xcafef00d);
  }
  uint32_t config_read(uint32_t offset, int size) override {
    reads.push_back({offset, size});
    return cfg.read(offset, size);
  }
  void config_write(uint32_t offset, int size, uint32_t value) override {
    writes.push_back({offset, size});
    cfg.write(offset, size, value);
  }
  std::vector<pci::BarRequest> bar_requests() const override { return bars; }
  void assign_bar(int index, uint64_t address) override { assigned[index] = address; }
  void set_intx_gsi(uint32_t g) override { gsi = g; }
  std::string name() const override { return "fake"; }

  struct Access {
    uint32_t offset;
    int size;
  };
  pci::ConfigSpace cfg;
  std::vector<pci::BarRequest> bars;
  std::map<int, uint64_t> assigned;
  uint32_t gsi = 0xffffffff;
  std::vector<Access> reads, writes;
};

}  // namespace passvm::testing
